"""Metering and settlement of cluster usage: two periodic tasks.

- ``meter_all`` (every ``metering_interval_s``): ONE statement meters every running node up
  to now and settles each minute that closed (``tesai.billing.metering.meter_and_settle``).
  A node is healthy when its device's last heartbeat is within 1.5 heartbeat intervals (the
  liveness set that agent heartbeats keep); the interval of an unhealthy node is not billed.
  If the tick itself stalled, the part of the gap nobody observed is not billed either.
- ``settle_all`` (every ``settle_interval_s``): the sweep settles what the tick could not (a
  node's last minute, written when the reconciler stops its meter; a hold that could not
  pay) and stops the clusters whose hold cannot pay: they are out of money, not left
  running for free.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.billing import metering
from tesai.billing.models import NodeMeter
from tesai.clusters.models import Cluster, ClusterStatus
from tesai.clusters.service import record_event
from tesai.clusters.states import BILLED
from tesai.devices import keys as device_keys
from tesai.kit.time import utcnow
from tesai.settings import Settings
from tesai.tasks import TaskContext

INF = float("inf")


def stall_cap(settings: Settings) -> timedelta:
    """The longest gap one metering run bills (the tick, or the reconciler accounting a
    node's last seconds): beyond it nobody observed the nodes' health."""
    interval = max(
        settings.heartbeat_interval_s,
        settings.metering_interval_s,
        settings.cluster_reconcile_interval_s,
    )
    return timedelta(seconds=3 * interval + 1)


async def stale_devices(ctx: TaskContext, now_s: float) -> list[uuid.UUID]:
    """Devices whose last heartbeat is older than 1.5 intervals (still watched)."""
    cutoff = now_s - 1.5 * ctx.settings.heartbeat_interval_s
    silent = await ctx.cache.zrangebyscore(device_keys.LIVENESS, -INF, cutoff)
    return [uuid.UUID(d) for d, _ in silent]


async def meter_all(ctx: TaskContext, now: datetime | None = None) -> dict[str, Any]:
    """The metering tick (see the module docstring), up to ``now`` (default: the clock);
    safe to run twice or concurrently."""
    now = metering.whole_second(now or utcnow())
    stale = await stale_devices(ctx, now.timestamp())
    async with ctx.sessionmaker() as session, session.begin():
        await metering.settlement_lock(session)  # before any meter (see stop_node_meter)
        await metering.meter_tick(session, now=now - stall_cap(ctx.settings), bill=False)
        result = await metering.meter_and_settle(
            session,
            now=now,
            fee_bps=ctx.settings.platform_fee_bps,
            idempotency_key=f"meter-settle:{now.isoformat()}",
            unhealthy_devices=stale,
        )
    if result.short_holds:
        async with ctx.sessionmaker() as session, session.begin():
            await stop_broke_clusters(session, result.short_holds)
    return {
        "nodes": result.moved,
        "settled": result.buckets,
        "stale_devices": len(stale),
        "short_holds": len(result.short_holds),
    }


async def settle_all(ctx: TaskContext) -> dict[str, Any]:
    """The sweep (see the module docstring)."""
    now = utcnow()
    async with ctx.sessionmaker() as session:
        result = await metering.settle_usage_batch(
            session,
            before=now,
            fee_bps=ctx.settings.platform_fee_bps,
            idempotency_key=f"settle-batch:{now.isoformat()}",
        )
        if result.short_holds:
            await stop_broke_clusters(session, result.short_holds)
        await session.commit()
    return {"buckets": result.buckets, "short_holds": len(result.short_holds)}


async def stop_broke_clusters(session: AsyncSession, hold_account_ids: list[int]) -> None:
    cluster_ids = (
        await session.execute(
            select(NodeMeter.cluster_id)
            .where(NodeMeter.hold_account_id.in_(hold_account_ids))
            .distinct()
        )
    ).scalars()
    for cid in cluster_ids:
        cluster = await session.get(Cluster, cid, with_for_update=True)
        if cluster is not None and cluster.status in BILLED:
            record_event(session, cluster, "budget_exhausted", to=ClusterStatus.terminating)
