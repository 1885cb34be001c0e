"""Business metrics of the control plane: the market and the machinery, with bounded labels.

Counted where they happen (plain prometheus_client metrics, summed over processes in
multiprocess mode):

- ``tesai_heartbeats_total``: heartbeats accepted from agents.
- ``tesai_device_transitions_total{to_state, reason}``: device status changes (reason codes
  are a fixed set, see ``tesai.devices.states``).
- ``tesai_placement_duration_seconds``: time the placement engine took for one request.
- ``tesai_payout_failures_total``: payouts reversed (transfer rejected, failed or expired).
- ``tesai_deposit_scan_failures_total``: deposit intents a scan could not get through (the
  reason is on the intent, ``scan_error``); the scan goes on with the others.

Read from a snapshot (``BusinessCollector``), which a background task of each API process
refreshes every ``business_metrics_interval_s``; a scrape never runs SQL:

- ``tesai_devices{state, gpu_model}``: devices by status and GPU model (``cpu`` for CPU-only
  devices; models beyond the ``MAX_MODELS`` most common are counted as ``other``).
- ``tesai_clusters{state}``: clusters by status (terminal states count every cluster ever).
- ``tesai_settlement_lag_seconds``: how long the oldest minute of usage that is over and not
  settled (an unsettled usage bucket, or a meter's minute in progress once it has ended) has
  been waiting for settlement.
- ``tesai_task_queue_depth{queue}``: messages waiting in each broker queue (Celery only).
- ``tesai_business_snapshot_age_seconds``: how old the snapshot is (stale when refreshes fail).

No label names a device, a user or a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from celery import Celery
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tesai.billing import metering
from tesai.clusters.models import Cluster, ClusterStatus
from tesai.devices.models import Device, DeviceStatus
from tesai.kit.time import utcnow
from tesai.observability.metrics import SNAPSHOT_COLLECTORS

if TYPE_CHECKING:  # the runtime imports the task runners, which import this module's users
    from tesai.runtime import Runtime

log = structlog.get_logger(__name__)

MAX_MODELS = 50
"""GPU models named in labels; model names come from agents, so the set is capped."""
CPU_MODEL = "cpu"
OTHER_MODEL = "other"

HEARTBEATS = Counter("tesai_heartbeats", "Heartbeats accepted from agents.")
DEVICE_TRANSITIONS = Counter(
    "tesai_device_transitions",
    "Device status changes, by target status and reason code.",
    ["to_state", "reason"],
)
DEVICE_OFFENCES = Counter(
    "tesai_device_offences",
    "Failed checks recorded against devices (tesai.devices.reputation), by reason code.",
    ["reason"],
)
PLACEMENT_DURATION = Histogram(
    "tesai_placement_duration_seconds",
    "Time the placement engine took to answer one cluster request (quotes and replacements).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
CREATE_BATCH_SIZE = Histogram(
    "tesai_cluster_create_batch_size",
    "Cluster creations an API process committed together in one transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PAYOUT_FAILURES = Counter(
    "tesai_payout_failures", "Payouts reversed: transfer rejected, failed or never landed."
)
DEPOSIT_SCAN_FAILURES = Counter(
    "tesai_deposit_scan_failures",
    "Deposit intents a scan could not get through (chain unreadable, a transaction not recorded).",
)


@dataclass(frozen=True)
class Snapshot:
    """What the business gauges report, read from the database at ``taken_at``."""

    taken_at: float
    devices: dict[tuple[str, str], int] = field(default_factory=dict)
    """(status, gpu model) → devices."""
    clusters: dict[str, int] = field(default_factory=dict)
    settlement_lag_s: float = 0.0
    queue_depth: dict[str, int] = field(default_factory=dict)


def bound_models(counts: dict[tuple[str, str | None], int]) -> dict[tuple[str, str], int]:
    """Name the ``MAX_MODELS`` most common GPU models; fold the rest into ``other``.

    Every named model gets a sample for every device status (0 when none), so a state that
    empties shows 0 rather than vanishing.
    """
    per_model: dict[str, int] = {}
    for (_, model), n in counts.items():
        name = model or CPU_MODEL
        per_model[name] = per_model.get(name, 0) + n
    named = set(sorted(per_model, key=lambda m: (-per_model[m], m))[:MAX_MODELS])
    out: dict[tuple[str, str], int] = {}
    for model in named | ({OTHER_MODEL} if len(per_model) > len(named) else set()):
        for status in DeviceStatus:
            out[(status.value, model)] = 0
    for (state, model), n in counts.items():
        name = model or CPU_MODEL
        key = (state, name if name in named else OTHER_MODEL)
        out[key] = out.get(key, 0) + n
    return out


def settlement_lag(oldest_due: datetime | None, now: datetime) -> float:
    """Seconds since the oldest unsettled usage became due for settlement (0 when none)."""
    if oldest_due is None:
        return 0.0
    return max(0.0, (now - oldest_due).total_seconds())


async def read_snapshot(session: AsyncSession) -> dict[str, Any]:
    """The database part of a snapshot: three grouped/aggregate queries on indexed columns."""
    device_rows = await session.execute(
        select(Device.status, Device.gpu_model, func.count()).group_by(
            Device.status, Device.gpu_model
        )
    )
    cluster_rows = await session.execute(
        select(Cluster.status, func.count()).group_by(Cluster.status)
    )
    oldest = await metering.oldest_unsettled_end(session)
    devices = {(s.value, m): int(n) for s, m, n in device_rows.tuples()}
    clusters = {s.value: 0 for s in ClusterStatus} | {
        s.value: int(n) for s, n in cluster_rows.tuples()
    }
    return {"devices": devices, "clusters": clusters, "oldest": oldest}


def celery_queue_depths(app: Celery, names: Iterable[str]) -> dict[str, int]:
    """Messages ready in each broker queue (passive declare; blocking, run it in a thread).

    A queue no worker has declared yet is left out.
    """
    depths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        for name in names:
            # A passive declare of a missing queue closes its channel: one channel each.
            channel: Any = conn.channel()  # a py-amqp channel; kombu's stub is too narrow
            try:
                _, count, _ = channel.queue_declare(queue=name, passive=True)
                depths[name] = int(count)
            except Exception as exc:  # the queue is missing: channel error 404
                log.debug("queue_depth_unavailable", queue=name, error=str(exc))
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return depths


async def take_snapshot(
    sessionmaker: async_sessionmaker[AsyncSession], tasks: object | None = None
) -> Snapshot:
    """Read everything the gauges need; the broker is asked outside any DB transaction."""
    async with sessionmaker() as session:
        # One view of the database for all the queries, so the numbers agree with each other.
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        data = await read_snapshot(session)
    depths: dict[str, int] = {}
    app = getattr(tasks, "app", None)
    if isinstance(app, Celery):  # the in-process runner has no queue to wait in
        names = [q.name for q in app.conf.task_queues or ()]
        depths = await asyncio.to_thread(celery_queue_depths, app, names)
    return Snapshot(
        taken_at=time.time(),
        devices=bound_models(data["devices"]),
        clusters=data["clusters"],
        settlement_lag_s=settlement_lag(data["oldest"], utcnow()),
        queue_depth=depths,
    )


class BusinessCollector(Collector):
    """Reports the latest snapshot at scrape time; never touches the database."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.snapshot: Snapshot | None = None
        self._clock = clock

    def _families(self, snap: Snapshot | None) -> Iterator[Metric]:
        devices = GaugeMetricFamily(
            "tesai_devices", "Devices by status and GPU model.", labels=["state", "gpu_model"]
        )
        clusters = GaugeMetricFamily("tesai_clusters", "Clusters by status.", labels=["state"])
        lag = GaugeMetricFamily(
            "tesai_settlement_lag_seconds",
            "Seconds the oldest complete, unsettled minute of usage has waited for settlement.",
        )
        depth = GaugeMetricFamily(
            "tesai_task_queue_depth", "Task messages waiting in a broker queue.", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "tesai_business_snapshot_age_seconds",
            "Age of the snapshot behind the business gauges.",
        )
        if snap is not None:
            for (state, model), n in sorted(snap.devices.items()):
                devices.add_metric([state, model], n)
            for state, n in sorted(snap.clusters.items()):
                clusters.add_metric([state], n)
            lag.add_metric([], snap.settlement_lag_s)
            for queue, n in sorted(snap.queue_depth.items()):
                depth.add_metric([queue], n)
            age.add_metric([], max(0.0, self._clock() - snap.taken_at))
        yield from (devices, clusters, lag, depth, age)

    def describe(self) -> Iterable[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self.snapshot))


BUSINESS = BusinessCollector()
REGISTRY.register(BUSINESS)
SNAPSHOT_COLLECTORS.append(BUSINESS)


async def _refresh_forever(runtime: Runtime, every_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            BUSINESS.snapshot = await take_snapshot(runtime.sessionmaker, runtime.tasks)
        except Exception as exc:
            # The gauges go stale (snapshot age grows) rather than taking the API down.
            log.warning("business_metrics_refresh_failed", error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


@asynccontextmanager
async def refreshing(runtime: Runtime) -> AsyncIterator[None]:
    """Keep ``BUSINESS``'s snapshot fresh while the block runs (off when the interval is 0)."""
    every_s = runtime.settings.business_metrics_interval_s
    if every_s <= 0:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(_refresh_forever(runtime, every_s, stop))
    try:
        yield
    finally:
        stop.set()
        # Let a refresh in progress finish (cancelling a query mid-way wastes its connection).
        try:
            await asyncio.wait_for(task, timeout=10)
        except TimeoutError:
            log.warning("business_metrics_refresh_stuck")


Lifespan = Callable[[Any], AbstractAsyncContextManager[None]]


def with_business_metrics(lifespan: Lifespan) -> Lifespan:
    """Wrap the API's lifespan so the snapshot refreshes while the app runs."""

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        async with lifespan(app), refreshing(app.state.runtime):
            yield

    return run
