"""What agents do to the registry: join, heartbeat, rotate, report proofs, leave.

The heartbeat is the hot path (thousands per second): it touches only the cache, in two round
trips, unless the device has commands pending or the beat acknowledges some; only then does
it open a database session. Liveness is a sorted set (device → last beat) the sweeper reads;
per-minute uptime and telemetry sums accumulate in the cache and the flush task copies closed
minutes to PostgreSQL.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from collections import Counter
from datetime import timedelta
from hashlib import sha256
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tesai.db import after_commit
from tesai.devices import keys
from tesai.devices.deps import DeviceAuth
from tesai.devices.errors import (
    IntakeBusy,
    JoinTokenExpired,
    JoinTokenInvalid,
    JoinTokenUsed,
)
from tesai.devices.liveness import (
    AGENT_RETRY_CAP_S,
    Unobserved,
    accumulate,
    covered_since,
    gap_class,
    healthy_window_s,
    minute_of,
    part_id,
    run_start,
    split_by_minute,
    telemetry_sample,
)
from tesai.devices.models import (
    Device,
    DeviceCommand,
    DeviceCredential,
    DeviceStatus,
    JoinToken,
)
from tesai.devices.service import get_device, issue_challenge, record_transition, revoke_credentials
from tesai.devices.states import LIVE_STATES
from tesai.errors import InvalidInput
from tesai.kit.cache import Cache, Writes, last_outage
from tesai.kit.time import utcnow
from tesai.observability.business import HEARTBEATS
from tesai.protocol.v1 import (
    DEVICE_TOKEN_PREFIX,
    MAX_COMMANDS,
    Command,
    CredentialRotation,
    HardwareSpec,
    Heartbeat,
    HeartbeatResponse,
    JoinRequest,
    JoinResponse,
)
from tesai.settings import Settings


def _sha(value: str) -> str:
    return sha256(value.encode()).hexdigest()


MAX_BIGINT = 2**63 - 1


def without_nul(value: Any) -> Any:
    """``value`` with NUL characters removed from every string (PostgreSQL refuses them)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def check_hardware(hw: HardwareSpec) -> None:
    """Raise ``InvalidInput`` for numbers the registry cannot store (they are not real hardware)."""
    too_big = (
        hw.cpu_cores > 1_000_000
        or hw.cpu_threads > 1_000_000
        or max(hw.ram_bytes, hw.disk_total_bytes, hw.disk_free_bytes) > MAX_BIGINT
        or any(g.memory_total_bytes > MAX_BIGINT for g in hw.gpus)
    )
    if too_big:
        raise InvalidInput("Hardware figures out of range")


def apply_hardware(device: Device, hw: HardwareSpec) -> None:
    """Store the probed hardware and its denormalised columns on the device."""
    device.hardware = without_nul(hw.model_dump(mode="json"))
    if hw.gpus:
        model = Counter(g.model for g in hw.gpus).most_common(1)[0][0]
        device.gpu_model = without_nul(model)[:128]
        device.gpu_count = len(hw.gpus)
        device.vram_bytes_per_gpu = min(g.memory_total_bytes for g in hw.gpus)
    else:
        device.gpu_model = None
        device.gpu_count = 0
        device.vram_bytes_per_gpu = 0
    device.cpu_cores = hw.cpu_cores
    device.ram_bytes = hw.ram_bytes
    if hw.net is not None and hw.net.tier is not None:
        device.connectivity_tier = hw.net.tier


async def _new_credential(
    session: AsyncSession, settings: Settings, device_id: uuid.UUID
) -> CredentialRotation:
    token = DEVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 random bits
    expires_at = utcnow() + timedelta(seconds=settings.device_token_ttl_s)
    session.add(
        DeviceCredential(device_id=device_id, token_hash=_sha(token), expires_at=expires_at)
    )
    await session.flush()
    return CredentialRotation(device_token=token, token_expires_at=expires_at)


async def _mark_alive(cache: Cache, device_id: str) -> None:
    now = time.time()
    await cache.zadd(keys.LIVENESS, {device_id: now})
    await cache.delete(keys.offline_flag(device_id))
    await cache.set(
        keys.telemetry(device_id), orjson.dumps({"at": now, "status": "ready"}), ttl_s=300
    )


async def join(
    session: AsyncSession, cache: Cache, settings: Settings, req: JoinRequest
) -> JoinResponse:
    """Trade a join token for a device credential; starts proof of compute.

    Raises ``JoinTokenInvalid``, ``JoinTokenExpired`` or ``JoinTokenUsed`` (401, distinct codes).
    Joining again (new join token) replaces the device's credentials.
    """
    check_hardware(req.hardware)
    jt = (
        await session.execute(
            select(JoinToken).where(JoinToken.token_hash == _sha(req.join_token)).with_for_update()
        )
    ).scalar_one_or_none()
    if jt is None:
        raise JoinTokenInvalid("Unknown join token")
    if jt.expires_at <= utcnow():
        raise JoinTokenExpired("This join token has expired; create a new one")
    retry = (
        jt.used_at is not None
        and req.agent_instance_id is not None
        and jt.used_by_instance == req.agent_instance_id
    )
    if jt.used_at is not None and not retry:
        raise JoinTokenUsed("This join token was already used; create a new one")
    jt.used_at = jt.used_at or utcnow()
    jt.used_by_instance = req.agent_instance_id
    device = await get_device(session, jt.device_id, lock=True)
    # The first join's credential may have reached nobody: replace it.
    await revoke_credentials(session, cache, device.id)
    cred = await _new_credential(session, settings, device.id)
    if retry:
        await session.flush()
        return JoinResponse(
            device_id=device.id,
            device_token=cred.device_token,
            token_expires_at=cred.token_expires_at,
            heartbeat_interval_s=settings.heartbeat_interval_s,
        )
    apply_hardware(device, req.hardware)
    device.agent_version = without_nul(req.agent_version)[:64]
    device.ray_version = without_nul(req.ray_version)[:64] if req.ray_version else None
    device.last_seen_at = utcnow()
    if device.status in (
        DeviceStatus.pending,
        DeviceStatus.rejected,
        DeviceStatus.offline,
        DeviceStatus.online,
    ):
        record_transition(session, device, DeviceStatus.verifying, "agent_joined")
        await issue_challenge(session, cache, settings, device, trigger="join")
    elif device.status is DeviceStatus.verifying:
        await issue_challenge(session, cache, settings, device, trigger="join")
    await session.flush()
    device_id = str(device.id)

    async def alive() -> None:
        await _mark_alive(cache, device_id)

    after_commit(session, alive)
    return JoinResponse(
        device_id=device.id,
        device_token=cred.device_token,
        token_expires_at=cred.token_expires_at,
        heartbeat_interval_s=settings.heartbeat_interval_s,
    )


HEARTBEATS_IN_FLIGHT_MAX = 256
"""Heartbeats one API process handles at once; more are answered 503 with ``Retry-After``
at once (the agent waits that long): an overloaded process slows its agents down instead
of queueing beats until they time out."""
MINUTE_PARTS_TTL_S = 6 * 3600.0
"""How long the parts of a minute stay in the cache after it closed: a part added later
(a device back within the minute, uptime credited across an outage) joins the ones already
flushed."""

_in_flight = 0


async def heartbeat(
    sessionmaker: async_sessionmaker[AsyncSession],
    cache: Cache,
    settings: Settings,
    auth: DeviceAuth,
    beat: Heartbeat,
    peer: str | None = None,
) -> HeartbeatResponse:
    """Record one heartbeat in the cache and return the device's pending commands.

    ``peer`` is the address the beat came from as the API saw it: the only host the control
    plane connects to for this device's Ray head (``tesai.clusters.head_address``).

    Raises ``IntakeBusy`` (503) when this process already handles
    ``HEARTBEATS_IN_FLIGHT_MAX`` beats, ``CacheUnavailable`` (503) when Redis cannot be
    reached; either way nothing of the beat is stored.
    """
    global _in_flight
    if _in_flight >= HEARTBEATS_IN_FLIGHT_MAX:
        raise IntakeBusy(retry_after_s=max(1, math.ceil(settings.heartbeat_interval_s / 2)))
    _in_flight += 1
    try:
        return await _record_heartbeat(sessionmaker, cache, settings, auth, beat, peer)
    finally:
        _in_flight -= 1


async def _record_heartbeat(
    sessionmaker: async_sessionmaker[AsyncSession],
    cache: Cache,
    settings: Settings,
    auth: DeviceAuth,
    beat: Heartbeat,
    peer: str | None,
) -> HeartbeatResponse:
    now = time.time()
    device_id = str(auth.device_id)
    interval = settings.heartbeat_interval_s
    grace = interval * settings.heartbeat_grace_intervals
    acc_raw, flag, offline, judging_raw = await cache.mget(
        [
            keys.accumulator(device_id),
            keys.commands_pending(device_id),
            keys.offline_flag(device_id),
            keys.UNOBSERVED,
        ]
    )
    previous = orjson.loads(acc_raw) if acc_raw else None
    if previous is not None and "u" not in previous:  # written before uptime was covered time
        previous["u"] = float(previous["n"]) * interval
    last = previous.get("l") if previous else None
    # The run of beats rides in the accumulator too (last beat "l", run start "r"): a beat
    # after a silence, or the first one since the cache was lost, starts a new run, and
    # metering bills nothing before it (see ``tesai.devices.liveness``).
    started = run_start(
        last, previous.get("r") if previous else None, now, healthy_window_s(interval)
    )
    try:
        sample = telemetry_sample(beat.telemetry)
        latest = orjson.dumps(
            {
                "at": now,
                "since": started,
                "seq": beat.seq,
                "status": beat.status,
                "reason": beat.reason,
                "peer": peer,
                "telemetry": beat.telemetry.model_dump(mode="json", exclude_none=True),
                "nodes": [n.model_dump(mode="json", exclude_none=True) for n in beat.nodes],
            }
        )
    except (OverflowError, orjson.JSONEncodeError) as exc:
        # Integers beyond 64 bits pass the wire model's bounds but cannot be stored.
        raise InvalidInput("A number in the heartbeat is out of range") from exc
    judging = orjson.loads(judging_raw) if judging_raw else {}
    # Uptime: the time since the previous beat, when the device was healthy across it or
    # the gap was the control plane's own outage (see ``liveness.covered_since``): one the
    # sweeper recorded, or Redis being unreachable from this process, which a beat right
    # after it may see before the sweeper does.
    windows = [Unobserved.from_json(judging.get("window"))]
    outage = last_outage()
    if outage is not None:
        windows.append(Unobserved(outage[0], outage[1], "the cache was unreachable"))
    since = min(
        covered_since(
            None if offline is not None else last,
            now,
            interval_s=interval,
            stretch=float(judging.get("stretch", 1.0)),
            window=window,
            grace_s=grace,
            allowance_s=AGENT_RETRY_CAP_S,
            max_window_s=settings.storm_grace_s,
        )
        for window in windows
    )
    acc, closed = accumulate(previous, minute_of(now), sample)
    acc["l"], acc["r"] = now, started
    acc.setdefault("f", now)
    net = beat.telemetry.net
    if net is not None and net.tier is not None:
        # The tier rides in the minute accumulator (no extra cache or SQL work per beat); the
        # flush task writes it to the device row when it changed. Join cannot measure it.
        acc["t"] = net.tier
    writes = Writes()
    for minute, seconds in split_by_minute(since, now).items():
        if minute == acc["m"]:
            acc["u"] = acc.get("u", 0.0) + seconds
        elif closed is not None and minute == closed["m"]:
            closed["u"] = closed.get("u", 0.0) + seconds
        else:  # uptime credited to an earlier minute, across a gap
            add_minute_part(writes, device_id, minute, f"g{since!r}", {"u": seconds, "l": now})
    if closed is not None:
        # In the same transaction as the new accumulator: a rollover that fails writes
        # neither, and the next beat closes the minute again.
        add_minute_part(writes, device_id, int(closed["m"]), part_id(closed), closed)
    writes.set(keys.accumulator(device_id), orjson.dumps(acc), ttl_s=settings.telemetry_ttl_s)
    writes.set(keys.telemetry(device_id), latest, ttl_s=settings.telemetry_ttl_s)
    writes.zadd(keys.LIVENESS, {device_id: now})
    # What the sweeper reads the intake's health from: beats accepted, by how long since
    # their device's previous one (none known, or back from offline: on time).
    gap = now - last if last is not None and offline is None else interval
    writes.incr(keys.intake(gap_class(gap, healthy_s=healthy_window_s(interval), grace_s=grace)))
    if offline is not None:
        writes.zadd(keys.RESUMED, {device_id: now})
    if started == now:
        writes.zadd(keys.HEARD_SINCE, {device_id: now})
    await cache.apply(writes)
    HEARTBEATS.inc()

    commands: list[Command] = []
    if flag is not None or beat.acked_commands or beat.command_results:
        commands = await _exchange_commands(sessionmaker, cache, auth.device_id, beat, flag)
    return HeartbeatResponse(
        interval_s=interval,
        commands=commands,
        rotate_credential=auth.expires_at - now < settings.device_token_rotate_before_s,
    )


def add_minute_part(
    writes: Writes, device_id: str, minute: int, part: str, data: dict[str, Any]
) -> None:
    """Add one part to a device's minute and queue the minute for the flush task."""
    writes.hset(
        keys.minute_parts(device_id, minute), part, orjson.dumps(data), ttl_s=MINUTE_PARTS_TTL_S
    )
    writes.zadd(keys.CLOSED_MINUTES, {f"{device_id}:{minute}": float(minute)})


async def _exchange_commands(
    sessionmaker: async_sessionmaker[AsyncSession],
    cache: Cache,
    device_id: uuid.UUID,
    beat: Heartbeat,
    flag: bytes | None,
) -> list[Command]:
    """Apply acks and results (own commands only), then fetch what is still unacked."""
    now = utcnow()
    async with sessionmaker.begin() as session:
        if beat.acked_commands:
            await session.execute(
                update(DeviceCommand)
                .where(
                    DeviceCommand.device_id == device_id,
                    DeviceCommand.id.in_(beat.acked_commands),
                    DeviceCommand.acked_at.is_(None),
                )
                .values(acked_at=now)
            )
        for result in beat.command_results:
            await session.execute(
                update(DeviceCommand)
                .where(DeviceCommand.device_id == device_id, DeviceCommand.id == result.id)
                .values(result=without_nul(result.model_dump(mode="json")), acked_at=now)
            )
        rows = list(
            (
                await session.execute(
                    select(DeviceCommand)
                    .where(DeviceCommand.device_id == device_id, DeviceCommand.acked_at.is_(None))
                    .order_by(DeviceCommand.created_at, DeviceCommand.id)
                    .limit(MAX_COMMANDS)
                )
            ).scalars()
        )
        for row in rows:
            if row.delivered_at is None:
                row.delivered_at = now
            row.delivery_count += 1
        commands = [Command(id=r.id, kind=r.kind, args=r.args) for r in rows]  # type: ignore[arg-type]
    if not commands and flag is not None:
        popped = await cache.pop(keys.commands_pending(str(device_id)))
        if popped is not None and popped != flag:
            # A command was queued while we looked: keep the flag for the next beat.
            await cache.set(keys.commands_pending(str(device_id)), popped)
    return commands


async def rotate_credential(
    session: AsyncSession, cache: Cache, settings: Settings, auth: DeviceAuth
) -> CredentialRotation:
    """A new device token; the one used for this call stops working once this commits."""
    await session.execute(
        update(DeviceCredential)
        .where(DeviceCredential.id == auth.credential_id, DeviceCredential.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    rotation = await _new_credential(session, settings, auth.device_id)
    old_key = keys.credential(auth.token_hash)

    async def forget() -> None:
        await cache.delete(old_key)

    after_commit(session, forget)
    return rotation


async def leave(session: AsyncSession, cache: Cache, auth: DeviceAuth, reason: str | None) -> None:
    """The agent is shutting down cleanly: offline now, no grace period to wait out."""
    device = await get_device(session, auth.device_id, lock=True)
    if device.status in LIVE_STATES:
        record_transition(
            session,
            device,
            DeviceStatus.offline,
            "agent_left",
            f"({without_nul(reason)[:200]})" if reason else "",
        )
        device.last_seen_at = utcnow()
    await session.flush()
    device_id = str(device.id)

    async def gone() -> None:
        await cache.zrem(keys.LIVENESS, device_id)
        await cache.set(keys.offline_flag(device_id), "1", ttl_s=30 * 24 * 3600)

    after_commit(session, gone)
