"""Finds every task module so a process knows every task name before it runs or routes one.

Domains register their tasks at import time (``@task`` / ``@periodic`` in
``tesai/<domain>/tasks.py``). ``load_all_tasks`` imports each such module it finds on disk,
so a new domain needs no registration anywhere else. Both runners call it: the Celery worker
and beat at start-up, the in-process runner and the Celery dispatcher when they start.

``TESAI_EXTRA_TASK_MODULES`` (comma-separated dotted module names) adds modules outside the
package; tests use it to give a real worker process a test-only task.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

import tesai

EXTRA_MODULES_ENV = "TESAI_EXTRA_TASK_MODULES"

NOT_DOMAINS = frozenset({"cli", "agent"})
"""Packages whose ``tasks.py`` is not a task module (`tesai tasks` commands; the agent)."""


def domain_task_modules() -> list[str]:
    """Dotted names of every ``tesai.<domain>.tasks`` module present in the package."""
    found: list[str] = []
    for base in tesai.__path__:
        for info in pkgutil.iter_modules([base]):
            # Checked on disk rather than with find_spec, which would import the domain
            # package (and everything its __init__ pulls in) just to look.
            if (
                info.ispkg
                and info.name not in NOT_DOMAINS
                and (Path(base) / info.name / "tasks.py").is_file()
            ):
                found.append(f"tesai.{info.name}.tasks")
    return sorted(found)


def extra_task_modules() -> list[str]:
    raw = os.environ.get(EXTRA_MODULES_ENV, "")
    return [m.strip() for m in raw.split(",") if m.strip()]


def load_all_tasks() -> list[str]:
    """Import every task module (domain ones, then the extra ones); returns their names.

    An import error propagates: a worker that silently lacks a domain's tasks would leave
    its messages unprocessed.
    """
    names = domain_task_modules() + extra_task_modules()
    for name in names:
        importlib.import_module(name)
    return names
