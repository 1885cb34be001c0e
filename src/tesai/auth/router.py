"""Sign-in flows and credentials: /api/v1/auth/…"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import RedirectResponse

from tesai.audit.service import record, record_detached
from tesai.auth import apikeys, oidc, service, wallet
from tesai.auth.deps import (
    CurrentPrincipal,
    CurrentUser,
    OptionalPrincipal,
    RuntimeDep,
    request_ip,
)
from tesai.auth.errors import (
    InvalidCredentials,
    MissingScope,
    OidcLoginFailed,
    WalletSignInFailed,
)
from tesai.auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    LoginRequest,
    LogoutRequest,
    RefreshRequest,
    SignupRequest,
    TokenResponse,
    UserOut,
    WalletNonceRequest,
    WalletNonceResponse,
    WalletOut,
    WalletVerifyRequest,
)
from tesai.auth.tokens import runtime_signing_key
from tesai.db import SessionDep
from tesai.errors import Unauthorized
from tesai.runtime import Runtime

router = APIRouter(prefix="/auth", tags=["auth"])


def tokens_out(pair: service.TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
    )


@router.post("/signup", status_code=status.HTTP_201_CREATED)
async def signup(body: SignupRequest, session: SessionDep, request: Request) -> UserOut:
    """Create an account with email and password (roles: customer and/or provider)."""
    user = await service.signup(session, email=body.email, password=body.password, roles=body.roles)
    await record(
        session,
        action="auth.signup",
        actor_user_id=user.id,
        subject_type="user",
        subject_id=user.id,
        ip=request_ip(request),
        details={"roles": user.roles, "method": "password"},
    )
    return UserOut.of(user)


@router.post("/login")
async def login(
    body: LoginRequest, session: SessionDep, runtime: RuntimeDep, request: Request
) -> TokenResponse:
    """Email and password → access and refresh tokens."""
    ip = request_ip(request)
    try:
        user = await service.authenticate_password(
            session, email=body.email, password=body.password
        )
    except InvalidCredentials:
        # The request rolls back, so the failure is logged in its own transaction.
        await record_detached(
            runtime.sessionmaker,
            action="auth.login_failed",
            actor_kind="anonymous",
            ip=ip,
            details={"method": "password", "email": body.email.lower()},
        )
        raise
    key = runtime_signing_key(runtime.state, runtime.settings)
    pair = await service.start_session(session, key, runtime.settings, user)
    await record(
        session,
        action="auth.login",
        actor_user_id=user.id,
        subject_type="user",
        subject_id=user.id,
        ip=ip,
        details={"method": "password"},
    )
    return tokens_out(pair)


@router.post("/refresh")
async def refresh(
    body: RefreshRequest, session: SessionDep, runtime: RuntimeDep, request: Request
) -> TokenResponse:
    """Trade a refresh token for a new pair; the presented token is used up."""
    key = runtime_signing_key(runtime.state, runtime.settings)
    pair = await service.rotate_refresh_token(
        session, key, runtime.settings, runtime.cache, body.refresh_token, ip=request_ip(request)
    )
    return tokens_out(pair)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    body: LogoutRequest,
    session: SessionDep,
    runtime: RuntimeDep,
    request: Request,
    principal: OptionalPrincipal,
) -> None:
    """End a session: by its refresh token, or (without one) by the access token in the
    Authorization header. Every token of the session stops working."""
    if body.refresh_token:
        row = await service.logout(session, runtime.cache, runtime.settings, body.refresh_token)
        user_id, family_id = (row.user_id, row.family_id) if row else (None, None)
    elif principal is not None and principal.session_id is not None:
        user_id, family_id = principal.user.id, principal.session_id
        await service.logout_family(session, runtime.cache, runtime.settings, family_id)
    else:
        raise Unauthorized("Give the refresh token, or the access token of the session")
    if family_id is not None:
        await record(
            session,
            action="auth.logout",
            actor_user_id=user_id,
            subject_type="session",
            subject_id=family_id,
            ip=request_ip(request),
        )


@router.get("/me")
async def me(user: CurrentUser) -> UserOut:
    """The signed-in user."""
    return UserOut.of(user)


@router.post("/api-keys", status_code=status.HTTP_201_CREATED)
async def create_api_key(
    body: ApiKeyCreate,
    principal: CurrentPrincipal,
    session: SessionDep,
    runtime: RuntimeDep,
    request: Request,
) -> ApiKeyCreated:
    """Create a scoped API key. The key is in this response only."""
    if principal.kind == "api_key":
        # A key must not mint keys wider than itself (or at all): sessions only.
        raise MissingScope("API keys are created from a signed-in session", scope="session")
    row, key = await apikeys.create_api_key(
        session,
        user_id=principal.user.id,
        name=body.name,
        scopes=body.scopes,
        allowed_scopes=runtime.settings.api_key_scopes,
    )
    await record(
        session,
        action="auth.api_key_created",
        actor_user_id=principal.user.id,
        subject_type="api_key",
        subject_id=row.id,
        ip=request_ip(request),
        details={"prefix": row.prefix, "scopes": row.scopes, "name": row.name},
    )
    return ApiKeyCreated(**ApiKeyOut.model_validate(row).model_dump(), key=key)


@router.get("/api-keys")
async def list_api_keys(user: CurrentUser, session: SessionDep) -> list[ApiKeyOut]:
    """The user's API keys (without secrets), revoked ones included."""
    return [ApiKeyOut.model_validate(k) for k in await apikeys.list_api_keys(session, user.id)]


@router.delete("/api-keys/{key_id}")
async def revoke_api_key(
    key_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    runtime: RuntimeDep,
    request: Request,
) -> ApiKeyOut:
    """Revoke a key; it stops working at once."""
    row = await apikeys.revoke_api_key(session, runtime.cache, user_id=user.id, key_id=key_id)
    await record(
        session,
        action="auth.api_key_revoked",
        actor_user_id=user.id,
        subject_type="api_key",
        subject_id=row.id,
        ip=request_ip(request),
        details={"prefix": row.prefix},
    )
    return ApiKeyOut.model_validate(row)


@router.post("/wallet/nonce")
async def wallet_nonce(body: WalletNonceRequest, runtime: RuntimeDep) -> WalletNonceResponse:
    """Start a Solana sign-in: the message to sign, valid once for a few minutes."""
    message = await wallet.issue_nonce(runtime.cache, runtime.settings, body.address)
    return WalletNonceResponse(
        nonce=message.nonce, message=message.text(), expires_at=message.expiration_time
    )


async def _verified_address(
    runtime: Runtime, body: WalletVerifyRequest, ip: str | None, action: str
) -> str:
    try:
        return await wallet.verify_signed_message(
            runtime.cache, runtime.settings, body.message, body.signature
        )
    except WalletSignInFailed as exc:
        await record_detached(
            runtime.sessionmaker,
            action=action,
            actor_kind="anonymous",
            ip=ip,
            details={"method": "wallet", "reason": exc.message},
        )
        raise


@router.post("/wallet/verify")
async def wallet_verify(
    body: WalletVerifyRequest, session: SessionDep, runtime: RuntimeDep, request: Request
) -> TokenResponse:
    """Finish a Solana sign-in with the signed message; creates the account the first time."""
    ip = request_ip(request)
    address = await _verified_address(runtime, body, ip, "auth.login_failed")
    user, created = await wallet.sign_in_wallet(session, address)
    if not user.is_active:
        raise InvalidCredentials("Account disabled")
    pair = await service.start_session(
        session, runtime_signing_key(runtime.state, runtime.settings), runtime.settings, user
    )
    await record(
        session,
        action="auth.login",
        actor_user_id=user.id,
        subject_type="user",
        subject_id=user.id,
        ip=ip,
        details={"method": "wallet", "address": address, "created": created},
    )
    return tokens_out(pair)


@router.post("/wallet/link", status_code=status.HTTP_201_CREATED)
async def wallet_link(
    body: WalletVerifyRequest,
    user: CurrentUser,
    session: SessionDep,
    runtime: RuntimeDep,
    request: Request,
) -> WalletOut:
    """Link the wallet that signed the message to the signed-in account."""
    ip = request_ip(request)
    address = await _verified_address(runtime, body, ip, "auth.wallet_link_failed")
    linked = await wallet.link_wallet(session, user.id, address)
    await record(
        session,
        action="auth.wallet_linked",
        actor_user_id=user.id,
        subject_type="wallet",
        subject_id=address,
        ip=ip,
    )
    return WalletOut.model_validate(linked)


@router.get("/wallets")
async def wallets(user: CurrentUser, session: SessionDep) -> list[WalletOut]:
    """Wallets linked to the signed-in account."""
    return [WalletOut.model_validate(w) for w in await wallet.list_wallets(session, user.id)]


@router.get(
    "/oidc/{provider}/login",
    status_code=status.HTTP_302_FOUND,
    response_class=RedirectResponse,
    responses={302: {"description": "Redirect to the identity provider"}},
)
async def oidc_login(provider: str, runtime: RuntimeDep) -> RedirectResponse:
    """Start an OIDC login: redirects to the provider (code flow, PKCE, nonce)."""
    return RedirectResponse(await oidc.start_login(runtime, provider), status_code=302)


@router.get("/oidc/{provider}/callback")
async def oidc_callback(
    provider: str,
    session: SessionDep,
    runtime: RuntimeDep,
    request: Request,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=256)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
) -> TokenResponse:
    """Where the provider sends the browser back; answers with our tokens."""
    ip = request_ip(request)
    try:
        if error or not code or not state:
            raise OidcLoginFailed(f"Identity provider login failed: {error or 'no code'}")
        identity = await oidc.finish_login(runtime, provider, code=code, state=state)
    except OidcLoginFailed as exc:
        await record_detached(
            runtime.sessionmaker,
            action="auth.login_failed",
            actor_kind="anonymous",
            ip=ip,
            details={"method": "oidc", "provider": provider, "reason": exc.message},
        )
        raise
    user, created = await oidc.user_for_identity(session, identity)
    if not user.is_active:
        raise InvalidCredentials("Account disabled")
    pair = await service.start_session(
        session, runtime_signing_key(runtime.state, runtime.settings), runtime.settings, user
    )
    await record(
        session,
        action="auth.login",
        actor_user_id=user.id,
        subject_type="user",
        subject_id=user.id,
        ip=ip,
        details={"method": "oidc", "provider": provider, "created": created},
    )
    return tokens_out(pair)
