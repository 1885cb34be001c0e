"""Background and periodic work.

Task functions are plain ``async def fn(ctx: TaskContext, **kwargs)`` registered with
``@task``; periodic ones also with ``@periodic``. They must be safe to run twice: slow work
happens outside any DB transaction and its result is applied guarded (lock token, version
or unique key).

Two runners execute the same functions:
- ``InProcessRunner`` (embedded mode): an asyncio scheduler inside the API process.
- Celery (production): RabbitMQ broker, durable queues, ``acks_late`` and
  ``task_reject_on_worker_lost`` so a task whose worker dies is redelivered; beat holds the
  periodic schedule. See ``tesai.celery_app``.

Requests enqueue with ``enqueue_after_commit`` so a task never sees a change that was
rolled back.

Where tasks live: ``tesai/<domain>/tasks.py``, found and imported by
``tesai.task_registry.load_all_tasks`` in every process that runs or routes tasks. A periodic
task looks like::

    @periodic("devices.sweep_offline", every_s=2)
    async def sweep_offline(ctx: TaskContext) -> None:
        async with ctx.sessionmaker.begin() as session:
            ...

It takes no arguments besides ``ctx``, must finish well within its period (a slow run delays
the next one in-process; beat drops runs that wait longer than twice the period, at least
5 s), and must tolerate running twice or concurrently (beat and a redelivery can overlap).
Arguments of ``enqueue`` must be JSON-serialisable (they cross the broker).
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tesai.db import after_commit
from tesai.kit.cache import Cache
from tesai.observability.metrics import task_run
from tesai.settings import Settings
from tesai.task_registry import load_all_tasks

log = structlog.get_logger(__name__)


@dataclass
class TaskContext:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    cache: Cache
    dispatcher: TaskDispatcher


TaskFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    fn: TaskFn
    queue: str = "default"


@dataclass(frozen=True)
class PeriodicSpec:
    name: str
    every_s: float


TASKS: dict[str, TaskSpec] = {}
PERIODIC: dict[str, PeriodicSpec] = {}


def task(name: str, *, queue: str = "default") -> Callable[[TaskFn], TaskFn]:
    """Register an async task function under a stable ``name``."""

    def register(fn: TaskFn) -> TaskFn:
        if name in TASKS and TASKS[name].fn is not fn:
            raise ValueError(f"task {name!r} registered twice")
        TASKS[name] = TaskSpec(name, fn, queue)
        return fn

    return register


def periodic(name: str, *, every_s: float, queue: str = "default") -> Callable[[TaskFn], TaskFn]:
    """Register a task that runs every ``every_s`` seconds (beat, or the in-process loop)."""

    def register(fn: TaskFn) -> TaskFn:
        task(name, queue=queue)(fn)
        PERIODIC[name] = PeriodicSpec(name, every_s)
        return fn

    return register


class TaskDispatcher(ABC):
    @abstractmethod
    async def enqueue(self, name: str, **kwargs: Any) -> None: ...

    async def start(self, ctx: TaskContext) -> None:  # noqa: B027 - optional hook
        """Begin running periodic work (in-process runner only)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop periodic work and wait for running tasks."""


def enqueue_after_commit(
    session: AsyncSession, dispatcher: TaskDispatcher, name: str, **kwargs: Any
) -> None:
    async def send() -> None:
        await dispatcher.enqueue(name, **kwargs)

    after_commit(session, send)


async def run_task(ctx: TaskContext, name: str, kwargs: dict[str, Any]) -> Any:
    """Run task ``name`` once, counted in the task metrics; raises ``KeyError`` if unknown."""
    spec = TASKS.get(name)
    if spec is None:
        raise KeyError(f"unknown task {name!r}")
    with task_run(name):
        return await spec.fn(ctx, **kwargs)


@dataclass
class InProcessRunner(TaskDispatcher):
    """Runs tasks as asyncio tasks in this process, periodic ones on their schedule."""

    periodic_enabled: bool = True
    _ctx: TaskContext | None = None
    _loops: list[asyncio.Task[None]] = field(default_factory=list)
    _running: set[asyncio.Task[Any]] = field(default_factory=set)

    async def enqueue(self, name: str, **kwargs: Any) -> None:
        if name not in TASKS:
            raise KeyError(f"unknown task {name!r}")
        if self._ctx is None:
            raise RuntimeError("runner not started")
        t = asyncio.create_task(self._run_logged(name, kwargs))
        self._running.add(t)
        t.add_done_callback(self._running.discard)

    async def _run_logged(self, name: str, kwargs: dict[str, Any]) -> None:
        assert self._ctx is not None
        structlog.contextvars.bind_contextvars(task=name)
        try:
            await run_task(self._ctx, name, kwargs)
        except Exception:
            log.exception("task_failed", task=name)

    async def _every(self, spec: PeriodicSpec) -> None:
        # Fixed-rate schedule like beat's: the next run is due every_s after the previous
        # one was due, not after it finished; a run longer than the period delays the next.
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await self._run_logged(spec.name, {})
            due = max(due + spec.every_s, loop.time())
            await asyncio.sleep(due - loop.time())

    async def start(self, ctx: TaskContext) -> None:
        load_all_tasks()
        self._ctx = ctx
        if self.periodic_enabled:
            for spec in PERIODIC.values():
                self._loops.append(asyncio.create_task(self._every(spec)))

    async def stop(self) -> None:
        for t in self._loops:
            t.cancel()
        for t in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._loops.clear()
        if self._running:
            await asyncio.wait(self._running, timeout=10)
