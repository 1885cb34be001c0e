"""Fixtures of the embedded-mode tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def home() -> Iterator[Path]:
    """A TESAI_HOME outside pytest's temporary directories.

    As root, the embedded PostgreSQL runs as the user ``pgserver``, which must traverse the
    path to its data; every pytest session resets /tmp/pytest-of-root to 0700, which would
    lock it out whenever another test session starts meanwhile.
    """
    path = Path(tempfile.mkdtemp(prefix="tesai-home-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
