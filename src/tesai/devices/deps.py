"""``CurrentDevice``: the agent's device credential, resolved without SQL on the hot path.

``Authorization: Bearer tesai_dev_…`` → SHA-256 → one cache GET of ``devices:cred:<sha>``
(device id, provider id, expiry). A miss reads PostgreSQL once and fills the cache for
``device_auth_cache_ttl_s``; rotating or revoking a credential deletes the entry. Unknown
tokens are cached as ``-`` for a few seconds so a stream of bad tokens does not reach the DB.
Each process also keeps lookups in memory for ``device_auth_local_cache_ttl_s`` (1 s), so a
heartbeat usually costs no auth round trip at all; the process that rotates or revokes drops
its copy at once, the others within that second.
Anything else (a user JWT, an API key, no header) is 401: agent endpoints take device
credentials only, and a device credential reaches nothing but agent endpoints.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from hashlib import sha256
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.auth.deps import AdminUser, ProviderUser
from tesai.db import SessionDep, after_commit
from tesai.devices import keys
from tesai.devices.errors import DeviceTokenExpired, DeviceTokenInvalid
from tesai.devices.models import Device, DeviceCredential
from tesai.devices.service import get_device
from tesai.protocol.v1 import DEVICE_TOKEN_PREFIX
from tesai.runtime import Runtime

_bearer = HTTPBearer(auto_error=False, description="Device token tesai_dev_…")
NEGATIVE_TTL_S = 5.0


@dataclass(frozen=True)
class DeviceAuth:
    """The authenticated agent: which device, whose, and until when its credential holds."""

    device_id: uuid.UUID
    provider_id: uuid.UUID
    credential_id: uuid.UUID
    expires_at: float
    """Unix time the credential expires."""
    token_hash: str


def hash_token(token: str) -> str:
    return sha256(token.encode()).hexdigest()


LOCAL_KEY = "devices.cred_local"
LOCAL_MAX = 100_000


def forget_local(state: dict[str, Any], token_hash: str | None = None) -> None:
    """Drop this process's local copy of one credential lookup (or of all of them)."""
    local: dict[str, tuple[float, Any]] = state.setdefault(LOCAL_KEY, {})
    if token_hash is None:
        local.clear()
    else:
        local.pop(token_hash, None)


def forget_after_commit(
    session: AsyncSession, runtime: Runtime, token_hash: str | None = None
) -> None:
    """Drop the local copy (one, or all) once the revoking unit of work has committed."""

    async def forget() -> None:
        forget_local(runtime.state, token_hash)

    after_commit(session, forget)


async def _load_credential(runtime: Runtime, token_hash: str) -> dict[str, Any] | None:
    """Read a live credential from PostgreSQL and fill the shared cache (``-`` if unknown)."""
    key = keys.credential(token_hash)
    async with runtime.sessionmaker() as session:
        cred = (
            await session.execute(
                select(DeviceCredential).where(
                    DeviceCredential.token_hash == token_hash,
                    DeviceCredential.revoked_at.is_(None),
                )
            )
        ).scalar_one_or_none()
        provider_id = None
        if cred is not None:
            provider_id = await session.scalar(
                select(Device.provider_id).where(Device.id == cred.device_id)
            )
    if cred is None or provider_id is None:
        await runtime.cache.set(key, "-", ttl_s=NEGATIVE_TTL_S)
        return None
    data: dict[str, Any] = {
        "d": str(cred.device_id),
        "p": str(provider_id),
        "c": str(cred.id),
        "e": cred.expires_at.timestamp(),
    }
    ttl = min(runtime.settings.device_auth_cache_ttl_s, data["e"] - time.time())
    if ttl > 0:
        await runtime.cache.set(key, orjson.dumps(data), ttl_s=ttl)
    return data


async def _credential_data(runtime: Runtime, token_hash: str) -> dict[str, Any] | None:
    """The lookup (None for unknown/revoked): process memory, else the cache, else SQL."""
    local: dict[str, tuple[float, Any]] = runtime.state.setdefault(LOCAL_KEY, {})
    now = time.monotonic()
    hit = local.get(token_hash)
    if hit is not None and hit[0] > now:
        cached: dict[str, Any] | None = hit[1]
        return cached
    raw = await runtime.cache.get(keys.credential(token_hash))
    if raw == b"-":
        data = None
    elif raw is None:
        data = await _load_credential(runtime, token_hash)
    else:
        data = orjson.loads(raw)
    ttl = runtime.settings.device_auth_local_cache_ttl_s
    if ttl > 0:
        if len(local) >= LOCAL_MAX:
            local.clear()  # bounded; a refill costs one cache GET per device
        local[token_hash] = (now + ttl, data)
    return data


async def authenticate_device(
    runtime: Runtime, token: str, *, expired_grace_s: float = 0.0
) -> DeviceAuth:
    """Resolve a device token; raises ``DeviceTokenInvalid`` or ``DeviceTokenExpired`` (401).

    ``expired_grace_s`` accepts a token that expired at most that long ago (rotation only).
    """
    if not token.startswith(DEVICE_TOKEN_PREFIX):
        raise DeviceTokenInvalid("Agent endpoints accept device credentials only")
    token_hash = hash_token(token)
    data = await _credential_data(runtime, token_hash)
    if data is None:
        raise DeviceTokenInvalid("Unknown or revoked device token")
    if data["e"] + expired_grace_s <= time.time():
        raise DeviceTokenExpired("The device token has expired; the agent must join again")
    return DeviceAuth(
        device_id=uuid.UUID(data["d"]),
        provider_id=uuid.UUID(data["p"]),
        credential_id=uuid.UUID(data["c"]),
        expires_at=float(data["e"]),
        token_hash=token_hash,
    )


async def current_device(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> DeviceAuth:
    """The device whose credential authenticates this request (401 otherwise)."""
    if bearer is None or not bearer.credentials:
        raise DeviceTokenInvalid("A device token is required")
    runtime: Runtime = request.app.state.runtime
    auth = await authenticate_device(runtime, bearer.credentials)
    request.state.device = auth
    return auth


async def renewing_device(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> DeviceAuth:
    """Like ``current_device``, but also accepts a token that expired within
    ``device_token_renew_grace_s``: an agent that was switched off for a while can rotate
    its way back in without a new join token (a revoked token never can)."""
    if bearer is None or not bearer.credentials:
        raise DeviceTokenInvalid("A device token is required")
    runtime: Runtime = request.app.state.runtime
    return await authenticate_device(
        runtime, bearer.credentials, expired_grace_s=runtime.settings.device_token_renew_grace_s
    )


CurrentDevice = Annotated[DeviceAuth, Depends(current_device)]
RenewingDevice = Annotated[DeviceAuth, Depends(renewing_device)]


async def owned_device(device_id: uuid.UUID, user: ProviderUser, session: SessionDep) -> Device:
    """The caller's device (404 for anyone else's)."""
    return await get_device(session, device_id, provider_id=user.id)


async def owned_device_for_update(
    device_id: uuid.UUID, user: ProviderUser, session: SessionDep
) -> Device:
    """The caller's device, row-locked for a change (404 for anyone else's)."""
    return await get_device(session, device_id, provider_id=user.id, lock=True)


async def any_device_for_update(
    device_id: uuid.UUID, _admin: AdminUser, session: SessionDep
) -> Device:
    """Any device, row-locked, for an admin action."""
    return await get_device(session, device_id, lock=True)


OwnedDevice = Annotated[Device, Depends(owned_device)]
OwnedDeviceForUpdate = Annotated[Device, Depends(owned_device_for_update)]
AdminDeviceForUpdate = Annotated[Device, Depends(any_device_for_update)]
