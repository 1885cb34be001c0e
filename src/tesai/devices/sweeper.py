"""The liveness sweeper: silent devices go offline, returning ones come back, storms are held.

Runs every ``sweep_interval_s`` (task ``devices.sweep``). Each run reads the liveness sorted set
once; only when someone is silent or has returned does it touch PostgreSQL. State changes take
the device rows with ``FOR UPDATE SKIP LOCKED`` and re-check the status under the lock (and bump
``version``), so two sweepers running at once never apply a change twice.

Every ``RECONCILE_EVERY_S`` one sweeper also reconciles the cache with the database: watched
devices missing from the liveness set (a Redis flush, or the in-process cache of a restarted
`tesai up`) are put back with the time they were really last heard (``last_seen_at``) and a
fresh grace counted from now, instead of being lost or all declared dead, and offline
devices that heartbeat again without their flag are brought back.

A control plane that was not watching observed nothing. A sweep that finds the previous one
more than a grace ago (the control plane was down or restarting; Redis kept the liveness
set) gives every watched device the same fresh grace. Either way the devices get a grace to
beat again before they are marked offline, and that grace is not billed: metering bills a
node only from its device's first heartbeat after the gap (``tesai.clusters.usage``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.db import run_after_commit
from tesai.devices import keys
from tesai.devices.liveness import (
    SweepDecision,
    decide_sweep,
    silent_after_grace,
    watch_resumed,
)
from tesai.devices.models import Device, DeviceStatus, FleetEvent
from tesai.devices.schemas import FleetEventOut, SweeperState
from tesai.devices.service import issue_challenge, record_transition
from tesai.devices.states import LIVE_STATES
from tesai.kit.cache import Cache
from tesai.tasks import TaskContext

log = structlog.get_logger(__name__)

RECONCILE_EVERY_S = 10.0
INF = float("inf")


@dataclass
class SweepReport:
    """What one sweep did (for tests, logs and the benchmark)."""

    offline: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    holding: bool = False
    message: str = ""


def grace_s(ctx: TaskContext) -> float:
    return ctx.settings.heartbeat_interval_s * ctx.settings.heartbeat_grace_intervals


async def sweep(ctx: TaskContext, now: float | None = None) -> SweepReport:
    """One sweep. ``now`` may be given (tests, benchmarks) to judge silence at another time."""
    now = time.time() if now is None else now
    settings, cache = ctx.settings, ctx.cache
    grace = grace_s(ctx)
    storm_raw, swept_raw = await cache.mget([keys.STORM, keys.SWEPT])
    swept = float(swept_raw) if swept_raw else None
    if watch_resumed(swept, now, grace):
        await rewatch(ctx, now)
    if swept is None or now > swept:
        await cache.set(keys.SWEPT, repr(now))
    cutoff = now - grace
    silent = await cache.zrangebyscore(keys.LIVENESS, -INF, cutoff)
    if silent:
        rewatched = dict(await cache.zrangebyscore(keys.REWATCHED, cutoff, INF))
        silent = silent_after_grace(silent, rewatched, cutoff)
    storm: dict[str, Any] | None = orjson.loads(storm_raw) if storm_raw else None
    tracked = await cache.zcard(keys.LIVENESS) if silent else 0
    decision = decide_sweep(
        now=now,
        tracked=tracked,
        silent=silent,
        storm_since=storm["since"] if storm else None,
        storm_fraction=settings.storm_fraction,
        storm_min_devices=settings.storm_min_devices,
        storm_grace_s=settings.storm_grace_s,
    )
    await _record_storm(ctx, storm, decision, tracked, len(silent))
    report = SweepReport(holding=decision.holding, message=decision.message)
    if decision.offline:
        report.offline = await mark_offline(ctx, decision.offline, now, grace)
    report.resumed = await resume(ctx)
    if await cache.set(keys.RECONCILE_LOCK, "1", ttl_s=RECONCILE_EVERY_S, only_new=True):
        await reconcile(ctx, now)
    return report


async def rewatch(ctx: TaskContext, now: float) -> None:
    """Nobody watched the heartbeats for a while: every watched device gets a grace to beat
    again, counted from ``now``."""
    watched = await ctx.cache.zrangebyscore(keys.LIVENESS, -INF, INF)
    if not watched:
        return
    log.warning("devices_watch_resumed", count=len(watched))
    await ctx.cache.zadd(keys.REWATCHED, {d: now for d, _ in watched})
    await _fleet_event(
        ctx,
        "watch_resumed",
        f"the sweeper was away: {len(watched)} devices get a grace to heartbeat again",
        {"devices": len(watched)},
    )


async def _fleet_event(ctx: TaskContext, kind: str, message: str, data: dict[str, Any]) -> None:
    async with ctx.sessionmaker.begin() as session:
        session.add(FleetEvent(kind=kind, message=message[:512], data=data))


async def _record_storm(
    ctx: TaskContext,
    storm: dict[str, Any] | None,
    decision: SweepDecision,
    tracked: int,
    silent: int,
) -> None:
    """Keep the storm state in the cache and say, once, when a hold starts and ends."""
    cache = ctx.cache
    if decision.holding:
        state = {
            "since": decision.storm_since,
            "tracked": tracked,
            "silent": silent,
            "message": decision.message,
        }
        if storm is None:
            if await cache.set(keys.STORM, orjson.dumps(state), only_new=True):
                log.warning(
                    "devices_storm_hold", tracked=tracked, silent=silent, why=decision.message
                )
                await _fleet_event(ctx, "storm_hold_started", decision.message, state)
        else:
            await cache.set(keys.STORM, orjson.dumps(state))
        return
    if storm is None:
        return
    if await cache.pop(keys.STORM) is None:
        return  # another sweeper closed it
    if decision.storm_since is not None:
        log.warning("devices_storm_expired", why=decision.message)
        await _fleet_event(ctx, "storm_hold_expired", decision.message, {"silent": silent})
    else:
        message = f"storm over after {time.time() - storm['since']:.0f} s: heartbeats returned"
        log.info("devices_storm_over", why=message)
        await _fleet_event(ctx, "storm_hold_ended", message, {"silent": silent})


async def close_accumulators(cache: Cache, device_ids: list[str]) -> None:
    """Hand the running minute of silent devices to the flush task."""
    if not device_ids:
        return
    raws = await cache.mget([keys.accumulator(d) for d in device_ids])
    for device_id, raw in zip(device_ids, raws, strict=True):
        if raw is None:
            continue
        acc = orjson.loads(raw)
        minute = int(acc["m"])
        await cache.set(keys.closed_minute(device_id, minute), raw, ttl_s=6 * 3600)
        await cache.zadd(keys.CLOSED_MINUTES, {f"{device_id}:{minute}": float(minute)})
        await cache.delete(keys.accumulator(device_id))


async def mark_offline(
    ctx: TaskContext, silent: list[tuple[str, float]], now: float, grace: float
) -> list[str]:
    """Mark the given watched devices offline (guarded); returns the ids marked."""
    seen = dict(silent)
    ids = [uuid.UUID(d) for d in seen]
    marked: list[str] = []
    async with ctx.sessionmaker() as session:
        async with session.begin():
            rows = (
                await session.execute(
                    select(Device)
                    .where(Device.id.in_(ids), Device.status.in_(LIVE_STATES))
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
            for device in rows:
                last = seen[str(device.id)]
                record_transition(
                    session,
                    device,
                    DeviceStatus.offline,
                    "missed_heartbeats",
                    f"Last heartbeat {now - last:.0f} s ago (grace {grace:.0f} s).",
                )
                device.last_seen_at = datetime.fromtimestamp(last, UTC)
                marked.append(str(device.id))
        # Devices not watched any more (offline, disabled, removed) leave the set too; rows
        # locked by someone else stay for the next sweep.
        still_live = set(
            str(i)
            for i in (
                await session.execute(
                    select(Device.id).where(Device.id.in_(ids), Device.status.in_(LIVE_STATES))
                )
            ).scalars()
        )
    done = [d for d in seen if d not in still_live]
    if marked:
        await ctx.cache.mset({keys.offline_flag(d): "1" for d in marked}, ttl_s=30 * 24 * 3600)
        await close_accumulators(ctx.cache, marked)
        log.info("devices_offline", count=len(marked), grace_s=grace)
    if done:
        await ctx.cache.zrem(keys.LIVENESS, *done)
        await ctx.cache.zrem(keys.REWATCHED, *done)
    return marked


async def resume(ctx: TaskContext) -> list[str]:
    """Bring back offline devices whose heartbeats returned; returns the ids brought back."""
    returned = await ctx.cache.zrangebyscore(keys.RESUMED, -INF, INF)
    if not returned:
        return []
    ids = [uuid.UUID(d) for d, _ in returned]
    resumed: list[str] = []
    async with ctx.sessionmaker() as session:
        async with session.begin():
            rows = (
                await session.execute(
                    select(Device)
                    .where(Device.id.in_(ids), Device.status == DeviceStatus.offline)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
            for device in rows:
                if device.verified_at is not None:
                    record_transition(session, device, DeviceStatus.online, "heartbeat_resumed")
                else:
                    record_transition(session, device, DeviceStatus.verifying, "heartbeat_resumed")
                    await issue_challenge(
                        session, ctx.cache, ctx.settings, device, trigger="resume"
                    )
                resumed.append(str(device.id))
        await run_after_commit(session)
        still_offline = set(
            str(i)
            for i in (
                await session.execute(
                    select(Device.id).where(
                        Device.id.in_(ids), Device.status == DeviceStatus.offline
                    )
                )
            ).scalars()
        )
    done = [d for d, _ in returned if d not in still_offline]
    if done:
        await ctx.cache.delete(*(keys.offline_flag(d) for d in done))
        await ctx.cache.zrem(keys.RESUMED, *done)
    if resumed:
        log.info("devices_resumed", count=len(resumed))
    return resumed


async def reconcile(ctx: TaskContext, now: float) -> None:
    """Repair the cache from the database after a Redis flush or restart (see module doc)."""
    async with ctx.sessionmaker() as session:
        watched = {
            str(i): (last_seen or created).timestamp()
            for i, last_seen, created in (
                await session.execute(
                    select(Device.id, Device.last_seen_at, Device.created_at).where(
                        Device.status.in_(LIVE_STATES), Device.agent_version.is_not(None)
                    )
                )
            ).tuples()
        }
        offline = [
            str(i)
            for i in (
                await session.execute(
                    select(Device.id).where(Device.status == DeviceStatus.offline)
                )
            ).scalars()
        ]
    scores = dict(await ctx.cache.zrangebyscore(keys.LIVENESS, -INF, INF))
    missing = [d for d in watched if d not in scores]
    if missing:
        # Never "heard just now": that would bill the time until the next real beat. A beat
        # that lands meanwhile wins (only_new); the grace to beat again counts from now.
        log.warning("devices_liveness_reseeded", count=len(missing))
        await ctx.cache.zadd(keys.REWATCHED, {d: now for d in missing})
        await ctx.cache.zadd(
            keys.LIVENESS, {d: min(watched[d], now) for d in missing}, only_new=True
        )
    back = [d for d in offline if scores.get(d, -INF) >= now - grace_s(ctx)]
    if back:
        await ctx.cache.zadd(keys.RESUMED, {d: now for d in back})


async def sweeper_state(session: AsyncSession, cache: Cache) -> SweeperState:
    """How many devices are watched, the current storm hold and recent fleet events."""
    raw = await cache.get(keys.STORM)
    events = (
        await session.execute(select(FleetEvent).order_by(FleetEvent.id.desc()).limit(20))
    ).scalars()
    return SweeperState(
        tracked=await cache.zcard(keys.LIVENESS),
        storm=orjson.loads(raw) if raw else None,
        events=[FleetEventOut(at=e.at, kind=e.kind, message=e.message) for e in events],
    )
