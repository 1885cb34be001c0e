"""``CurrentDevice``: the agent's device credential, resolved without SQL on the hot path.

``Authorization: Bearer tesai_dev_…`` → SHA-256 → one cache GET of ``devices:cred:<sha>``
(device id, provider id, expiry). A miss reads PostgreSQL once and fills the cache for
``device_auth_cache_ttl_s``; rotating or revoking a credential deletes the entry. Unknown
tokens are cached as ``-`` for a few seconds so a stream of bad tokens does not reach the DB.
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

from tesai.auth.deps import AdminUser, ProviderUser
from tesai.db import SessionDep
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


async def authenticate_device(runtime: Runtime, token: str) -> DeviceAuth:
    """Resolve a device token; raises ``DeviceTokenInvalid`` or ``DeviceTokenExpired`` (401)."""
    if not token.startswith(DEVICE_TOKEN_PREFIX):
        raise DeviceTokenInvalid("Agent endpoints accept device credentials only")
    token_hash = hash_token(token)
    key = keys.credential(token_hash)
    raw = await runtime.cache.get(key)
    data: dict[str, Any]
    if raw == b"-":
        raise DeviceTokenInvalid("Unknown or revoked device token")
    if raw is None:
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
            raise DeviceTokenInvalid("Unknown or revoked device token")
        data = {
            "d": str(cred.device_id),
            "p": str(provider_id),
            "c": str(cred.id),
            "e": cred.expires_at.timestamp(),
        }
        ttl = min(runtime.settings.device_auth_cache_ttl_s, data["e"] - time.time())
        if ttl > 0:
            await runtime.cache.set(key, orjson.dumps(data), ttl_s=ttl)
    else:
        data = orjson.loads(raw)
    if data["e"] <= time.time():
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


CurrentDevice = Annotated[DeviceAuth, Depends(current_device)]


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
