"""Celery: the production task runner (RabbitMQ broker, beat for the periodic schedule).

Design:

- **One Celery task per registered name.** ``create_celery`` imports every task module
  (``tesai.task_registry.load_all_tasks``) and registers a thin Celery task for each entry of
  ``tesai.tasks.TASKS`` under the same name, so the broker, logs and Flower show real task
  names and a message for a name the worker does not know is rejected loudly. Publishers use
  ``send_task`` by name and need only the queue, taken from the ``TaskSpec``.
- **Delivery guarantees.** Durable queues ``{task_queue_prefix}.<queue>`` on a durable direct
  exchange, persistent messages, publisher confirms (``confirm_publish``), ``acks_late`` +
  ``task_reject_on_worker_lost`` and a prefetch of one: a message is acknowledged only after
  its task returned, so a worker killed mid-task (even by SIGKILL) leaves it to be redelivered.
  Tasks are therefore written to be safe to run twice (see ``tesai.tasks``). No result backend:
  tasks report through the database.
- **Async tasks, one loop per process.** Task functions are coroutines. Each worker process
  (prefork child, or the single process of ``--pool solo``) opens one event loop and one
  ``TaskContext`` (engine, sessionmaker, cache, dispatcher) when it starts and runs every task
  on them, so connection pools are reused across tasks. Thread pools are not supported.
- **Beat** publishes ``tesai.tasks.PERIODIC`` at fixed intervals, each message expiring after
  twice its period so a backlog (no worker running) does not burst when workers return.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import structlog
from celery import Celery, Task, signals
from kombu import Exchange, Queue
from sqlalchemy.ext.asyncio import AsyncEngine

from tesai.db import create_engine, create_sessionmaker
from tesai.kit.cache import Cache, create_cache
from tesai.observability.logging import configure_logging
from tesai.observability.metrics import watch_pool
from tesai.settings import Settings
from tesai.task_registry import load_all_tasks
from tesai.tasks import PERIODIC, TASKS, TaskContext, TaskDispatcher, run_task

log = structlog.get_logger(__name__)

DEFAULT_QUEUE = "default"


def queue_name(settings: Settings, queue: str) -> str:
    """The broker queue of a ``TaskSpec.queue``."""
    return f"{settings.task_queue_prefix}.{queue}"


def task_queues(settings: Settings) -> list[Queue]:
    exchange = Exchange(settings.task_queue_prefix, type="direct", durable=True)
    names = sorted({DEFAULT_QUEUE} | {spec.queue for spec in TASKS.values()})
    return [
        Queue(
            queue_name(settings, q),
            exchange,
            routing_key=queue_name(settings, q),
            durable=True,
        )
        for q in names
    ]


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery beat entries for every periodic task."""
    return {
        spec.name: {
            "task": spec.name,
            "schedule": spec.every_s,
            "options": {
                "queue": queue_name(settings, TASKS[spec.name].queue),
                "expires": max(2 * spec.every_s, 5.0),
            },
        }
        for spec in PERIODIC.values()
    }


def create_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` with every known task registered (imports them all)."""
    if not settings.broker_url:
        raise ValueError("broker_url is not set")
    load_all_tasks()
    app = Celery("tesai", broker=settings.broker_url, set_as_current=False)
    default = queue_name(settings, DEFAULT_QUEUE)
    app.conf.update(
        task_queues=task_queues(settings),
        task_default_queue=default,
        task_default_exchange=settings.task_queue_prefix,
        task_default_exchange_type="direct",
        task_default_routing_key=default,
        task_default_delivery_mode="persistent",
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=4,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        enable_utc=True,
        timezone="UTC",
        beat_schedule=beat_schedule(settings),
    )
    for name in TASKS:
        _register(app, name, settings)
    return app


def _register(app: Celery, name: str, settings: Settings) -> None:
    def run(task: Task[Any, Any], /, **kwargs: Any) -> None:
        request = task.request
        redelivered = bool((request.delivery_info or {}).get("redelivered"))
        _run_in_worker(settings, app, name, str(request.id), redelivered, kwargs)

    run.__name__ = run.__qualname__ = name.replace(".", "_")
    app.task(name=name, bind=True, ignore_result=True)(run)


@dataclass
class _WorkerProcess:
    """What one worker process keeps for its whole life."""

    loop: asyncio.AbstractEventLoop
    engine: AsyncEngine
    cache: Cache
    ctx: TaskContext


_process: _WorkerProcess | None = None
_process_lock = threading.Lock()


def _open_process(settings: Settings, app: Celery) -> _WorkerProcess:
    global _process
    with _process_lock:
        if _process is None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            engine = create_engine(settings)
            watch_pool(engine)
            cache = create_cache(settings.redis_url, settings.redis_prefix)
            dispatcher = CeleryDispatcher(app, settings)
            ctx = TaskContext(settings, create_sessionmaker(engine), cache, dispatcher)
            _process = _WorkerProcess(loop, engine, cache, ctx)
        return _process


def _close_process() -> None:
    global _process
    with _process_lock:
        proc, _process = _process, None
    if proc is None:
        return

    async def close() -> None:
        await proc.cache.close()
        await proc.engine.dispose()

    proc.loop.run_until_complete(close())
    proc.loop.close()


def _run_in_worker(
    settings: Settings,
    app: Celery,
    name: str,
    task_id: str,
    redelivered: bool,
    kwargs: dict[str, Any],
) -> None:
    # Normally opened by worker_process_init; opened here for the solo pool, which has none.
    proc = _process or _open_process(settings, app)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task=name, task_id=task_id)
    if redelivered:
        # A previous delivery was not acknowledged: its worker died or lost the broker.
        log.warning("task_redelivered")
    # A failure propagates to Celery, which logs it (with the bound task name) and acks.
    proc.loop.run_until_complete(run_task(proc.ctx, name, kwargs))


def prepare_worker(app: Celery, settings: Settings) -> None:
    """Hook the per-process context and our logging into this process's Celery worker."""

    def on_process_init(**_: Any) -> None:
        _open_process(settings, app)

    def on_process_shutdown(**_: Any) -> None:
        _close_process()

    def on_setup_logging(**_: Any) -> None:
        configure_logging(settings)

    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)
    signals.worker_shutdown.connect(on_process_shutdown, weak=False)
    signals.setup_logging.connect(on_setup_logging, weak=False)


def run_worker(
    settings: Settings, *, concurrency: int, pool: str = "prefork", queues: list[str] | None = None
) -> None:
    """Run a Celery worker consuming every task queue (or ``queues``) until stopped."""
    configure_logging(settings)
    app = create_celery(settings)
    prepare_worker(app, settings)
    argv = [
        "worker",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--loglevel={settings.log_level.upper()}",
        # Gossip and mingle are for remote control and revokes, which we do not use; they
        # cost start-up time and chatter between unrelated workers sharing a vhost.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if queues:
        argv.append("--queues=" + ",".join(queue_name(settings, q) for q in queues))
    if settings.log_json:
        # The start-up banner is plain text; keep stdout one JSON object per line.
        argv.insert(0, "--quiet")
    app.worker_main(argv)


def run_beat(settings: Settings) -> None:
    """Run Celery beat: publishes every periodic task on its schedule until stopped."""
    configure_logging(settings)
    app = create_celery(settings)
    signals.setup_logging.connect(lambda **_: configure_logging(settings), weak=False)
    settings.home.mkdir(parents=True, exist_ok=True)
    argv = [
        "beat",
        f"--schedule={settings.home / 'celerybeat-schedule'}",
        f"--loglevel={settings.log_level.upper()}",
    ]
    if settings.log_json:
        argv.insert(0, "--quiet")
    app.start(argv)


class CeleryDispatcher(TaskDispatcher):
    """Publishes tasks to RabbitMQ. Publishing blocks (publisher confirms), so it runs in a
    thread off the event loop; Celery's producer pool is shared by those threads."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def enqueue(self, name: str, **kwargs: Any) -> None:
        spec = TASKS.get(name)
        if spec is None:
            raise KeyError(f"unknown task {name!r}")
        queue = queue_name(self.settings, spec.queue)
        await asyncio.to_thread(self.app.send_task, name, kwargs=kwargs, queue=queue)

    def _ping(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0)

    async def ping(self) -> bool:
        """Connect to the broker once; raises when it is unreachable (used by /readyz)."""
        await asyncio.to_thread(self._ping)
        return True

    async def start(self, ctx: TaskContext) -> None:
        load_all_tasks()

    async def stop(self) -> None:
        await asyncio.to_thread(self.app.close)
