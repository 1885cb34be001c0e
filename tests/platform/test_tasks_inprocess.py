"""The in-process runner (embedded mode) and enqueue-after-commit."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest
from fastapi import FastAPI

from tesai.db import SessionDep
from tesai.errors import Conflict
from tesai.runtime import Runtime
from tesai.tasks import (
    PERIODIC,
    TASKS,
    InProcessRunner,
    PeriodicSpec,
    TaskContext,
    enqueue_after_commit,
    periodic,
)
from tests.platform import task_fixtures
from tests.platform.conftest import MakeClient


@pytest.fixture
def only_test_periodic() -> Iterator[list[float]]:
    """PERIODIC holds just one fast test task for the duration; returns its run times."""
    runs: list[float] = []
    saved_periodic = dict(PERIODIC)
    PERIODIC.clear()

    @periodic("platform_test.tick", every_s=0.2)
    async def tick(ctx: TaskContext) -> None:
        runs.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.05)  # the schedule is fixed-rate: run time does not add up

    try:
        yield runs
    finally:
        PERIODIC.clear()
        PERIODIC.update(saved_periodic)
        TASKS.pop("platform_test.tick", None)


async def test_in_process_runner_runs_periodic_tasks_on_schedule(
    runtime: Runtime, only_test_periodic: list[float]
) -> None:
    runner = InProcessRunner(periodic_enabled=True)
    ctx = TaskContext(runtime.settings, runtime.sessionmaker, runtime.cache, runner)
    await runner.start(ctx)
    try:
        await asyncio.sleep(1.05)
    finally:
        await runner.stop()
    runs = only_test_periodic
    assert 4 <= len(runs) <= 7
    # Fixed rate: a late run is followed by a shorter gap, so the median is the schedule.
    gaps = sorted(b - a for a, b in itertools.pairwise(runs))
    assert 0.15 <= gaps[len(gaps) // 2] <= 0.25, gaps
    assert PERIODIC["platform_test.tick"] == PeriodicSpec("platform_test.tick", 0.2)
    stopped_at = len(runs)
    await asyncio.sleep(0.3)
    assert len(runs) == stopped_at


def _add_enqueueing_route(app: FastAPI) -> None:
    async def order(value: str, fail: bool, session: SessionDep) -> dict[str, str]:
        rt: Runtime = app.state.runtime
        enqueue_after_commit(session, rt.tasks, "platform_test.record", value=value)
        if fail:
            raise Conflict("refused after enqueueing")
        return {"value": value}

    app.add_api_route("/api/v1/test-enqueue", order, methods=["POST"])


async def test_enqueue_after_commit_sends_nothing_when_request_rolls_back(
    make_client: MakeClient,
) -> None:
    client = await make_client(setup=_add_enqueueing_route)
    task_fixtures.RECORDED.clear()

    failed = await client.post("/api/v1/test-enqueue", params={"value": "rolled", "fail": True})
    assert failed.status_code == 409
    ok = await client.post("/api/v1/test-enqueue", params={"value": "kept", "fail": False})
    assert ok.status_code == 200
    for _ in range(100):
        if task_fixtures.RECORDED:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert task_fixtures.RECORDED == ["kept"]

    metrics = (await client.get("/metrics")).text
    assert 'tesai_tasks_succeeded_total{task="platform_test.record"}' in metrics


async def test_unknown_task_is_refused(runtime: Runtime) -> None:
    with pytest.raises(KeyError, match="unknown task"):
        await runtime.tasks.enqueue("platform_test.no_such_task")
