"""Host-wide claims on TCP ports for Ray nodes, shared by every agent process on the host.

A port is only known free when checked, and Ray binds it seconds later (tens of seconds on a
loaded host). Two agents on one host whose port ranges overlap (several devices' agents, two
test or benchmark runs with the same fixed ranges, ``tesai up`` next to another agent on the
default range) used to hand out the same block in that window. The second head's GCS then
cannot bind its port, and its ``ray start`` talks to the first cluster's GCS on it, which
rejects the other cluster's token: the start fails after ~30 s with ``InvalidAuthToken``.

So a port handed out is also claimed in a lock file, one byte per port number, with POSIX
record locks (``fcntl.lockf``): another process cannot claim it until this one releases it or
exits (the kernel drops a dead process's locks, so a crash leaves nothing stale). Within one
process record locks never conflict, so the claims of this process are also kept in a set.

POSIX drops all of a process's locks on a file when *any* descriptor of that file is closed,
so the file is opened once per process and never closed; nothing else may open it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Final

LOCK_FILE_NAME: Final = "tesai-ray-ports.lock"


def lock_file_path() -> Path:
    """The host's port-claim file (in the system temp directory, which all agents share)."""
    return Path(tempfile.gettempdir()) / LOCK_FILE_NAME


class HostPortClaims:
    """Claims on single ports, exclusive across the processes of a host (thread-safe)."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._fd: int | None = None
        self._opened = False
        self._mine: set[int] = set()
        self._lock = threading.Lock()

    def _file(self) -> int | None:
        """The lock file's descriptor; None when it cannot be opened (then claims are only
        in-process, as before this module existed)."""
        if not self._opened:
            self._opened = True
            path = self._path or lock_file_path()
            # Never through a symlink (the temp dir is shared); only a file this process
            # created is opened up to other users' agents, which must be able to lock it.
            flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0)
            with contextlib.suppress(OSError):
                try:
                    self._fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
                    with contextlib.suppress(OSError):
                        os.fchmod(self._fd, 0o666)
                except FileExistsError:
                    self._fd = os.open(path, flags)
        return self._fd

    def claim(self, port: int) -> bool:
        """Claim ``port`` for this process; False when this or another process holds it."""
        with self._lock:
            if port in self._mine:
                return False
            fd = self._file()
            if fd is not None:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
                except OSError:
                    return False
            self._mine.add(port)
            return True

    def release(self, ports: Iterable[int]) -> None:
        """Give claims back (ports this process does not hold are ignored)."""
        with self._lock:
            fd = self._file()
            for port in ports:
                if port not in self._mine:
                    continue
                self._mine.discard(port)
                if fd is not None:
                    with contextlib.suppress(OSError):
                        fcntl.lockf(fd, fcntl.LOCK_UN, 1, port)


host_ports: Final = HostPortClaims()
"""The claims of this process (one per process: see the module docstring)."""
