"""Prometheus metrics of the control plane, exposed at ``GET /metrics``.

- ``tesai_http_request_duration_seconds`` histogram by route template (``/api/v1/devices/{id}``,
  never the raw path, so label values stay bounded), method and status class (``2xx``).
- ``tesai_http_requests_in_flight`` gauge.
- ``tesai_db_pool_size`` / ``tesai_db_pool_checked_out`` gauges, read from the engine's pool
  when scraped.
- ``tesai_tasks_{started,succeeded,failed}_total`` counters and
  ``tesai_task_duration_seconds`` histogram by task name, kept by both task runners.

Several server processes: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty, writable directory
in the environment *before* any process imports prometheus_client (``tesai server`` does);
every process then writes its samples there and a scrape of any one of them returns the sum.
The parent should call ``prometheus_client.multiprocess.mark_process_dead(pid)`` when a
worker process exits so its live gauges disappear. Celery worker processes count tasks the
same way; they are exposed when the worker shares the directory with a process that serves
``/metrics``.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

HTTP_DURATION = Histogram(
    "tesai_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template, method and status class.",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_IN_FLIGHT = Gauge(
    "tesai_http_requests_in_flight",
    "HTTP requests being answered now.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "tesai_db_pool_size",
    "Connections the database pool keeps open.",
    multiprocess_mode="livesum",
)
DB_POOL_CHECKED_OUT = Gauge(
    "tesai_db_pool_checked_out",
    "Database connections in use now.",
    multiprocess_mode="livesum",
)
TASKS_STARTED = Counter("tesai_tasks_started", "Task runs started.", ["task"])
TASKS_SUCCEEDED = Counter("tesai_tasks_succeeded", "Task runs that finished.", ["task"])
TASKS_FAILED = Counter("tesai_tasks_failed", "Task runs that raised.", ["task"])
TASK_DURATION = Histogram(
    "tesai_task_duration_seconds",
    "Time a task run took, by task name.",
    ["task"],
    buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)

_engines: weakref.WeakSet[AsyncEngine] = weakref.WeakSet()
SNAPSHOT_COLLECTORS: list[Collector] = []  # per-process views of global state (business.py)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def watch_pool(engine: AsyncEngine) -> None:
    """Report ``engine``'s connection pool in the DB pool gauges of this process."""
    _engines.add(engine)


def update_pool_gauges() -> None:
    """Read the pools now (called at scrape time, and periodically in multiprocess mode)."""
    size = checked_out = 0
    for engine in list(_engines):
        pool = engine.sync_engine.pool
        size += int(getattr(pool, "size", lambda: 0)())
        checked_out += int(getattr(pool, "checkedout", lambda: 0)())
    DB_POOL_SIZE.set(size)
    DB_POOL_CHECKED_OUT.set(checked_out)


def render() -> tuple[bytes, str]:
    """The exposition text for a scrape, and its content type."""
    update_pool_gauges()
    # Samples live in files only if prometheus_client was imported after the variable was set
    # (`tesai server --workers 1` serves from the process that imported it before).
    if multiprocess_dir() and values.ValueClass is not values.MutexValue:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in SNAPSHOT_COLLECTORS:
            registry.register(collector)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


@contextlib.contextmanager
def task_run(name: str) -> Iterator[None]:
    """Count one run of task ``name`` and time it."""
    TASKS_STARTED.labels(name).inc()
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        TASKS_FAILED.labels(name).inc()
        raise
    else:
        TASKS_SUCCEEDED.labels(name).inc()
    finally:
        TASK_DURATION.labels(name).observe(time.perf_counter() - start)
