"""Periodic bookkeeping: per-minute uptime and telemetry rollups, reliability, re-verification.

``flush`` copies closed minute accumulators from the cache to PostgreSQL with upserts on
``(device_id, minute)``, so running it twice (two workers, a retry) writes the same rows. It
also writes a device's connectivity tier, reported in heartbeat telemetry (``net.tier``) and
carried in the minute accumulator, when it differs from the stored one.
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

from tesai.db import run_after_commit
from tesai.devices import keys
from tesai.devices.liveness import reliability_score, rollup_averages, seconds_up, uptime_fraction
from tesai.devices.models import (
    Device,
    DeviceEvent,
    DeviceStatus,
    DeviceTelemetryRollup,
    DeviceUptimeMinute,
    VerificationChallenge,
)
from tesai.devices.service import issue_challenge, record_transition
from tesai.devices.states import can_transition
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
    members = [m for m, _ in await cache.zrangebyscore(keys.CLOSED_MINUTES, -INF, INF)]
    written = 0
    for start in range(0, len(members), BATCH):
        chunk = members[start : start + BATCH]
        parsed = [(m.rsplit(":", 1)[0], int(m.rsplit(":", 1)[1])) for m in chunk]
        raws = await cache.mget([keys.closed_minute(d, minute) for d, minute in parsed])
        uptime: list[dict[str, Any]] = []
        rollups: list[dict[str, Any]] = []
        tiers: dict[uuid.UUID, tuple[int, str]] = {}
        for (device_id, minute), raw in zip(parsed, raws, strict=True):
            if raw is None:
                continue
            acc = orjson.loads(raw)
            if acc.get("t") is not None:
                seen = tiers.get(uuid.UUID(device_id))
                if seen is None or seen[0] < minute:
                    tiers[uuid.UUID(device_id)] = (minute, str(acc["t"]))
            avg = rollup_averages(acc)
            key = {"device_id": uuid.UUID(device_id), "minute": _minute_dt(minute)}
            uptime.append(
                key | {"seconds_up": seconds_up(int(acc["n"]), ctx.settings.heartbeat_interval_s)}
            )
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
                    stmt = insert(DeviceUptimeMinute).values(uptime)
                    await session.execute(
                        stmt.on_conflict_do_update(
                            index_elements=["device_id", "minute"],
                            set_={"seconds_up": stmt.excluded.seconds_up},
                        )
                    )
                    rstmt = insert(DeviceTelemetryRollup).values(rollups)
                    cols = [c for c in rollups[0] if c not in ("device_id", "minute")]
                    await session.execute(
                        rstmt.on_conflict_do_update(
                            index_elements=["device_id", "minute"],
                            set_={c: rstmt.excluded[c] for c in cols},
                        )
                    )
            written += len(uptime)
        await cache.zrem(keys.CLOSED_MINUTES, *chunk)
        await cache.delete(*(keys.closed_minute(d, minute) for d, minute in parsed))
    await _copy_last_seen(ctx)
    return written


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
    """Recompute every joined device's reliability from 30-day uptime and rented failures."""
    now = utcnow()
    since = now - timedelta(days=30)
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
                    .where(DeviceUptimeMinute.minute >= since)
                    .group_by(DeviceUptimeMinute.device_id)
                )
            ).all()
        )
        failures = dict(
            (
                await session.execute(
                    select(DeviceEvent.device_id, func.count())
                    .where(
                        DeviceEvent.at >= since,
                        DeviceEvent.from_status == "busy",
                        DeviceEvent.to_status == "offline",
                    )
                    .group_by(DeviceEvent.device_id)
                )
            ).all()
        )
        params = []
        for device_id, created_at in devices:
            window = (now - max(since, created_at)).total_seconds()
            score = reliability_score(
                uptime_fraction(int(up.get(device_id, 0) or 0), window),
                int(failures.get(device_id, 0)),
            )
            params.append({"id": device_id, "reliability": score})
        if params:
            await session.execute(update(Device), params)
    return len(params)


async def verification_rounds(ctx: TaskContext) -> tuple[int, int]:
    """Expire unanswered challenges and issue periodic ones; returns (expired, issued)."""
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
                challenge.completed_at = now
                challenge.outcome = "expired"
                challenge.reason = "verification_timeout"
                expired += 1
                device = await session.get(Device, challenge.device_id, with_for_update=True)
                if (
                    device is not None
                    and device.status is DeviceStatus.verifying
                    and can_transition(device.status, DeviceStatus.rejected)
                ):
                    record_transition(
                        session, device, DeviceStatus.rejected, "verification_timeout"
                    )
            outstanding = select(VerificationChallenge.device_id).where(
                VerificationChallenge.completed_at.is_(None)
            )
            due = (
                await session.execute(
                    select(Device)
                    .where(
                        Device.status == DeviceStatus.online,
                        Device.verified_at
                        < now - timedelta(seconds=ctx.settings.verification_interval_s),
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
