"""Scoped API keys: ``tesai_<prefix>_<secret>``.

The secret has 160 random bits; the server keeps the SHA-256 of the whole key and the
prefix (shown in listings so a user can tell keys apart). The key itself is returned once,
at creation. Revocation deletes the cached lookup after the commit, so it takes effect on
the next request everywhere.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.auth.errors import ApiKeyNotFound
from tesai.auth.models import ApiKey
from tesai.auth.principal import api_key_cache_key, forget_local, hash_secret
from tesai.db import after_commit
from tesai.errors import BadRequest
from tesai.kit.cache import Cache
from tesai.kit.time import utcnow


class UnknownScope(BadRequest):
    code = "unknown_scope"


def new_key_material() -> tuple[str, str]:
    """(prefix, whole key). Hex keeps ``_`` free as the separator."""
    prefix = secrets.token_hex(6)  # 48 bits: collisions stay unlikely at millions of keys
    return prefix, f"tesai_{prefix}_{secrets.token_hex(20)}"


async def create_api_key(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    name: str,
    scopes: Iterable[str],
    allowed_scopes: Iterable[str],
) -> tuple[ApiKey, str]:
    """Store a new key; returns the row and the key (never retrievable again).

    Raises ``UnknownScope`` for a scope outside ``allowed_scopes``.
    """
    wanted = sorted(set(scopes))
    unknown = set(wanted) - set(allowed_scopes)
    if unknown:
        raise UnknownScope(f"Unknown scope(s): {', '.join(sorted(unknown))}")
    prefix, key = new_key_material()
    row = ApiKey(
        id=uuid.uuid4(),
        user_id=user_id,
        name=name,
        prefix=prefix,
        key_hash=hash_secret(key),
        scopes=wanted,
    )
    session.add(row)
    await session.flush()
    return row, key


async def list_api_keys(session: AsyncSession, user_id: uuid.UUID) -> list[ApiKey]:
    rows = await session.scalars(
        select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at, ApiKey.id)
    )
    return list(rows.all())


async def revoke_api_key(
    session: AsyncSession,
    cache: Cache,
    *,
    user_id: uuid.UUID,
    key_id: uuid.UUID,
    local_state: dict[str, Any] | None = None,
) -> ApiKey:
    """Revoke one of the user's keys (idempotent). Raises ``ApiKeyNotFound`` for keys of
    other users too. ``local_state`` (``runtime.state``) also drops this process's
    in-memory copy of the lookup."""
    row = await session.scalar(
        select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id).with_for_update()
    )
    if row is None:
        raise ApiKeyNotFound("No such API key")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await session.flush()
    cache_key, key_hash = api_key_cache_key(row.key_hash), row.key_hash

    async def forget() -> None:
        await cache.delete(cache_key)
        if local_state is not None:
            forget_local(local_state, key_hash)

    await forget()
    # Again after commit: a request between the delete and the commit may have
    # re-cached the key as still active.
    after_commit(session, forget)

    return row
