"""Real Celery workers against RabbitMQ: a task whose worker is SIGKILLed mid-run is
redelivered and its effect happens exactly once (acceptance 5 of the foundation issue)."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kombu import Connection
from sqlalchemy import text

from tesai.celery_app import CeleryDispatcher, create_celery, queue_name
from tesai.db import create_engine
from tesai.settings import Settings
from tests.conftest import TEST_BROKER_URL
from tests.platform.task_fixtures import TICKS_DDL, create_effect_tables

REPO = Path(__file__).resolve().parents[2]
TESAI = Path(sys.executable).parent / "tesai"


@pytest.fixture
def broker_settings(settings: Settings, run_id: str) -> Iterator[Settings]:
    """Settings on the test broker with queues of their own; the queues are deleted after."""
    prefix = f"tesai-test-{run_id}-{secrets.token_hex(3)}"
    s = settings.model_copy(update={"broker_url": TEST_BROKER_URL, "task_queue_prefix": prefix})
    yield s
    with Connection(TEST_BROKER_URL) as conn:
        channel: Any = conn.default_channel
        names = {q.name for q in create_celery(s).conf.task_queues}
        for name in names | {queue_name(s, "platform_test")}:
            channel.queue_delete(name)
        channel.exchange_delete(prefix)


class Workers:
    """Starts `tesai tasks worker|beat` processes (own process groups); stops them at the end."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.task_modules = "tests.platform.task_fixtures"

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESAI_")}
        env.update(
            TESAI_ENVIRONMENT="test",
            TESAI_HOME=str(s.home),
            TESAI_DATABASE_URL=s.database_url or "",
            TESAI_REDIS_URL=s.redis_url or "",
            TESAI_REDIS_PREFIX=s.redis_prefix,
            TESAI_BROKER_URL=s.broker_url or "",
            TESAI_TASK_QUEUE_PREFIX=s.task_queue_prefix,
            TESAI_EXTRA_TASK_MODULES=self.task_modules,
            TESAI_LOG_JSON="true",
            PYTHONPATH=str(REPO),
        )
        return env

    def start(self, *command: str) -> subprocess.Popen[bytes]:
        command = command or ("worker", "--concurrency", "1")
        log = (self.log_dir / f"{command[0]}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [str(TESAI), "tasks", *command],
            cwd=REPO,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill(proc)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.iterdir()))


@pytest.fixture
def workers(broker_settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    log_dir = tmp_path / "worker-logs"
    log_dir.mkdir()
    w = Workers(broker_settings, log_dir)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
async def effect_db(broker_settings: Settings) -> None:
    engine = create_engine(broker_settings)
    async with engine.begin() as conn:
        await create_effect_tables(conn)
    await engine.dispose()


T = TypeVar("T")


async def _wait_for(
    check: Callable[[], Awaitable[T]], what: str, timeout_s: float, workers: Workers
) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; worker logs:\n{workers.logs()}")


def _consumers(settings: Settings) -> int:
    return _queue_state(settings)[1]


def _queue_state(settings: Settings, queue: str = "default") -> tuple[int, int]:
    """(messages waiting, consumers) of a task queue."""
    with Connection(TEST_BROKER_URL) as conn:
        channel: Any = conn.default_channel
        _, waiting, consumers = channel.queue_declare(queue_name(settings, queue), passive=True)
    return int(waiting), int(consumers)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["whole_worker", "pool_process"])
async def test_task_killed_mid_run_is_redelivered_and_applied_once(
    broker_settings: Settings, workers: Workers, effect_db: None, victim: str
) -> None:
    engine = create_engine(broker_settings)
    key = f"effect-{secrets.token_hex(4)}"

    async def attempts() -> list[tuple[int]]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT pid FROM platform_test_attempts WHERE key = :k ORDER BY id"),
                {"k": key},
            )
            return [tuple(r) for r in rows]

    async def effect() -> tuple[str, int] | None:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT state, applied FROM platform_test_effects WHERE key = :k"),
                    {"k": key},
                )
            ).first()
            return (row[0], row[1]) if row else None

    async def consumer_ready() -> bool:
        try:
            return await asyncio.to_thread(_consumers, broker_settings) > 0
        except Exception:
            return False

    try:
        first = workers.start()
        await _wait_for(consumer_ready, "the worker to consume", 60, workers)

        dispatcher = CeleryDispatcher(create_celery(broker_settings), broker_settings)
        await dispatcher.enqueue("platform_test.apply_once", key=key, work_s=1.5)
        await dispatcher.stop()

        started = await _wait_for(attempts, "the task to start", 30, workers)
        [(task_pid,)] = started
        await asyncio.sleep(0.2)  # well inside the 1.5 s of work
        if victim == "whole_worker":
            workers.kill(first)
            assert await effect() in (None, ("started", 0))  # killed before applying
            workers.start()
        else:
            os.kill(task_pid, signal.SIGKILL)

        async def done() -> bool:
            return await effect() == ("done", 1)

        await _wait_for(done, "the redelivered task to finish", 60, workers)
        await asyncio.sleep(0.5)
        runs = await attempts()
        assert len(runs) == 2, runs
        assert runs[0] != runs[1]  # another process ran the redelivery
        assert '"event":"task_redelivered"' in workers.logs()  # the broker's own redelivery
        assert await effect() == ("done", 1)
        assert _queue_state(broker_settings)[0] == 0
    finally:
        await engine.dispose()


@pytest.mark.slow
async def test_beat_schedules_periodic_tasks_for_workers(
    broker_settings: Settings, workers: Workers
) -> None:
    engine = create_engine(broker_settings)
    async with engine.begin() as conn:
        await conn.execute(text(TICKS_DDL))
    prefix = broker_settings.task_queue_prefix

    async def ticks() -> list[float]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT extract(epoch FROM at) FROM platform_test_ticks "
                    "WHERE prefix = :p ORDER BY at"
                ),
                {"p": prefix},
            )
            return [float(r[0]) for r in rows]

    async def four_ticks() -> bool:
        return len(await ticks()) >= 4

    async def worker_consuming() -> bool:
        try:
            _, consumers = await asyncio.to_thread(_queue_state, broker_settings, "platform_test")
        except Exception:  # the worker has not declared the queue yet
            return False
        return consumers > 0

    try:
        workers.task_modules = "tests.platform.task_fixtures,tests.platform.periodic_fixtures"
        workers.start("worker", "--concurrency", "1", "--queue", "platform_test")
        # Started after the worker is up, so no backlog of early runs arrives all at once.
        await _wait_for(worker_consuming, "the worker to consume", 60, workers)
        workers.start("beat")
        await _wait_for(four_ticks, "four periodic runs", 60, workers)
        gaps = sorted(b - a for a, b in itertools.pairwise(await ticks()))
        # Every 1 s; one interval may stretch or shrink while the first run warms up.
        assert 0.7 <= gaps[len(gaps) // 2] <= 1.3, gaps
    finally:
        await engine.dispose()


async def test_concurrent_enqueues_are_all_published(broker_settings: Settings) -> None:
    """Publishing runs in threads that share Celery's producer pool; none is lost."""
    dispatcher = CeleryDispatcher(create_celery(broker_settings), broker_settings)
    try:
        await asyncio.gather(
            *(dispatcher.enqueue("platform_test.record", value=str(i)) for i in range(40))
        )
    finally:
        await dispatcher.stop()
    assert await asyncio.to_thread(_queue_state, broker_settings) == (40, 0)
    with pytest.raises(KeyError, match="unknown task"):
        await dispatcher.enqueue("platform_test.nope")
