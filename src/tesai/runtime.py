"""What a running control plane process holds: settings, database, cache, task dispatcher.

Built once per process (API lifespan, task worker, CLI command) and passed explicitly;
request handlers reach it through ``request.app.state.runtime``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tesai.celery_app import CeleryDispatcher, create_celery
from tesai.db import create_engine, create_sessionmaker
from tesai.kit.cache import Cache, create_cache
from tesai.observability.metrics import watch_pool
from tesai.settings import Settings
from tesai.tasks import InProcessRunner, TaskContext, TaskDispatcher


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    cache: Cache
    tasks: TaskDispatcher
    state: dict[str, Any] = field(default_factory=dict)
    """Per-process objects owned by domains (signing keys, chain clients), by name."""

    @property
    def task_context(self) -> TaskContext:
        return TaskContext(self.settings, self.sessionmaker, self.cache, self.tasks)

    async def close(self) -> None:
        await self.tasks.stop()
        await self.cache.close()
        await self.engine.dispose()


def create_dispatcher(settings: Settings) -> TaskDispatcher:
    """Celery when a broker is configured, else the in-process runner."""
    if settings.broker_url:
        return CeleryDispatcher(create_celery(settings), settings)
    return InProcessRunner()


async def open_runtime(settings: Settings, *, run_periodic: bool = True) -> Runtime:
    """Connect to the database and cache; start in-process tasks when there is no broker."""
    engine = create_engine(settings)
    watch_pool(engine)
    dispatcher = create_dispatcher(settings)
    if isinstance(dispatcher, InProcessRunner):
        dispatcher.periodic_enabled = run_periodic
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessionmaker=create_sessionmaker(engine),
        cache=create_cache(settings.redis_url, settings.redis_prefix),
        tasks=dispatcher,
    )
    await dispatcher.start(runtime.task_context)
    return runtime
