"""Periodic bookkeeping: per-minute uptime and telemetry rollups, reliability, re-verification.

``flush`` copies closed minutes from the cache to PostgreSQL. A minute of a device may have
several parts (``keys.minute_parts``: the accumulator closed by a rollover, another when it
went offline and came back within the minute, uptime a later beat credited across an
outage); the flush writes their sum, and the parts stay in the cache after it, so a part
added later is summed with the ones already written. The upserts on ``(device_id, minute)``
only ever raise a row (``GREATEST``; telemetry from the most samples): running the flush
twice (two workers, a retry after a crash) writes the same rows, and an old or partial sum
never overwrites a fuller one. It also writes a device's connectivity tier, reported in
heartbeat telemetry (``net.tier``) and carried in the minute accumulator, when it differs
from the stored one.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.db import run_after_commit
from tesai.devices import keys
from tesai.devices.challenges import expire
from tesai.devices.liveness import (
    UPTIME_WINDOW_S,
    merge_parts,
    reliability_score,
    rented_failures,
    rollup_averages,
    uptime_fraction,
    uptime_span,
)
from tesai.devices.models import (
    Device,
    DeviceEvent,
    DeviceStatus,
    DeviceTelemetryRollup,
    DeviceUptimeMinute,
    VerificationChallenge,
)
from tesai.devices.reputation import OFFENCES
from tesai.devices.service import issue_challenge, uptime_settle
from tesai.devices.verification import reverification_chance, reverification_window
from tesai.kit.time import utcnow
from tesai.tasks import TaskContext

log = structlog.get_logger(__name__)
INF = float("inf")
BATCH = 2000


def _minute_dt(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, UTC)


async def flush(ctx: TaskContext) -> int:
    """Write closed minutes (uptime + telemetry averages) to PostgreSQL; returns rows written."""
    cache = ctx.cache
    interval = ctx.settings.heartbeat_interval_s
    members = [m for m, _ in await cache.zrangebyscore(keys.CLOSED_MINUTES, -INF, INF)]
    written = 0
    for start in range(0, len(members), BATCH):
        chunk = members[start : start + BATCH]
        parsed = [(m.rsplit(":", 1)[0], int(m.rsplit(":", 1)[1])) for m in chunk]
        parts = await cache.hgetall_many([keys.minute_parts(d, minute) for d, minute in parsed])
        legacy = await cache.mget([keys.closed_minute(d, minute) for d, minute in parsed])
        uptime: list[dict[str, Any]] = []
        rollups: list[dict[str, Any]] = []
        tiers: dict[uuid.UUID, tuple[int, str]] = {}
        for (device_id, minute), fields, old in zip(parsed, parts, legacy, strict=True):
            found = [orjson.loads(v) for v in fields.values()]
            if old is not None:
                found.append(orjson.loads(old))
            if not found:
                continue
            acc = merge_parts(found, interval)
            if acc["t"] is not None:
                seen = tiers.get(uuid.UUID(device_id))
                if seen is None or seen[0] < minute:
                    tiers[uuid.UUID(device_id)] = (minute, str(acc["t"]))
            key = {"device_id": uuid.UUID(device_id), "minute": _minute_dt(minute)}
            uptime.append(key | {"seconds_up": acc["seconds_up"]})
            if acc["n"] == 0:
                continue  # only uptime credited across an outage: no telemetry
            avg = rollup_averages(acc)
            rollups.append(
                key
                | {
                    "samples": int(acc["n"]),
                    "cpu_percent": avg["cpu"] or 0.0,
                    "mem_used_bytes": int(avg["mem"] or 0),
                    "gpu_utilization_pct": avg["gutil"],
                    "gpu_memory_used_bytes": int(avg["gmem"]) if avg["gmem"] is not None else None,
                    "gpu_temperature_c": avg["gtemp"],
                    "gpu_power_w": avg["gpow"],
                }
            )
        if uptime:
            async with ctx.sessionmaker.begin() as session:
                rows = await session.execute(
                    select(Device.id, Device.connectivity_tier).where(
                        Device.id.in_({r["device_id"] for r in uptime})
                    )
                )
                current = {device_id: tier for device_id, tier in rows}
                existing = set(current)
                changed = [
                    {"id": d, "connectivity_tier": tier}
                    for d, (_, tier) in tiers.items()
                    if d in current and current[d] != tier
                ]
                if changed:
                    # Only rows whose tier moved (the agent re-measures every 30 min).
                    await session.execute(update(Device), changed)
                uptime = [r for r in uptime if r["device_id"] in existing]
                rollups = [r for r in rollups if r["device_id"] in existing]
                if uptime:
                    await _upsert_uptime(session, uptime)
                if rollups:
                    await _upsert_rollups(session, rollups)
            written += len(uptime)
        await cache.zrem(keys.CLOSED_MINUTES, *chunk)
        await cache.delete(*(keys.closed_minute(d, minute) for d, minute in parsed))
    await _copy_last_seen(ctx)
    return written


async def _upsert_uptime(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Each minute's seconds up, only ever raised: the sum of its parts grows as parts
    arrive, and writing the same sum again changes nothing."""
    stmt = insert(DeviceUptimeMinute).values(rows)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["device_id", "minute"],
            set_={
                "seconds_up": func.greatest(DeviceUptimeMinute.seconds_up, stmt.excluded.seconds_up)
            },
        )
    )


async def _upsert_rollups(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Each minute's telemetry averages, replaced only by averages over at least as many
    samples."""
    stmt = insert(DeviceTelemetryRollup).values(rows)
    cols = [c for c in rows[0] if c not in ("device_id", "minute")]
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["device_id", "minute"],
            set_={c: stmt.excluded[c] for c in cols},
            where=DeviceTelemetryRollup.samples <= stmt.excluded.samples,
        )
    )


async def _copy_last_seen(ctx: TaskContext) -> None:
    """Copy last-heartbeat times from the cache onto the device rows (for listings)."""
    scores = await ctx.cache.zrangebyscore(keys.LIVENESS, time.time() - 120, INF)
    if not scores:
        return
    async with ctx.sessionmaker.begin() as session:
        known = set(
            str(i)
            for i in (
                await session.execute(
                    select(Device.id).where(Device.id.in_([uuid.UUID(d) for d, _ in scores]))
                )
            ).scalars()
        )
        params = [
            {"id": uuid.UUID(d), "last_seen_at": datetime.fromtimestamp(s, UTC)}
            for d, s in scores
            if d in known
        ]
        if params:
            await session.execute(update(Device), params)


async def update_reliability(ctx: TaskContext) -> int:
    """Recompute every joined device's reliability from its uptime over the last 30 days (or
    its life, if shorter: ``liveness.uptime_span``), its failures while rented (a stop its
    agent announced is none: ``liveness.rented_failures``) and its offences in that time
    (``tesai.devices.reputation``)."""
    now = utcnow()
    since = now - timedelta(seconds=UPTIME_WINDOW_S)
    settle_s = uptime_settle(ctx.settings)
    # Minutes written by now: all of them up to this end (``uptime_span``), none after it.
    written_until = _minute_dt(int((now.timestamp() - settle_s) // 60))
    async with ctx.sessionmaker.begin() as session:
        devices = list(
            (
                await session.execute(
                    select(Device.id, Device.created_at).where(Device.agent_version.is_not(None))
                )
            ).all()
        )
        up = dict(
            (
                await session.execute(
                    select(DeviceUptimeMinute.device_id, func.sum(DeviceUptimeMinute.seconds_up))
                    .where(
                        # The minute the window starts in starts before it.
                        DeviceUptimeMinute.minute >= since.replace(second=0, microsecond=0),
                        DeviceUptimeMinute.minute < written_until,
                    )
                    .group_by(DeviceUptimeMinute.device_id)
                )
            ).all()
        )
        offline_while_rented: dict[uuid.UUID, dict[str, int]] = {}
        for device_id, reason, count in (
            await session.execute(
                select(DeviceEvent.device_id, DeviceEvent.reason, func.count())
                .where(
                    DeviceEvent.at >= since,
                    DeviceEvent.from_status == "busy",
                    DeviceEvent.to_status == "offline",
                )
                .group_by(DeviceEvent.device_id, DeviceEvent.reason)
            )
        ).tuples():
            offline_while_rented.setdefault(device_id, {})[reason] = int(count)
        offences = dict(
            (
                await session.execute(
                    select(DeviceEvent.device_id, func.count())
                    .where(DeviceEvent.at >= since, DeviceEvent.reason.in_(OFFENCES))
                    .group_by(DeviceEvent.device_id)
                )
            ).all()
        )
        params = []
        for device_id, created_at in devices:
            span = uptime_span(
                now.timestamp(),
                created=created_at.timestamp(),
                window_s=UPTIME_WINDOW_S,
                settle_s=settle_s,
            )
            # Nothing recorded yet is nothing against it: a new device keeps full uptime.
            uptime = (
                1.0
                if span is None
                else uptime_fraction(int(up.get(device_id, 0) or 0), span[1] - span[0])
            )
            score = reliability_score(
                uptime,
                rented_failures(offline_while_rented.get(device_id, {})),
                int(offences.get(device_id, 0)),
            )
            params.append({"id": device_id, "reliability": score})
        if params:
            await session.execute(update(Device), params)
    return len(params)


VERIFICATION_ROUND_S = 60.0
"""How often ``verification_rounds`` runs (``tesai.devices.tasks``)."""


async def verification_rounds(ctx: TaskContext) -> tuple[int, int]:
    """Expire unanswered challenges (a failed proof) and issue re-verifications to online
    devices at random times (``tesai.devices.verification.reverification_chance``); returns
    (expired, issued)."""
    now = utcnow()
    expired = 0
    issued = 0
    async with ctx.sessionmaker() as session:
        async with session.begin():
            stale = (
                await session.execute(
                    select(VerificationChallenge)
                    .where(
                        VerificationChallenge.completed_at.is_(None),
                        VerificationChallenge.expires_at < now,
                    )
                    .limit(500)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
            for challenge in stale:
                expired += 1
                device = await session.get(Device, challenge.device_id, with_for_update=True)
                if device is not None:
                    # Not answering counts as failing: ignoring re-verification is not free.
                    await expire(session, ctx.cache, ctx.settings, device, challenge)
            outstanding = select(VerificationChallenge.device_id).where(
                VerificationChallenge.completed_at.is_(None)
            )
            # At a random time inside the window, not on a schedule the agent could read.
            interval = ctx.settings.verification_interval_s
            youngest, oldest = reverification_window(interval)
            chance = reverification_chance(VERIFICATION_ROUND_S, interval)
            due = (
                await session.execute(
                    select(Device)
                    .where(
                        Device.status == DeviceStatus.online,
                        Device.verified_at < now - timedelta(seconds=youngest),
                        (Device.verified_at < now - timedelta(seconds=oldest))
                        | (func.random() < chance),
                        Device.id.not_in(outstanding),
                    )
                    .limit(200)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
            for device in due:
                await issue_challenge(session, ctx.cache, ctx.settings, device, trigger="periodic")
                issued += 1
        await run_after_commit(session)
    if expired or issued:
        log.info("devices_verification_rounds", expired=expired, issued=issued)
    return expired, issued
