"""The embedded PostgreSQL: starts (also as root), keeps its data, stops when released."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tesai.db import asyncpg_url
from tesai.embedded.postgres import EmbeddedPostgres, running_postgres_pid


def _exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # init reaps it later
    except psutil.NoSuchProcess:
        return True


async def _sql(url: str, statement: str) -> list[tuple[object, ...]]:
    engine = create_async_engine(asyncpg_url(url))
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement))
            return [tuple(r) for r in result.all()] if result.returns_rows else []
    finally:
        await engine.dispose()


async def test_data_survives_a_restart_and_stop_ends_the_server(home: Path) -> None:
    pg = EmbeddedPostgres(home)
    url = await asyncio.to_thread(pg.start)
    assert "host=" in url, "reached over its unix socket"
    pid = pg.pid
    assert pid is not None
    await _sql(url, "CREATE TABLE kept (v text)")
    await _sql(url, "INSERT INTO kept VALUES ('still here')")
    await asyncio.to_thread(pg.stop)
    assert _exited(pid)
    assert running_postgres_pid(home) is None

    url = await asyncio.to_thread(pg.start)
    try:
        assert await _sql(url, "SELECT v FROM kept") == [("still here",)]
    finally:
        await asyncio.to_thread(pg.stop)


async def test_a_crashed_owner_does_not_keep_the_server_alive(home: Path) -> None:
    # A process that started the server and died by SIGKILL leaves its handle behind.
    crashed = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(crashed.stdout)
    pg = EmbeddedPostgres(home)
    await asyncio.to_thread(pg.start)
    handles = pg.data_dir / ".handle_pids.json"
    handles.write_text(json.dumps([dead_pid, *json.loads(handles.read_text())]))
    await asyncio.to_thread(pg.stop)
    assert running_postgres_pid(home) is not None, "a recorded handle keeps it running"

    # The next start forgets the dead handle, so releasing stops the server.
    await asyncio.to_thread(pg.start)
    pid = pg.pid
    await asyncio.to_thread(pg.stop)
    assert pid is not None
    assert _exited(pid)
