"""Test-only tasks. Imported by the test process, and by real Celery workers through
``TESAI_EXTRA_TASK_MODULES=tests.platform.task_fixtures``."""

from __future__ import annotations

import asyncio
import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tesai.tasks import TaskContext, task

RECORDED: list[str] = []

EFFECT_DDL = (
    """CREATE TABLE IF NOT EXISTS platform_test_attempts (
        id serial PRIMARY KEY, key text NOT NULL, pid int NOT NULL,
        at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS platform_test_effects (
        key text PRIMARY KEY, state text NOT NULL, applied int NOT NULL DEFAULT 0)""",
)

TICKS_DDL = """CREATE TABLE IF NOT EXISTS platform_test_ticks (
    id serial PRIMARY KEY, prefix text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp())"""


async def create_effect_tables(conn: AsyncConnection) -> None:
    for ddl in EFFECT_DDL:
        await conn.execute(text(ddl))


@task("platform_test.record")
async def record(ctx: TaskContext, value: str) -> None:
    RECORDED.append(value)


@task("platform_test.apply_once")
async def apply_once(ctx: TaskContext, key: str, work_s: float) -> None:
    """Apply the effect of ``key`` exactly once, however often the message is delivered.

    1. Log the attempt (the test watches this to know the task started, and in which pid).
    2. Claim the key: a row in state ``started``, guarded by the primary key, so a second
       delivery finds the claim instead of making a second one.
    3. The slow work, outside any transaction (a crash here leaves only the claim).
    4. Apply the result guarded by ``state = 'started'``: only one delivery can move it to
       ``done`` and count it in ``applied``.
    """
    async with ctx.sessionmaker.begin() as session:
        await session.execute(
            text("INSERT INTO platform_test_attempts (key, pid) VALUES (:key, :pid)"),
            {"key": key, "pid": os.getpid()},
        )
    async with ctx.sessionmaker.begin() as session:
        await session.execute(
            text(
                "INSERT INTO platform_test_effects (key, state) VALUES (:key, 'started') "
                "ON CONFLICT (key) DO NOTHING"
            ),
            {"key": key},
        )
    await asyncio.sleep(work_s)
    async with ctx.sessionmaker.begin() as session:
        await session.execute(
            text(
                "UPDATE platform_test_effects SET state = 'done', applied = applied + 1 "
                "WHERE key = :key AND state = 'started'"
            ),
            {"key": key},
        )
