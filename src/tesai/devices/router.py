"""HTTP endpoints for providers, admins and the public: thin over the devices services."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, Query, Response, status

from tesai.auth.deps import AdminUser, ProviderUser, RuntimeDep
from tesai.db import SessionDep
from tesai.devices import service
from tesai.devices.agent_router import router as agent_router
from tesai.devices.deps import (
    AdminDeviceForUpdate,
    OwnedDevice,
    OwnedDeviceForUpdate,
    forget_after_commit,
)
from tesai.devices.models import DeviceStatus
from tesai.devices.pool import pool_stats
from tesai.devices.schemas import (
    ChallengeIssued,
    ChallengeOut,
    DeviceCreate,
    DeviceCreated,
    DeviceDetail,
    DeviceEventOut,
    DeviceOut,
    JoinTokenOut,
    PoolStats,
    PriceUpdate,
    SweeperState,
    TelemetryPoint,
)
from tesai.devices.sweeper import sweeper_state

provider_router = APIRouter(prefix="/provider/devices", tags=["provider: devices"])
admin_router = APIRouter(prefix="/internal/devices", tags=["internal: devices"])
public_router = APIRouter(prefix="/public", tags=["public"])


@provider_router.post("", status_code=status.HTTP_201_CREATED)
async def create_device(
    body: DeviceCreate, user: ProviderUser, session: SessionDep, runtime: RuntimeDep
) -> DeviceCreated:
    """Create a device; returns its one-time join token and the command to run on the host."""
    device, token, expires_at = await service.create_device(
        session,
        runtime.settings,
        provider_id=user.id,
        name=body.name,
        price_micro=body.price_per_gpu_hour_micro,
        region=body.region,
        country=body.country,
    )
    return DeviceCreated(
        device=DeviceOut.model_validate(device),
        join_token=token,
        expires_at=expires_at,
        join_command=service.join_command(runtime.settings, token),
    )


@provider_router.get("")
async def list_devices(user: ProviderUser, session: SessionDep) -> list[DeviceOut]:
    """The caller's devices."""
    devices = await service.list_devices(session, provider_id=user.id)
    return [DeviceOut.model_validate(d) for d in devices]


@provider_router.get("/{device_id}")
async def device_detail(
    device: OwnedDevice,
    session: SessionDep,
    runtime: RuntimeDep,
    hours: float = Query(default=24.0, gt=0, le=24 * 30),
) -> DeviceDetail:
    """A device with its latest telemetry, telemetry history (per minute) and 30-day uptime."""
    latest = await service.latest_heartbeat(runtime.cache, device.id)
    history = await service.telemetry_history(session, device.id, hours=hours)
    uptime = await service.uptime_fraction_30d(session, runtime.settings, device)
    challenge = await service.last_challenge(session, device.id)
    return DeviceDetail(
        device=DeviceOut.model_validate(device),
        last_heartbeat_at=datetime.fromtimestamp(latest["at"], UTC) if latest else None,
        latest_telemetry=latest.get("telemetry") if latest else None,
        telemetry_history=[TelemetryPoint.model_validate(r, from_attributes=True) for r in history],
        uptime_30d_pct=None if uptime is None else round(100.0 * uptime, 3),
        hourly_price_micro=device.price_per_gpu_hour_micro * max(device.gpu_count, 1),
        last_verification=ChallengeOut.model_validate(challenge) if challenge else None,
    )


@provider_router.post("/{device_id}/join-token")
async def new_join_token(
    device: OwnedDeviceForUpdate, session: SessionDep, runtime: RuntimeDep
) -> JoinTokenOut:
    """A new one-time join token (older unused ones stop working)."""
    token, expires_at = await service.issue_join_token(session, runtime.settings, device)
    return JoinTokenOut(
        join_token=token,
        expires_at=expires_at,
        join_command=service.join_command(runtime.settings, token),
    )


@provider_router.put("/{device_id}/price")
async def set_price(
    body: PriceUpdate, device: OwnedDeviceForUpdate, session: SessionDep, runtime: RuntimeDep
) -> DeviceOut:
    """Set the price per GPU-hour (per device-hour on CPU devices), within platform bounds."""
    await service.set_price(session, runtime.settings, device, body.price_per_gpu_hour_micro)
    return DeviceOut.model_validate(device)


@provider_router.post("/{device_id}/disable")
async def disable_device(device: OwnedDeviceForUpdate, session: SessionDep) -> DeviceOut:
    """Take the device out of the pool (409 while it is rented)."""
    await service.disable_device(session, device)
    return DeviceOut.model_validate(device)


@provider_router.post("/{device_id}/enable")
async def enable_device(
    device: OwnedDeviceForUpdate, session: SessionDep, runtime: RuntimeDep
) -> DeviceOut:
    """Put a disabled device back into the pool."""
    await service.enable_device(session, runtime.cache, runtime.settings, device)
    return DeviceOut.model_validate(device)


@provider_router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_device(
    device: OwnedDeviceForUpdate, session: SessionDep, runtime: RuntimeDep
) -> Response:
    """Remove the device and its credentials (409 while it is rented)."""
    await service.remove_device(session, runtime.cache, device)
    forget_after_commit(session, runtime)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@provider_router.post("/{device_id}/credential/rotate")
async def rotate_credential(
    device: OwnedDeviceForUpdate, session: SessionDep, runtime: RuntimeDep
) -> JoinTokenOut:
    """Revoke the device's credential now (e.g. it leaked) and return a new join command.

    The running agent gets 401 at once; run the returned command on the host to reconnect.
    Routine rotation is automatic (agents rotate their own token before it expires).
    """
    token, expires_at = await service.rotate_device_credential(
        session, runtime.cache, runtime.settings, device
    )
    forget_after_commit(session, runtime)
    return JoinTokenOut(
        join_token=token,
        expires_at=expires_at,
        join_command=service.join_command(runtime.settings, token),
    )


@provider_router.get("/{device_id}/events")
async def device_events(
    device: OwnedDevice, session: SessionDep, limit: int = Query(default=200, ge=1, le=1000)
) -> list[DeviceEventOut]:
    """Status changes, newest first, each with a reason code and a readable message."""
    events = await service.list_events(session, device.id, limit)
    return [DeviceEventOut.model_validate(e) for e in events]


@provider_router.post("/{device_id}/verify", status_code=status.HTTP_202_ACCEPTED)
async def verify_device(
    device: OwnedDeviceForUpdate, session: SessionDep, runtime: RuntimeDep
) -> ChallengeIssued:
    """Run proof of compute again now."""
    challenge, command = await service.request_verification(
        session, runtime.cache, runtime.settings, device, trigger="provider"
    )
    return ChallengeIssued(challenge_id=challenge.id, command_id=command.id)


# --- admin -----------------------------------------------------------------------------------


@admin_router.get("")
async def admin_list_devices(
    _admin: AdminUser,
    session: SessionDep,
    status_filter: DeviceStatus | None = Query(default=None, alias="status"),
    provider_id: uuid.UUID | None = None,
    limit: int = Query(default=1000, ge=1, le=10000),
) -> list[DeviceOut]:
    """Every device (optionally of one status or provider)."""
    devices = await service.list_devices(session, provider_id=provider_id, limit=limit)
    return [
        DeviceOut.model_validate(d)
        for d in devices
        if status_filter is None or d.status is status_filter
    ]


@admin_router.post("/{device_id}/disable")
async def admin_disable_device(device: AdminDeviceForUpdate, session: SessionDep) -> DeviceOut:
    """Take any device out of the pool, rented or not."""
    await service.disable_device(session, device, by_admin=True)
    return DeviceOut.model_validate(device)


@admin_router.post("/{device_id}/enable")
async def admin_enable_device(
    device: AdminDeviceForUpdate, session: SessionDep, runtime: RuntimeDep
) -> DeviceOut:
    """Put a disabled device back into the pool, whoever disabled it."""
    await service.enable_device(session, runtime.cache, runtime.settings, device, by_admin=True)
    return DeviceOut.model_validate(device)


@admin_router.post("/{device_id}/verify", status_code=status.HTTP_202_ACCEPTED)
async def admin_verify_device(
    device: AdminDeviceForUpdate, session: SessionDep, runtime: RuntimeDep
) -> ChallengeIssued:
    """Run proof of compute on any device now."""
    challenge, command = await service.request_verification(
        session, runtime.cache, runtime.settings, device, trigger="admin"
    )
    return ChallengeIssued(challenge_id=challenge.id, command_id=command.id)


@admin_router.get("/sweeper")
async def admin_sweeper_state(
    _admin: AdminUser, session: SessionDep, runtime: RuntimeDep
) -> SweeperState:
    """Devices watched by the liveness sweeper, the current storm hold and recent fleet events."""
    return await sweeper_state(session, runtime.cache)


# --- public ----------------------------------------------------------------------------------


@public_router.get("/pool")
async def public_pool(session: SessionDep, runtime: RuntimeDep) -> PoolStats:
    """GPUs online by model and region, CPU devices, utilisation (refreshed every few s)."""
    return await pool_stats(session, runtime.cache, runtime.settings)


router = APIRouter()
"""Every devices endpoint, mounted under ``/api/v1`` by ``tesai.api``."""
router.include_router(provider_router)
router.include_router(admin_router)
router.include_router(public_router)
router.include_router(agent_router)
