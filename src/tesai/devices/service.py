"""Device registry rules: creating devices, join tokens, status changes, commands, challenges.

Services take an ``AsyncSession`` and ``flush``; the caller's unit of work commits. Cache
side effects (command flags, credential invalidation) run only after that commit
(``tesai.db.after_commit``), so a rolled-back request leaves the cache as it was.
"""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any

import orjson
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.db import after_commit
from tesai.devices import keys
from tesai.devices.errors import (
    DeviceBusy,
    DeviceNotFound,
    DisabledByAdmin,
    PriceOutOfBounds,
    StatusConflict,
)
from tesai.devices.liveness import UPTIME_WINDOW_S, uptime_fraction, uptime_settle_s, uptime_span
from tesai.devices.models import (
    Device,
    DeviceCommand,
    DeviceCredential,
    DeviceEvent,
    DeviceStatus,
    DeviceTelemetryRollup,
    DeviceUptimeMinute,
    JoinToken,
    VerificationChallenge,
)
from tesai.devices.states import InvalidTransition, check_transition
from tesai.devices.verification import ProofPolicy, plan_challenge
from tesai.kit.cache import Cache
from tesai.kit.time import utcnow
from tesai.observability.business import DEVICE_TRANSITIONS
from tesai.protocol.proof import PROOF_VERSION
from tesai.protocol.v1 import VerifyArgs
from tesai.settings import Settings

JOIN_TOKEN_PREFIX = "tesai_join_"  # noqa: S105 - a prefix, not a secret
ADMIN_ONLY_ENABLE = frozenset({"disabled_by_admin", "proof_failures_review", "offences_review"})
"""Reasons for ``disabled`` that only an admin may lift."""


def _sha(value: str) -> str:
    return sha256(value.encode()).hexdigest()


def join_command(settings: Settings, token: str) -> str:
    """The line a provider pastes on the host."""
    return f"tesai agent --server {settings.public_url} --token {token}"


def check_price(settings: Settings, price_micro: int) -> None:
    """Raise ``PriceOutOfBounds`` unless the price lies within the platform bounds."""
    if not settings.price_min_micro <= price_micro <= settings.price_max_micro:
        raise PriceOutOfBounds(
            f"Price must be between {settings.price_min_micro} and {settings.price_max_micro} "
            "micro-USDC per GPU-hour",
            min=settings.price_min_micro,
            max=settings.price_max_micro,
        )


def record_transition(
    session: AsyncSession, device: Device, target: DeviceStatus, reason: str, detail: str = ""
) -> DeviceEvent:
    """Move ``device`` to ``target`` (state machine checked) and add the event.

    Raises ``StatusConflict`` (409) when the move is not allowed.
    """
    try:
        t = check_transition(device.status, target, reason, detail)
    except InvalidTransition as exc:
        raise StatusConflict(f"Device is {device.status.value}: {exc}") from exc
    event = DeviceEvent(
        device_id=device.id,
        from_status=device.status.value,
        to_status=target.value,
        reason=reason,
        message=t.message,
        at=utcnow(),
    )
    DEVICE_TRANSITIONS.labels(target.value, reason).inc()
    device.status = target
    device.status_reason = reason
    device.version += 1
    session.add(event)
    return event


async def issue_join_token(
    session: AsyncSession, settings: Settings, device: Device
) -> tuple[str, datetime]:
    """A fresh one-time join token for ``device`` (older unused ones stop working)."""
    await session.execute(
        delete(JoinToken).where(JoinToken.device_id == device.id, JoinToken.used_at.is_(None))
    )
    token = JOIN_TOKEN_PREFIX + secrets.token_urlsafe(24)  # 192 random bits
    expires_at = utcnow() + timedelta(seconds=min(settings.join_token_ttl_s, 3600))
    session.add(JoinToken(device_id=device.id, token_hash=_sha(token), expires_at=expires_at))
    await session.flush()
    return token, expires_at


async def create_device(
    session: AsyncSession,
    settings: Settings,
    *,
    provider_id: uuid.UUID,
    name: str,
    price_micro: int | None,
    region: str | None,
    country: str | None,
) -> tuple[Device, str, datetime]:
    """Create a device in ``pending`` and its first join token."""
    price = settings.default_price_micro if price_micro is None else price_micro
    check_price(settings, price)
    device = Device(
        id=uuid.uuid4(),
        provider_id=provider_id,
        name=name,
        status=DeviceStatus.pending,
        status_reason="created",
        price_per_gpu_hour_micro=price,
        region=region,
        country=country.upper() if country else None,
        hardware={},
        version=1,
        gpu_count=0,
        vram_bytes_per_gpu=0,
        cpu_cores=0,
        ram_bytes=0,
        reliability=1.0,
        created_at=utcnow(),
    )
    session.add(device)
    t = check_transition(None, DeviceStatus.pending, "created")
    session.add(
        DeviceEvent(
            device_id=device.id,
            from_status=None,
            to_status="pending",
            reason="created",
            message=t.message,
            at=utcnow(),
        )
    )
    await session.flush()
    token, expires_at = await issue_join_token(session, settings, device)
    return device, token, expires_at


async def get_device(
    session: AsyncSession,
    device_id: uuid.UUID,
    *,
    provider_id: uuid.UUID | None = None,
    lock: bool = False,
) -> Device:
    """Load a device (of ``provider_id`` when given); ``DeviceNotFound`` otherwise."""
    stmt = select(Device).where(Device.id == device_id)
    if provider_id is not None:
        stmt = stmt.where(Device.provider_id == provider_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    device = (await session.execute(stmt)).scalar_one_or_none()
    if device is None:
        raise DeviceNotFound("No such device")
    return device


async def list_devices(
    session: AsyncSession, *, provider_id: uuid.UUID | None = None, limit: int = 1000
) -> list[Device]:
    stmt = select(Device).order_by(Device.created_at, Device.id).limit(limit)
    if provider_id is not None:
        stmt = stmt.where(Device.provider_id == provider_id)
    return list((await session.execute(stmt)).scalars())


async def set_price(session: AsyncSession, settings: Settings, device: Device, price: int) -> None:
    check_price(settings, price)
    device.price_per_gpu_hour_micro = price
    await session.flush()


async def disable_device(session: AsyncSession, device: Device, *, by_admin: bool = False) -> None:
    """Take a device out of the pool. A provider cannot disable a rented device (409)."""
    if device.status is DeviceStatus.disabled:
        return
    if device.status in (DeviceStatus.busy, DeviceStatus.draining) and not by_admin:
        raise DeviceBusy("The device is rented; it can be disabled once its cluster ends")
    reason = "disabled_by_admin" if by_admin else "disabled_by_provider"
    record_transition(session, device, DeviceStatus.disabled, reason)
    await session.flush()


async def enable_device(
    session: AsyncSession,
    cache: Cache,
    settings: Settings,
    device: Device,
    *,
    by_admin: bool = False,
) -> None:
    """Put a disabled device back: listed if it is verified and heartbeating, else waiting.
    A device an admin disabled comes back only by an admin (403 for its provider)."""
    if device.status is not DeviceStatus.disabled:
        raise StatusConflict(f"Device is {device.status.value}, not disabled")
    if device.status_reason in ADMIN_ONLY_ENABLE and not by_admin:
        raise DisabledByAdmin(
            "An admin disabled this device, or must review it after repeated failed checks "
            f"({device.status_reason}); only an admin can enable it again"
        )
    reason = "enabled_by_admin" if by_admin else "enabled_by_provider"
    live = await is_live(cache, settings, device.id)
    if device.agent_version is None:
        record_transition(session, device, DeviceStatus.pending, reason)
    elif not live:
        record_transition(session, device, DeviceStatus.offline, reason, "Waiting for heartbeats.")
        after_commit(session, lambda: _set_offline_flags(cache, [device.id]))
    elif device.verified_at is not None:
        record_transition(session, device, DeviceStatus.online, reason)
    else:
        record_transition(session, device, DeviceStatus.verifying, reason)
        await issue_challenge(
            session, cache, settings, device, trigger="admin" if by_admin else "provider"
        )
    await session.flush()


async def _set_offline_flags(cache: Cache, device_ids: list[uuid.UUID]) -> None:
    await cache.mset({keys.offline_flag(str(d)): "1" for d in device_ids}, ttl_s=30 * 24 * 3600)


async def is_live(cache: Cache, settings: Settings, device_id: uuid.UUID) -> bool:
    """Whether the device heartbeated within the grace period (from its cached telemetry)."""
    at = await last_heartbeat(cache, device_id)
    grace = settings.heartbeat_interval_s * settings.heartbeat_grace_intervals
    return at is not None and time.time() - at <= grace


async def last_heartbeat(cache: Cache, device_id: uuid.UUID) -> float | None:
    raw = await cache.get(keys.telemetry(str(device_id)))
    if raw is None:
        return None
    at: float = orjson.loads(raw)["at"]
    return at


async def revoke_credentials(session: AsyncSession, cache: Cache, device_id: uuid.UUID) -> int:
    """Revoke every active credential of a device; the cache forgets them after the commit."""
    hashes = list(
        (
            await session.execute(
                update(DeviceCredential)
                .where(
                    DeviceCredential.device_id == device_id, DeviceCredential.revoked_at.is_(None)
                )
                .values(revoked_at=utcnow())
                .returning(DeviceCredential.token_hash)
            )
        ).scalars()
    )

    async def forget() -> None:
        await cache.delete(*(keys.credential(h) for h in hashes))

    if hashes:
        after_commit(session, forget)
    return len(hashes)


async def rotate_device_credential(
    session: AsyncSession, cache: Cache, settings: Settings, device: Device
) -> tuple[str, datetime]:
    """Revoke the device's credentials now and issue a new join token.

    Meant for a credential the provider believes leaked: the old token stops working at once
    (the agent gets 401) and only someone holding the new join token can reconnect, by
    running the join command again. Routine rotation needs no provider action: agents rotate
    their own token through ``POST /api/v1/agent/credential/rotate`` when heartbeats say so.
    """
    await revoke_credentials(session, cache, device.id)
    return await issue_join_token(session, settings, device)


async def remove_device(session: AsyncSession, cache: Cache, device: Device) -> None:
    """Delete a device and everything it owns; 409 while it is rented."""
    if device.status in (DeviceStatus.busy, DeviceStatus.draining):
        raise DeviceBusy("The device is rented; it can be removed once its cluster ends")
    await revoke_credentials(session, cache, device.id)
    device_id = str(device.id)
    await session.delete(device)
    await session.flush()

    async def forget() -> None:
        for watched in (keys.LIVENESS, keys.RESUMED, keys.HEARD_SINCE, keys.REWATCHED):
            await cache.zrem(watched, device_id)
        await cache.delete(
            keys.telemetry(device_id),
            keys.accumulator(device_id),
            keys.commands_pending(device_id),
            keys.offline_flag(device_id),
        )

    after_commit(session, forget)


async def list_events(
    session: AsyncSession, device_id: uuid.UUID, limit: int = 200
) -> list[DeviceEvent]:
    rows = await session.execute(
        select(DeviceEvent)
        .where(DeviceEvent.device_id == device_id)
        .order_by(DeviceEvent.at.desc(), DeviceEvent.id.desc())
        .limit(limit)
    )
    return list(rows.scalars())


# --- commands ------------------------------------------------------------------------------


async def create_command(
    session: AsyncSession, cache: Cache, device_id: uuid.UUID, kind: str, args: dict[str, Any]
) -> DeviceCommand:
    """Queue a command for the device's agent; it rides on heartbeat responses until acked."""
    command = DeviceCommand(
        id=uuid.uuid4(), device_id=device_id, kind=kind, args=args, delivery_count=0
    )
    session.add(command)
    await session.flush()

    async def flag() -> None:
        # The value is the flag's generation: a heartbeat that finds nothing pending clears
        # the flag only if no newer command set it meanwhile.
        await cache.set(keys.commands_pending(str(device_id)), str(time.time_ns()))

    after_commit(session, flag)
    return command


async def issue_challenge(
    session: AsyncSession, cache: Cache, settings: Settings, device: Device, *, trigger: str
) -> tuple[VerificationChallenge, DeviceCommand]:
    """Create a proof-of-compute challenge and the ``verify`` command that carries it."""
    # Only the newest challenge counts: an older unanswered one must not time out later and
    # reject a device that is answering the new one.
    await session.execute(
        update(VerificationChallenge)
        .where(
            VerificationChallenge.device_id == device.id,
            VerificationChallenge.completed_at.is_(None),
        )
        .values(completed_at=utcnow(), outcome="superseded")
    )
    await session.execute(
        update(DeviceCommand)
        .where(
            DeviceCommand.device_id == device.id,
            DeviceCommand.kind == "verify",
            DeviceCommand.acked_at.is_(None),
        )
        .values(acked_at=utcnow(), result={"superseded": True})
    )
    gpu = device.gpu_count > 0
    plan = plan_challenge(
        ProofPolicy.from_settings(settings),
        gpu_model=device.gpu_model,
        gpu_count=device.gpu_count,
        vram_bytes=device.vram_bytes_per_gpu,
        cpu_cores=device.cpu_cores,
    )
    challenge = VerificationChallenge(
        id=uuid.uuid4(),
        device_id=device.id,
        # Secret until the agent asks for it (``tesai.devices.challenges.start``).
        seed=secrets.randbits(63),
        params=plan.to_params(),
        expires_at=utcnow() + timedelta(seconds=settings.verification_timeout_s),
        trigger=trigger,
        created_at=utcnow(),
    )
    session.add(challenge)
    args = VerifyArgs(
        challenge_id=challenge.id,
        proof_version=PROOF_VERSION,
        matrix_n=plan.n,
        iterations=plan.rounds,
        declared_vram_bytes=device.vram_bytes_per_gpu if gpu else 0,
    )
    command = await create_command(
        session, cache, device.id, "verify", args.model_dump(mode="json")
    )
    return challenge, command


async def request_verification(
    session: AsyncSession, cache: Cache, settings: Settings, device: Device, *, trigger: str
) -> tuple[VerificationChallenge, DeviceCommand]:
    """On-demand proof of compute (provider or admin). Needs a joined device."""
    if device.agent_version is None:
        raise StatusConflict("No agent has joined as this device yet")
    if device.status in (DeviceStatus.pending, DeviceStatus.rejected):
        record_transition(session, device, DeviceStatus.verifying, "verification_requested")
    elif device.status in (DeviceStatus.disabled, DeviceStatus.busy, DeviceStatus.draining):
        raise StatusConflict(f"Device is {device.status.value}; it cannot be verified now")
    result = await issue_challenge(session, cache, settings, device, trigger=trigger)
    await session.flush()
    return result


async def last_challenge(
    session: AsyncSession, device_id: uuid.UUID
) -> VerificationChallenge | None:
    return (
        await session.execute(
            select(VerificationChallenge)
            .where(VerificationChallenge.device_id == device_id)
            .order_by(VerificationChallenge.created_at.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


# --- history ---------------------------------------------------------------------------------


def uptime_settle(settings: Settings) -> float:
    """How long after a minute ends its uptime is surely written (``liveness.uptime_settle_s``
    for these settings)."""
    return uptime_settle_s(
        grace_s=settings.heartbeat_interval_s * settings.heartbeat_grace_intervals,
        flush_interval_s=settings.device_flush_interval_s,
    )


def uptime_window(
    settings: Settings, device: Device, now: datetime
) -> tuple[datetime, datetime] | None:
    """(start, end) of what the device's uptime is measured over: the last 30 days, or its
    life if shorter, up to its newest minute surely written; None while there is none."""
    span = uptime_span(
        now.timestamp(),
        created=device.created_at.timestamp(),
        window_s=UPTIME_WINDOW_S,
        settle_s=uptime_settle(settings),
    )
    if span is None:
        return None
    return datetime.fromtimestamp(span[0], UTC), datetime.fromtimestamp(span[1], UTC)


async def uptime_fraction_30d(
    session: AsyncSession, settings: Settings, device: Device
) -> float | None:
    """Share of the last 30 days (or of the device's life, if shorter) it was heartbeating,
    over the minutes written so far (``uptime_window``); None while none is."""
    window = uptime_window(settings, device, utcnow())
    if window is None:
        return None
    start, end = window
    total = await session.scalar(
        select(func.coalesce(func.sum(DeviceUptimeMinute.seconds_up), 0)).where(
            DeviceUptimeMinute.device_id == device.id,
            # The minute the window starts in starts before it.
            DeviceUptimeMinute.minute >= start.replace(second=0, microsecond=0),
            DeviceUptimeMinute.minute < end,
        )
    )
    return uptime_fraction(int(total or 0), (end - start).total_seconds())


async def telemetry_history(
    session: AsyncSession, device_id: uuid.UUID, *, hours: float = 24.0
) -> list[DeviceTelemetryRollup]:
    since = utcnow() - timedelta(hours=hours)
    rows = await session.execute(
        select(DeviceTelemetryRollup)
        .where(DeviceTelemetryRollup.device_id == device_id, DeviceTelemetryRollup.minute >= since)
        .order_by(DeviceTelemetryRollup.minute)
    )
    return list(rows.scalars())


async def latest_heartbeat(cache: Cache, device_id: uuid.UUID) -> dict[str, Any] | None:
    """The device's last heartbeat as cached: ``{at, status, reason, telemetry, nodes}``."""
    raw = await cache.get(keys.telemetry(str(device_id)))
    if raw is None:
        return None
    data: dict[str, Any] = orjson.loads(raw)
    return data
