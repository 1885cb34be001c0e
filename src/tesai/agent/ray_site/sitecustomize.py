"""Ray's service processes on a node the agent starts: nothing of a customer's cluster answers
without the cluster's token.

The agent puts this folder first on the ``PYTHONPATH`` of ``ray start`` (``ray_node.ray_env``),
so every Python process of the node imports this module as it starts (Python's
``sitecustomize`` hook). In three of Ray's own processes it closes what Ray 2.x serves
without a token and has no ``ray start`` option to close:

- the dashboard agent (``ray/dashboard/agent.py``) runs with ``--disable-metrics-collection``
  (its own flag, which ``ray start`` never passes): no Prometheus exporter, which served the
  node's metrics, job ids included, to anyone on ``--metrics-export-port``; its health
  endpoints (``/api/healthz``, ``/api/local_raylet_healthz``) need the token like the rest of
  its HTTP API;
- the dashboard (``ray/dashboard/dashboard.py``): every path needs the token (Ray leaves
  ``/``, ``/static/``, its health checks and sign-in endpoints open), and no metrics server
  on port 44227;
- the autoscaler monitor (``ray/autoscaler/…/monitor.py``): no metrics server on port 44217.

The control plane needs none of them: it reads the head through the dashboard, token
attached. In every other process (job drivers, Ray workers, the customer's code) this module
only reads ``sys.argv``, then runs whatever other ``sitecustomize`` the path holds, as Python
would have. A failure here is written to the process's stderr (Ray's log files) and the
process goes on: the test of a running head's ports (tests/agent/test_ray_lockdown.py)
notices what stays open.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from typing import Any


def _role(argv0: str) -> str | None:
    parts = os.path.normpath(argv0).split(os.sep)
    if len(parts) < 3 or "ray" not in parts[:-1]:
        return None
    if parts[-2:] == ["dashboard", "agent.py"]:
        return "agent"
    if parts[-2:] == ["dashboard", "dashboard.py"]:
        return "dashboard"
    if parts[-1] == "monitor.py" and "autoscaler" in parts:
        return "monitor"
    return None


def _no_metrics_server() -> None:
    import prometheus_client

    def refuse(*args: Any, **kwargs: Any) -> None:
        return None

    setattr(prometheus_client, "start_http_server", refuse)  # noqa: B010 - another signature


def _lock_agent() -> None:
    if "--disable-metrics-collection" not in sys.argv:
        sys.argv.append("--disable-metrics-collection")
    from ray.dashboard import http_server_agent

    http_server_agent.PUBLIC_EXACT_PATHS.clear()


def _lock_dashboard() -> None:
    _no_metrics_server()
    from ray.dashboard import http_server_head

    checked = getattr(http_server_head, "get_token_auth_middleware")  # noqa: B009

    def token_everywhere(aiohttp_module: Any, *public: Any, **named: Any) -> Any:
        return checked(aiohttp_module)  # without Ray's list of open paths

    setattr(http_server_head, "get_token_auth_middleware", token_everywhere)  # noqa: B010


LOCKS = {"agent": _lock_agent, "dashboard": _lock_dashboard, "monitor": _no_metrics_server}


def _next_sitecustomize() -> None:
    """Run the ``sitecustomize`` this one hides (a distribution's, say), if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def _main() -> None:
    role = _role(sys.argv[0]) if sys.argv else None
    if role is not None:
        try:
            LOCKS[role]()
        except Exception as exc:  # the process must start; the port test sees what is open
            sys.stderr.write(f"tesai: could not lock down Ray's {role}: {exc!r}\n")
    _next_sitecustomize()


_main()
