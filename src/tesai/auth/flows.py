"""The sign-in flows as the API runs them: check a credential, start a session, and leave
the audit trail, in one call per endpoint.

Each takes the request's session (its unit of work) and the ``Runtime`` (signing key,
cache, settings). A failed sign-in raises after recording ``auth.login_failed`` in its own
transaction, because the request's transaction rolls back.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from tesai.accounts.models import User
from tesai.audit.service import record, record_detached
from tesai.auth import apikeys, oidc, service, wallet
from tesai.auth.errors import (
    InvalidCredentials,
    MissingScope,
    OidcLoginFailed,
    WalletSignInFailed,
)
from tesai.auth.models import ApiKey, UserWallet
from tesai.auth.principal import Principal
from tesai.auth.service import TokenPair
from tesai.auth.tokens import runtime_signing_key
from tesai.errors import AppError, Unauthorized
from tesai.runtime import Runtime

T = TypeVar("T")


async def _or_record_failure(
    runtime: Runtime,
    step: Callable[[], Awaitable[T]],
    failure: type[AppError],
    *,
    action: str,
    ip: str | None,
    details: dict[str, Any],
) -> T:
    try:
        return await step()
    except failure as exc:
        await record_detached(
            runtime.sessionmaker,
            action=action,
            actor_kind="anonymous",
            ip=ip,
            details={**details, "reason": exc.message},
        )
        raise


async def _start(
    session: AsyncSession, runtime: Runtime, user: User, ip: str | None, details: dict[str, Any]
) -> TokenPair:
    if not user.is_active:
        raise InvalidCredentials("Account disabled")
    key = runtime_signing_key(runtime.state, runtime.settings)
    pair = await service.start_session(session, key, runtime.settings, user)
    await record(
        session,
        action="auth.login",
        actor_user_id=user.id,
        subject_type="user",
        subject_id=user.id,
        ip=ip,
        details=details,
    )
    return pair


async def signup(
    session: AsyncSession, *, email: str, password: str, roles: list[str], ip: str | None
) -> User:
    """Create a password account. Raises ``EmailTaken``."""
    user = await service.signup(session, email=email, password=password, roles=roles)
    await record(
        session,
        action="auth.signup",
        actor_user_id=user.id,
        subject_type="user",
        subject_id=user.id,
        ip=ip,
        details={"roles": user.roles, "method": "password"},
    )
    return user


async def password_login(
    session: AsyncSession, runtime: Runtime, *, email: str, password: str, ip: str | None
) -> TokenPair:
    """Raises ``InvalidCredentials``."""

    async def check() -> User:
        return await service.authenticate_password(session, email=email, password=password)

    user = await _or_record_failure(
        runtime,
        check,
        InvalidCredentials,
        action="auth.login_failed",
        ip=ip,
        details={"method": "password", "email": email.strip().lower()},
    )
    return await _start(session, runtime, user, ip, {"method": "password"})


async def refresh(
    session: AsyncSession, runtime: Runtime, *, refresh_token: str, ip: str | None
) -> TokenPair:
    """Raises ``RefreshTokenInvalid`` or ``RefreshTokenReused`` (family revoked)."""
    key = runtime_signing_key(runtime.state, runtime.settings)
    return await service.rotate_refresh_token(
        session, key, runtime.settings, runtime.cache, refresh_token, ip=ip
    )


async def logout(
    session: AsyncSession,
    runtime: Runtime,
    *,
    refresh_token: str | None,
    principal: Principal | None,
    ip: str | None,
) -> None:
    """End the session named by ``refresh_token``, else the caller's access-token session.

    Raises ``Unauthorized`` when neither is given. An unknown refresh token is a no-op.
    """
    if refresh_token:
        row = await service.logout(session, runtime.cache, runtime.settings, refresh_token)
        if row is None:
            return
        user_id, family_id = row.user_id, row.family_id
    elif principal is not None and principal.session_id is not None:
        user_id, family_id = principal.user.id, principal.session_id
        await service.logout_family(session, runtime.cache, runtime.settings, family_id)
    else:
        raise Unauthorized("Give the refresh token, or the access token of the session")
    await record(
        session,
        action="auth.logout",
        actor_user_id=user_id,
        subject_type="session",
        subject_id=family_id,
        ip=ip,
    )


async def create_api_key(
    session: AsyncSession,
    runtime: Runtime,
    principal: Principal,
    *,
    name: str,
    scopes: list[str],
    ip: str | None,
) -> tuple[ApiKey, str]:
    """Raises ``MissingScope`` when called with an API key (keys come from sessions only)
    and ``UnknownScope``."""
    if principal.kind == "api_key":
        raise MissingScope("API keys are created from a signed-in session", scope="session")
    row, key = await apikeys.create_api_key(
        session,
        user_id=principal.user.id,
        name=name,
        scopes=scopes,
        allowed_scopes=runtime.settings.api_key_scopes,
    )
    await record(
        session,
        action="auth.api_key_created",
        actor_user_id=principal.user.id,
        subject_type="api_key",
        subject_id=row.id,
        ip=ip,
        details={"prefix": row.prefix, "scopes": row.scopes, "name": row.name},
    )
    return row, key


async def revoke_api_key(
    session: AsyncSession, runtime: Runtime, user: User, key_id: uuid.UUID, *, ip: str | None
) -> ApiKey:
    """Raises ``ApiKeyNotFound``."""
    row = await apikeys.revoke_api_key(
        session, runtime.cache, user_id=user.id, key_id=key_id, local_state=runtime.state
    )
    await record(
        session,
        action="auth.api_key_revoked",
        actor_user_id=user.id,
        subject_type="api_key",
        subject_id=row.id,
        ip=ip,
        details={"prefix": row.prefix},
    )
    return row


async def _wallet_address(
    runtime: Runtime, message: str, signature: str, ip: str | None, action: str
) -> str:
    async def check() -> str:
        return await wallet.verify_signed_message(
            runtime.cache, runtime.settings, message, signature
        )

    return await _or_record_failure(
        runtime, check, WalletSignInFailed, action=action, ip=ip, details={"method": "wallet"}
    )


async def wallet_login(
    session: AsyncSession, runtime: Runtime, *, message: str, signature: str, ip: str | None
) -> TokenPair:
    """Raises ``WalletSignInFailed``; creates a customer on the wallet's first sign-in."""
    address = await _wallet_address(runtime, message, signature, ip, "auth.login_failed")
    user, created = await wallet.sign_in_wallet(session, address)
    return await _start(
        session, runtime, user, ip, {"method": "wallet", "address": address, "created": created}
    )


async def wallet_link(
    session: AsyncSession,
    runtime: Runtime,
    user: User,
    *,
    message: str,
    signature: str,
    ip: str | None,
) -> UserWallet:
    """Raises ``WalletSignInFailed`` or ``WalletAlreadyLinked``."""
    address = await _wallet_address(runtime, message, signature, ip, "auth.wallet_link_failed")
    linked = await wallet.link_wallet(session, user.id, address)
    await record(
        session,
        action="auth.wallet_linked",
        actor_user_id=user.id,
        subject_type="wallet",
        subject_id=address,
        ip=ip,
    )
    return linked


async def oidc_callback(
    session: AsyncSession,
    runtime: Runtime,
    provider: str,
    *,
    code: str | None,
    state: str | None,
    error: str | None,
    ip: str | None,
) -> tuple[TokenPair, str | None]:
    """Our tokens, and the console path the login was started for (``None``: answer JSON).

    Raises ``OidcLoginFailed``, ``UnknownOidcProvider`` or ``OidcProviderUnavailable``.
    """

    async def check() -> oidc.OidcLogin:
        if error or not code or not state:
            raise OidcLoginFailed(f"Identity provider login failed: {error or 'no code'}")
        return await oidc.finish_login(runtime, provider, code=code, state=state)

    login = await _or_record_failure(
        runtime,
        check,
        OidcLoginFailed,
        action="auth.login_failed",
        ip=ip,
        details={"method": "oidc", "provider": provider},
    )
    user, created = await oidc.user_for_identity(session, login.claims)
    pair = await _start(
        session, runtime, user, ip, {"method": "oidc", "provider": provider, "created": created}
    )
    return pair, login.return_to
