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

Silence is judged only over time the control plane observed (``tesai.devices.liveness``).
The sweeper records the *unobserved windows*:

- **its own gaps**: a sweep more than ``sweep_gap_s`` after the previous one (Redis was
  down and sweeps failed, the sweeper was stopped, the control plane restarted) — unless
  the intake counter shows heartbeats were accepted at the usual rate meanwhile, so the
  liveness set stayed true;
- **a stalled intake**: no heartbeat accepted fleet-wide for an interval and two sweeps
  while at least ``storm_min_devices`` devices are watched (the API is down, or cannot
  reach Redis);
- **a storm hold that ended** because heartbeats returned.

A device heard shortly before a window is not judged while it lasts, nor until
``AGENT_RETRY_CAP_S`` plus the grace after it: agents back off for up to that long. A window
open for longer than ``storm_grace_s`` stops protecting (the silence is treated as real). The
windows are published (``keys.UNOBSERVED``) so heartbeats credit the uptime across them.

The intake also tells how late beats come around: when many of the beats accepted come
later than the healthy window after their device's previous one (an overloaded control
plane answers late, its agents time out and back off), the grace is doubled, and when they
come later than the grace it is quadrupled (``liveness.intake_stretch``), so an overload
slows beats down without marking anybody offline. Devices that died send nothing and do
not stretch anybody's grace.

Storm protection still holds a mass marking, counting every device marked offline in the
last grace against the devices watched when those markings began: an outage's slices never
shrink their own denominator.
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
from tesai.devices.agents import add_minute_part
from tesai.devices.liveness import (
    AGENT_RETRY_CAP_S,
    RecentOffline,
    SweepDecision,
    Unobserved,
    after_marking,
    decide_sweep,
    intake_stretch,
    merge_unobserved,
    part_id,
    silence_start,
    silent_after_grace,
    storm_base,
)
from tesai.devices.models import Device, DeviceStatus, FleetEvent
from tesai.devices.schemas import FleetEventOut, SweeperState
from tesai.devices.service import issue_challenge, record_transition
from tesai.devices.states import LIVE_STATES
from tesai.kit.cache import Cache, CacheUnavailable, Writes
from tesai.tasks import TaskContext

log = structlog.get_logger(__name__)

RECONCILE_EVERY_S = 10.0
INF = float("inf")
MAX_STRETCH = 4.0
"""A slow intake stretches the grace at most this much."""
LATE_MIN_BEATS = 3
"""Late beats in the last two graces it takes, at the least, to stretch the grace."""
_LOG_EVERY_S = 10.0

_local: dict[str, float] = {"swept": -INF, "logged": -INF}
"""This process's last sweep (when the cache lost the shared record) and last
"cannot sweep" log line."""


@dataclass
class SweepReport:
    """What one sweep did (for tests, logs and the benchmark)."""

    offline: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    holding: bool = False
    message: str = ""
    stretch: float = 1.0
    """How much the grace was stretched for a slow intake."""
    unobserved: Unobserved | None = None
    """The latest window the control plane could not observe, while it still matters."""


def grace_s(ctx: TaskContext) -> float:
    return ctx.settings.heartbeat_interval_s * ctx.settings.heartbeat_grace_intervals


def sweep_gap_s(ctx: TaskContext) -> float:
    """A sweep this long after the previous one finds that nobody watched in between."""
    return max(3.0, 3 * ctx.settings.sweep_interval_s)


def stall_s(ctx: TaskContext) -> float:
    """No heartbeat accepted fleet-wide for this long: the intake is down."""
    return ctx.settings.heartbeat_interval_s + 2 * ctx.settings.sweep_interval_s


async def sweep(ctx: TaskContext, now: float | None = None) -> SweepReport:
    """One sweep. ``now`` may be given (tests, benchmarks) to judge silence at another time.

    With Redis unreachable nothing can be observed and nobody is judged: the sweep reports
    a hold and logs one line every ``_LOG_EVERY_S``; the next sweep that reaches Redis finds
    the gap and records it as unobserved.
    """
    now = time.time() if now is None else now
    try:
        report = await _sweep(ctx, now)
    except CacheUnavailable:
        if now - _local["logged"] >= _LOG_EVERY_S:
            log.warning("devices_sweep_blind", why="the cache is unreachable")
            _local["logged"] = now
        return SweepReport(holding=True, message="the cache is unreachable: nobody is judged")
    _local["swept"] = max(_local["swept"], now)
    return report


async def _sweep(ctx: TaskContext, now: float) -> SweepReport:
    settings, cache = ctx.settings, ctx.cache
    interval = settings.heartbeat_interval_s
    grace = grace_s(ctx)
    keep = AGENT_RETRY_CAP_S + grace
    storm_raw, watch_raw, judging_raw, *intake_raw = await cache.mget(
        [keys.STORM, keys.WATCH, keys.UNOBSERVED]
        + [keys.intake(c) for c in range(keys.GAP_CLASSES)]
    )
    watch: dict[str, Any] = orjson.loads(watch_raw) if watch_raw else {}
    judging: dict[str, Any] = orjson.loads(judging_raw) if judging_raw else {}
    window = Unobserved.from_json(judging.get("window"))
    before = window
    tracked = await cache.zcard(keys.LIVENESS)
    enough = tracked >= settings.storm_min_devices
    classes = [int(raw) if raw else 0 for raw in intake_raw]
    count = sum(classes)
    swept: float | None = watch.get("swept")
    if swept is None and _local["swept"] > -INF:
        swept = _local["swept"]  # the cache lost the shared record
    previous_count: int | None = watch.get("count")
    counted = previous_count is not None and count >= previous_count
    flow = count - previous_count if counted and previous_count is not None else 0

    # The sweeper's own gap: unobserved, unless the intake kept its usual rate meanwhile.
    if swept is not None and now - swept > sweep_gap_s(ctx):
        usual = tracked / interval * (now - swept)
        if not (enough and counted and flow >= 0.5 * usual):
            gap = Unobserved(swept, now, f"no sweep for {now - swept:.0f} s")
            window = merge_unobserved(window, gap, now=now, keep_s=keep)
    # The intake: stalled while enough devices are watched to tell.
    moved: float = now if (flow > 0 or not counted or "moved" not in watch) else watch["moved"]
    if enough and now - moved > stall_s(ctx):
        if window is None or window.end is not None:
            window = merge_unobserved(
                window,
                Unobserved(moved, None, f"no heartbeat accepted since {_clock(moved)}"),
                now=now,
                keep_s=keep,
            )
    elif window is not None and window.end is None:
        window = Unobserved(window.start, now, window.why)  # the intake works again

    # How late beats come around, over the last two graces.
    samples = [s for s in watch.get("samples", []) if counted and s[0] >= now - 2 * grace]
    samples.append((now, classes))
    stretch = intake_stretch(
        samples[0][1], classes, min_late=LATE_MIN_BEATS, max_stretch=MAX_STRETCH
    )
    judged_grace = grace * stretch

    def past_grace(
        candidates: list[tuple[str, float]], w: Unobserved | None
    ) -> list[tuple[str, float]]:
        """The candidates whose silence over observed time is longer than the grace."""
        return [
            (d, last)
            for d, last in candidates
            if now
            - silence_start(
                last,
                w,
                now=now,
                grace_s=judged_grace,
                allowance_s=AGENT_RETRY_CAP_S,
                max_window_s=settings.storm_grace_s,
            )
            > judged_grace
        ]

    cutoff = now - judged_grace
    silent = await cache.zrangebyscore(keys.LIVENESS, -INF, cutoff)
    if silent:
        rewatched = dict(await cache.zrangebyscore(keys.REWATCHED, cutoff, INF))
        silent = past_grace(silent_after_grace(silent, rewatched, cutoff), window)
    storm: dict[str, Any] | None = orjson.loads(storm_raw) if storm_raw else None
    recent_raw = watch.get("recent")
    recent = RecentOffline(**recent_raw) if recent_raw else None
    base, marked_before = storm_base(recent, now=now, tracked=tracked, window_s=judged_grace)
    storm_since = storm["since"] if storm else None
    if window is not None and window.end is None and now - window.start > settings.storm_grace_s:
        # Unobserved for longer than a storm may be held: the silence is real.
        storm_since = min(storm_since if storm_since is not None else now, window.start)
    decision = decide_sweep(
        now=now,
        tracked=base,
        silent=silent,
        storm_since=storm_since,
        storm_fraction=settings.storm_fraction,
        storm_min_devices=settings.storm_min_devices,
        storm_grace_s=settings.storm_grace_s,
        marked_before=marked_before,
    )
    offline = decision.offline
    if await _record_storm(ctx, storm, decision, base, len(silent)) and storm is not None:
        # A hold that ended because beats returned was our outage: the devices still
        # silent are backing off from it, and get the time to come back.
        window = merge_unobserved(
            window,
            # Its devices fell silent a grace before the hold, their beats an interval apart.
            Unobserved(storm["since"] - grace - interval, now, "a storm hold"),
            now=now,
            keep_s=keep,
        )
        offline = past_grace(offline, window)
    if window is not None and window.end is not None and now > window.end + keep:
        window = None  # everybody it protected is due back
    await _note_window(ctx, before, window, keep)
    report = SweepReport(holding=decision.holding, message=decision.message)
    report.stretch = stretch
    report.unobserved = window
    if offline:
        report.offline = await mark_offline(ctx, offline, now, judged_grace)
    recent = after_marking(
        recent, now=now, tracked=tracked, marked=len(report.offline), window_s=judged_grace
    )
    watch = {
        "swept": now,
        "count": count,
        "moved": moved,
        "samples": samples,
        "recent": recent.__dict__ if recent else None,
    }
    judging = {"window": window.as_json() if window else None, "stretch": stretch}
    await cache.apply(
        Writes().set(keys.WATCH, orjson.dumps(watch)).set(keys.UNOBSERVED, orjson.dumps(judging))
    )
    report.resumed = await resume(ctx)
    if await cache.set(keys.RECONCILE_LOCK, "1", ttl_s=RECONCILE_EVERY_S, only_new=True):
        await reconcile(ctx, now)
    return report


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S UTC")


async def _note_window(
    ctx: TaskContext, before: Unobserved | None, after: Unobserved | None, keep: float
) -> None:
    """Log and record (fleet events) when an unobserved window opens and when it closes."""
    if after is None or after == before:
        return
    opened = after.end is None and (before is None or before.end is not None)
    closed = after.end is not None and (before is None or before.end != after.end)
    if opened:
        log.warning("devices_unobserved", since=after.start, why=after.why)
        await _fleet_event(
            ctx,
            "watch_lost",
            f"heartbeats cannot be observed ({after.why}): nobody heard before is judged",
            after.as_json(),
        )
    elif closed:
        assert after.end is not None
        lasted = after.end - after.start
        log.warning("devices_watch_resumed", lasted_s=round(lasted, 1), why=after.why)
        await _fleet_event(
            ctx,
            "watch_resumed",
            f"heartbeats were not observed for {lasted:.0f} s ({after.why}): devices heard "
            f"before get {keep:.0f} s to heartbeat again",
            after.as_json(),
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
) -> bool:
    """Keep the storm state in the cache and say, once, when a hold starts and ends.

    True when a hold ended because heartbeats returned."""
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
        return False
    if storm is None:
        return False
    if await cache.pop(keys.STORM) is None:
        return False  # another sweeper closed it
    if decision.storm_since is not None:
        log.warning("devices_storm_expired", why=decision.message)
        await _fleet_event(ctx, "storm_hold_expired", decision.message, {"silent": silent})
        return False
    message = f"storm over after {time.time() - storm['since']:.0f} s: heartbeats returned"
    log.info("devices_storm_over", why=message)
    await _fleet_event(ctx, "storm_hold_ended", message, {"silent": silent})
    return True


async def close_accumulators(cache: Cache, device_ids: list[str]) -> None:
    """Hand the running minute of silent devices to the flush task, as one more part of
    that minute (a device back within the minute adds another)."""
    if not device_ids:
        return
    raws = await cache.mget([keys.accumulator(d) for d in device_ids])
    writes = Writes()
    for device_id, raw in zip(device_ids, raws, strict=True):
        if raw is None:
            continue
        acc = orjson.loads(raw)
        add_minute_part(writes, device_id, int(acc["m"]), part_id(acc), acc)
        writes.delete(keys.accumulator(device_id))
    await cache.apply(writes)


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
        # that lands meanwhile wins (only_new); the grace to beat again counts from when
        # agents backing off from the outage that lost the cache are back.
        log.warning("devices_liveness_reseeded", count=len(missing))
        due = now + AGENT_RETRY_CAP_S
        await ctx.cache.zadd(keys.REWATCHED, {d: due for d in missing})
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
