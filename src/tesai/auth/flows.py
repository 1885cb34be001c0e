"""The sign-in flows as the API runs them: check a credential, start a session, and leave
the audit trail, in one call per endpoint.

Each takes the request's session (its unit of work) and the ``Runtime`` (signing key,
cache, settings). A failed sign-in raises after committing its ``auth.login_failed``
record, because the request's transaction rolls back. Password flows never hash inside a
transaction (``password_login``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from tesai.accounts import service as accounts
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
from tesai.auth.passwords import HashGate, HostSlots, default_concurrency
from tesai.auth.principal import Principal
from tesai.auth.service import TokenPair
from tesai.auth.throttle import spend_login_attempt
from tesai.auth.tokens import runtime_signing_key
from tesai.errors import AppError, Unauthorized
from tesai.runtime import Runtime

T = TypeVar("T")

_HASH_GATE = "auth.hash_gate"


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


def hash_gate(runtime: Runtime) -> HashGate:
    """This process's bound on password hashing (one per runtime, made on first use; the
    host-wide slots live under ``TESAI_HOME``, which a host's API processes share)."""
    gate = runtime.state.get(_HASH_GATE)
    if gate is None:
        settings = runtime.settings
        concurrency = settings.password_hash_concurrency or default_concurrency()
        gate = HashGate(
            concurrency,
            settings.password_hash_queue,
            HostSlots(settings.home / "locks", concurrency),
        )
        runtime.state[_HASH_GATE] = gate
    assert isinstance(gate, HashGate)
    return gate


async def signup(
    session: AsyncSession,
    runtime: Runtime,
    *,
    email: str,
    password: str,
    roles: list[str],
    ip: str | None,
) -> User:
    """Create a password account. Raises ``EmailTaken`` or ``PasswordCheckBusy``."""
    if await accounts.get_user_by_email(session, email) is not None:
        raise accounts.EmailTaken("An account with this email already exists")
    # The hash runs between two short transactions, never inside one (see password_login).
    await session.commit()
    password_hash = await hash_gate(runtime).hash(password)
    user = await accounts.create_user(
        session, email=email, password_hash=password_hash, roles=roles
    )
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
    """Check an email and password and start a session.

    Raises ``LoginThrottled`` (429: too many tries from this address or at this account),
    ``PasswordCheckBusy`` (503: hashing saturated) or ``InvalidCredentials`` (the same
    answer, after the same work, for an unknown email and a wrong password).

    The argon2 check (~0.2 s of CPU) runs with no database connection held: the user is
    read in a transaction of its own, committed before hashing, and the outcome is written
    afterwards; reading and hashing wait for a turn of the process's ``HashGate``. Holding
    the pooled connection through the hash, plus a second one for the failure's audit row,
    let 50 parallel wrong passwords take the whole pool from everybody. A failed try's
    audit row is committed before the request answers 401 (its own transaction would roll
    back otherwise).
    """
    await spend_login_attempt(runtime.cache, runtime.settings, ip=ip, email=email)
    gate = hash_gate(runtime)
    async with gate.turn():  # a storm reaches the database one turn at a time too
        user = await accounts.get_user_by_email(session, email)
        await session.commit()  # release the connection; expire_on_commit=False keeps `user`
        ok = await gate.verify_in_turn(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        await record(
            session,
            action="auth.login_failed",
            actor_kind="anonymous",
            ip=ip,
            details={
                "method": "password",
                "email": accounts.normalize_email(email),
                "reason": "Wrong email or password",
            },
        )
        await session.commit()
        raise InvalidCredentials("Wrong email or password")
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
