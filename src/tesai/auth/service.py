"""Sessions: access tokens and rotating refresh tokens (password checks: ``flows``).

A *session* starts at a login and is one refresh-token family. Each refresh uses up the
presented token and issues a new one of the same family. Presenting a used token means
it was stolen or replayed: the whole family is revoked, and that revocation is committed
even though the request answers 401.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.accounts.models import User
from tesai.audit.service import record
from tesai.auth.errors import RefreshTokenInvalid, RefreshTokenReused
from tesai.auth.models import RefreshToken
from tesai.auth.principal import hash_secret, revoked_family_key
from tesai.auth.tokens import DERIVED_SESSION_MAX_S, SigningKey, issue_access_token
from tesai.kit.cache import Cache
from tesai.kit.time import utcnow
from tesai.settings import Settings


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type


async def start_session(
    session: AsyncSession, key: SigningKey, settings: Settings, user: User
) -> TokenPair:
    """A new refresh family for ``user`` and its first token pair."""
    return await _issue(session, key, settings, user.id, uuid.uuid4())


async def _issue(
    session: AsyncSession,
    key: SigningKey,
    settings: Settings,
    user_id: uuid.UUID,
    family_id: uuid.UUID,
) -> TokenPair:
    refresh = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            user_id=user_id,
            family_id=family_id,
            token_hash=hash_secret(refresh),
            expires_at=utcnow() + timedelta(seconds=settings.refresh_token_ttl_s),
        )
    )
    await session.flush()
    access = issue_access_token(key, settings, user_id, family_id)
    return TokenPair(access, refresh, min(settings.access_token_ttl_s, 900))


async def _revoke_family(session: AsyncSession, family_id: uuid.UUID) -> None:
    now = utcnow()
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    await session.flush()


async def _mark_family_revoked(cache: Cache, settings: Settings, family_id: uuid.UUID) -> None:
    # Access tokens of the family die too: they are checked against this marker, and so are
    # the browser sessions derived from them (the Ray dashboard cookie), which live longer.
    ttl = max(min(settings.access_token_ttl_s, 900), DERIVED_SESSION_MAX_S)
    await cache.set(revoked_family_key(family_id), b"1", ttl_s=ttl + 60)


async def rotate_refresh_token(
    session: AsyncSession,
    key: SigningKey,
    settings: Settings,
    cache: Cache,
    token: str,
    *,
    ip: str | None = None,
) -> TokenPair:
    """Use up ``token`` and return the next pair of its family.

    Raises ``RefreshTokenInvalid`` (unknown, expired, revoked) or ``RefreshTokenReused``.
    On reuse this function COMMITS the family's revocation and its audit event before
    raising: the revocation must hold although the request fails.
    """
    row = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == hash_secret(token)).with_for_update()
    )
    if row is None:
        raise RefreshTokenInvalid("Unknown refresh token")
    if row.revoked_at is not None:
        raise RefreshTokenInvalid("Refresh token revoked")
    if row.used_at is not None:
        await _revoke_family(session, row.family_id)
        await record(
            session,
            action="auth.refresh_reuse",
            actor_user_id=row.user_id,
            subject_type="session",
            subject_id=row.family_id,
            ip=ip,
        )
        await session.commit()
        await _mark_family_revoked(cache, settings, row.family_id)
        raise RefreshTokenReused("Refresh token was already used; the session is revoked")
    if row.expires_at <= utcnow():
        raise RefreshTokenInvalid("Refresh token expired")
    user = await session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise RefreshTokenInvalid("Account not found or disabled")
    row.used_at = utcnow()
    return await _issue(session, key, settings, row.user_id, row.family_id)


async def logout(
    session: AsyncSession, cache: Cache, settings: Settings, token: str
) -> RefreshToken | None:
    """Revoke the family of ``token`` (refresh and access tokens). Unknown tokens are a
    no-op so logout is idempotent; returns the token row when it existed."""
    row = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == hash_secret(token))
    )
    if row is None:
        return None
    await _revoke_family(session, row.family_id)
    await _mark_family_revoked(cache, settings, row.family_id)
    return row


async def logout_family(
    session: AsyncSession, cache: Cache, settings: Settings, family_id: uuid.UUID
) -> None:
    """Revoke one session by its family id (the ``sid`` of an access token)."""
    await _revoke_family(session, family_id)
    await _mark_family_revoked(cache, settings, family_id)
