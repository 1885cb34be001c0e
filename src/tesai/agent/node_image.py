"""The node image: the container image a cluster node runs in, and how it is named and labelled.

One place defines it, so the agent (which checks an image before starting a node), the doctor,
the tests and ``make node-image`` (``scripts/build_node_image.sh`` reads these values with
``python -m tesai.agent.node_image shell``) cannot disagree. It is a Python module rather than a
Makefile variable because the agent needs the name and label keys at run time on hosts that have
no checkout; a test keeps ``RAY_VERSION`` equal to the ``ray[default]`` pin in pyproject.toml.

The image is ``tesai/ray-node:<Ray version>``, built with no registry (``make node-image``):
Debian bookworm from Debian packages, Python 3.11, ``ray[default]`` in a virtual environment at
``/opt/ray`` whose ``bin`` is first on ``PATH`` (``ray``, ``python``, ``pip``, as in the official
``rayproject/ray`` image), the user ``ray`` (uid 1000, gid 100, home ``/home/ray``, as there), and
the lock-down of Ray's open endpoints (``ray_site/sitecustomize.py``) on ``PYTHONPATH``. Its
labels say which Ray it carries, so the agent can compare versions without running it.

Standard library only: this module is imported where nothing else of TES AI is installed.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping
from pathlib import Path

RAY_VERSION = "2.60.0"
"""The Ray version every cluster node runs (all nodes of a cluster need the same one)."""
REPOSITORY = "tesai/ray-node"
"""The node image's repository name (local: it is built, never pulled)."""
RAY_VERSION_LABEL = "tesai.ray-version"
"""Image label: the Ray version installed in the image (``ray.__version__``)."""
PYTHON_VERSION_LABEL = "tesai.python-version"
"""Image label: the ``major.minor`` of the image's Python (Ray's wheels depend on it)."""
RAY_SITE_LABEL = "tesai.ray-site-sha256"
"""Image label: SHA-256 of the ``sitecustomize.py`` copied into the image, so an image built
before a change of the lock-down can be told from a current one."""
INPUTS_LABEL = "tesai.build-inputs"
"""Image label: a hash of everything the build used; ``make node-image`` skips the build when
the image already carries the hash of the current inputs."""

PYTHON_VERSION = "3.11"
"""Debian bookworm's ``python3``, and the control plane's Python."""
VENV_DIR = "/opt/ray"
"""Ray's virtual environment in the image (outside the home, which may be a tmpfs)."""
RAY_SITE_DIR = "/opt/tesai/ray_site"
"""Where the image keeps ``sitecustomize.py``; first on the image's ``PYTHONPATH``."""
USER_UID = 1000
USER_GID = 100
HOME_DIR = "/home/ray"

RAY_SITE_SOURCE = Path(__file__).resolve().parent / "ray_site" / "sitecustomize.py"

_VERSION = re.compile(r"\d+\.\d+\.\d+(?:(?:rc|\.dev)\d+)?")


def image_tag(ray_version: str = RAY_VERSION) -> str:
    """The node image's name for a Ray version: ``tesai/ray-node:2.60.0``.

    Raises ``ValueError`` for anything that is not a Ray release version.
    """
    if not _VERSION.fullmatch(ray_version):
        raise ValueError(f"not a Ray version: {ray_version!r}")
    return f"{REPOSITORY}:{ray_version}"


IMAGE = image_tag()
"""The node image of the platform's Ray version."""


def image_ray_version(labels: Mapping[str, str] | None) -> str | None:
    """The Ray version an image's labels declare, or None when they declare none (an image
    built elsewhere, such as the official ``rayproject/ray``: run ``ray --version`` in it)."""
    if not labels:
        return None
    return labels.get(RAY_VERSION_LABEL) or None


def ray_site_digest(source: Path = RAY_SITE_SOURCE) -> str:
    """SHA-256 (hex) of the lock-down module as this agent has it."""
    return hashlib.sha256(source.read_bytes()).hexdigest()


def _shell() -> str:
    values = {
        "NODE_IMAGE": IMAGE,
        "NODE_IMAGE_REPOSITORY": REPOSITORY,
        "RAY_VERSION": RAY_VERSION,
        "PYTHON_VERSION": PYTHON_VERSION,
        "RAY_VERSION_LABEL": RAY_VERSION_LABEL,
        "PYTHON_VERSION_LABEL": PYTHON_VERSION_LABEL,
        "RAY_SITE_LABEL": RAY_SITE_LABEL,
        "INPUTS_LABEL": INPUTS_LABEL,
        "VENV_DIR": VENV_DIR,
        "RAY_SITE_DIR": RAY_SITE_DIR,
        "RAY_SITE_SOURCE": str(RAY_SITE_SOURCE),
        "USER_UID": str(USER_UID),
        "USER_GID": str(USER_GID),
        "HOME_DIR": HOME_DIR,
    }
    # Every value is a plain name, path or version: no quoting beyond single quotes is needed.
    return "".join(f"{key}='{value}'\n" for key, value in values.items())


def main(argv: list[str]) -> int:
    """``python -m tesai.agent.node_image [tag|shell]``: the image name, or every value as
    shell assignments (for ``scripts/build_node_image.sh``)."""
    command = argv[0] if argv else "tag"
    if command == "tag":
        print(IMAGE)
    elif command == "shell":
        sys.stdout.write(_shell())
    else:
        sys.stderr.write("usage: python -m tesai.agent.node_image [tag|shell]\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
