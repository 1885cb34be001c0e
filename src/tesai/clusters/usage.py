"""Metering and settlement of cluster usage: two periodic tasks.

- ``meter_all`` (every ``metering_interval_s``): ONE statement meters every running node up
  to now and settles each minute that closed (``tesai.billing.metering.meter_and_settle``).
  Only observed time is billed. A node is healthy when its device's last heartbeat is within
  1.5 heartbeat intervals (the liveness set that agent heartbeats keep); a device the set
  does not know has not been heard (right after the control plane's own restart, the
  in-process cache of `tesai up` is empty), and the interval of an unhealthy node is not
  billed. A node is billed from its device's first heartbeat after a gap at the earliest
  (the start of its run of beats, ``tesai.devices.liveness``), so the time the control plane
  or the device was away is never billed, whatever restarts. If the tick itself stalled, at
  most ``stall_cap`` of the gap is billed.
  A heartbeat is the agent's word; a node is billed only while the control plane's own
  evidence holds too: its last sighting ALIVE in its head's Ray state is within
  ``ray_evidence_window_s`` (``tesai.clusters.evidence``), and it is billed from the first
  sighting after a gap at the earliest, as for heartbeats. A node nobody has seen is billed
  nothing, whatever its agent reports.
- ``settle_all`` (every ``settle_interval_s``): the sweep settles what the tick could not (a
  node's last minute, written when the reconciler stops its meter; a hold that could not
  pay) and stops the clusters whose hold cannot pay: they are out of money, not left
  running for free.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.billing import metering
from tesai.billing.models import NodeMeter
from tesai.clusters import evidence as ray_evidence
from tesai.clusters.models import Cluster, ClusterStatus
from tesai.clusters.service import record_event
from tesai.clusters.states import BILLED
from tesai.devices import keys as device_keys
from tesai.devices.liveness import billing_floors, healthy_window_s, unhealthy
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


async def unhealthy_devices(
    ctx: TaskContext, now_s: float, meters: Sequence[tuple[uuid.UUID, uuid.UUID]] | None = None
) -> list[uuid.UUID]:
    """The devices of billed nodes (of ``meters``, default: every running meter) not heard
    within 1.5 heartbeat intervals before ``now_s``, those the liveness set does not know
    included (see the module docstring)."""
    meters = await active_meters(ctx) if meters is None else meters
    devices = list({d for _, d in meters})
    heard = await ctx.cache.zscores(device_keys.LIVENESS, [str(d) for d in devices])
    return unhealthy(
        dict(zip(devices, heard, strict=True)),
        now=now_s,
        window_s=healthy_window_s(ctx.settings.heartbeat_interval_s),
    )


async def unverified_nodes(
    ctx: TaskContext, now_s: float, meters: Sequence[tuple[uuid.UUID, uuid.UUID]] | None = None
) -> list[uuid.UUID]:
    """The billed nodes (of ``meters``, default: every running meter) the control plane has
    not seen ALIVE in their head's Ray state within ``ray_evidence_window_s`` before
    ``now_s``, those never seen included."""
    meters = await active_meters(ctx) if meters is None else meters
    nodes = [n for n, _ in meters]
    seen = await ray_evidence.read(ctx.cache, nodes)
    return ray_evidence.unverified(
        seen, nodes, now=now_s, window_s=ctx.settings.ray_evidence_window_s
    )


async def active_meters(ctx: TaskContext) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(node id, device id) of every running meter."""
    async with ctx.sessionmaker() as session:
        rows = await session.execute(
            select(NodeMeter.node_id, NodeMeter.device_id).where(NodeMeter.active)
        )
        return list(rows.tuples())


async def recent_run_starts(ctx: TaskContext, now_s: float) -> dict[uuid.UUID, float]:
    """Devices whose run of heartbeats began less than ``stall_cap`` before ``now_s``
    (an earlier start is behind every watermark the tick leaves)."""
    since = now_s - stall_cap(ctx.settings).total_seconds()
    rows = await ctx.cache.zrangebyscore(device_keys.HEARD_SINCE, since, INF)
    return {uuid.UUID(d): start for d, start in rows}


async def skip_unobserved(
    session: AsyncSession,
    run_starts: Mapping[uuid.UUID, float],
    node_ids: Sequence[uuid.UUID] | None = None,
) -> None:
    """Move the meters of the nodes on these devices (of ``node_ids`` only, when given) up
    to the start of their device's run of heartbeats, unbilled: before its first heartbeat
    after a gap, nobody observed the device. Meters already past it stay put; one
    statement per distinct second. The caller holds the settlement lock."""
    if not run_starts:
        return
    query = select(NodeMeter.node_id, NodeMeter.device_id).where(
        NodeMeter.active, NodeMeter.device_id.in_(list(run_starts))
    )
    if node_ids is not None:
        query = query.where(NodeMeter.node_id.in_(list(node_ids)))
    nodes_of: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for node_id, device_id in (await session.execute(query)).tuples():
        nodes_of[device_id].append(node_id)
    floors = billing_floors({d: run_starts[d] for d in nodes_of})
    for second, devices in sorted(floors.items()):
        nodes = [n for d in devices for n in nodes_of[d]]
        await metering.meter_nodes(
            session, now=datetime.fromtimestamp(second, UTC), node_ids=nodes, unhealthy=nodes
        )


async def skip_unverified(session: AsyncSession, run_starts: Mapping[uuid.UUID, float]) -> None:
    """Move the meters of these nodes up to the start of their run of sightings in their
    head's Ray state, unbilled: before it, the control plane did not see them alive. Meters
    already past it stay put. The caller holds the settlement lock."""
    for second, nodes in sorted(billing_floors(run_starts).items()):
        await metering.meter_nodes(
            session, now=datetime.fromtimestamp(second, UTC), node_ids=nodes, unhealthy=nodes
        )


async def meter_all(ctx: TaskContext, now: datetime | None = None) -> dict[str, Any]:
    """The metering tick (see the module docstring), up to ``now`` (default: the clock);
    safe to run twice or concurrently."""
    now = metering.whole_second(now or utcnow())
    meters = await active_meters(ctx)
    stale = await unhealthy_devices(ctx, now.timestamp(), meters)
    unseen = await unverified_nodes(ctx, now.timestamp(), meters)
    run_starts = await recent_run_starts(ctx, now.timestamp())
    seen_starts = await ray_evidence.recent_run_starts(
        ctx.cache, now.timestamp() - stall_cap(ctx.settings).total_seconds()
    )
    async with ctx.sessionmaker() as session, session.begin():
        await metering.settlement_lock(session)  # before any meter (see stop_node_meter)
        await metering.meter_tick(session, now=now - stall_cap(ctx.settings), bill=False)
        await skip_unobserved(session, run_starts)
        await skip_unverified(session, seen_starts)
        result = await metering.meter_and_settle(
            session,
            now=now,
            fee_bps=ctx.settings.platform_fee_bps,
            idempotency_key=f"meter-settle:{now.isoformat()}",
            unhealthy=unseen,
            unhealthy_devices=stale,
        )
    if result.short_holds:
        async with ctx.sessionmaker() as session, session.begin():
            await stop_broke_clusters(session, result.short_holds)
    return {
        "nodes": result.moved,
        "settled": result.buckets,
        "stale_devices": len(stale),
        "unverified_nodes": len(unseen),
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
