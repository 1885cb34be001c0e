"""A test-only periodic task, imported only by the worker and beat processes of the beat
test (``TESAI_EXTRA_TASK_MODULES``), so no in-process runner of other tests schedules it."""

from __future__ import annotations

from sqlalchemy import text

from tesai.tasks import TaskContext, periodic

# The table (platform_test_ticks) is created by the test: see task_fixtures.TICKS_DDL.
QUEUE = "platform_test"
"""A queue of its own, so the test's worker runs only this task, not the domains' ones."""


@periodic("platform_test.beat_tick", every_s=1.0, queue=QUEUE)
async def tick(ctx: TaskContext) -> None:
    async with ctx.sessionmaker.begin() as session:
        await session.execute(
            text("INSERT INTO platform_test_ticks (prefix) VALUES (:prefix)"),
            {"prefix": ctx.settings.task_queue_prefix},
        )
