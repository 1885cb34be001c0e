"""Sign-in flows and credentials: /api/v1/auth/…"""

from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import RedirectResponse

from tesai.auth import apikeys, flows, oidc, wallet
from tesai.auth.deps import (
    CurrentPrincipal,
    CurrentUser,
    OptionalPrincipal,
    RuntimeDep,
    request_ip,
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
from tesai.auth.service import TokenPair
from tesai.db import SessionDep

router = APIRouter(prefix="/auth", tags=["auth"])


def tokens_out(pair: TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
    )


@router.post("/signup", status_code=status.HTTP_201_CREATED)
async def signup(
    body: SignupRequest, session: SessionDep, runtime: RuntimeDep, request: Request
) -> UserOut:
    """Create an account with email and password (roles: customer and/or provider)."""
    user = await flows.signup(
        session,
        runtime,
        email=body.email,
        password=body.password,
        roles=list(body.roles),
        ip=request_ip(request),
    )
    return UserOut.of(user)


@router.post("/login")
async def login(
    body: LoginRequest, session: SessionDep, runtime: RuntimeDep, request: Request
) -> TokenResponse:
    """Email and password → access and refresh tokens."""
    pair = await flows.password_login(
        session, runtime, email=body.email, password=body.password, ip=request_ip(request)
    )
    return tokens_out(pair)


@router.post("/refresh")
async def refresh(
    body: RefreshRequest, session: SessionDep, runtime: RuntimeDep, request: Request
) -> TokenResponse:
    """Trade a refresh token for a new pair; the presented token is used up. Presenting
    a used token again revokes its whole session."""
    pair = await flows.refresh(
        session, runtime, refresh_token=body.refresh_token, ip=request_ip(request)
    )
    return tokens_out(pair)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    session: SessionDep,
    runtime: RuntimeDep,
    request: Request,
    principal: OptionalPrincipal,
    body: LogoutRequest | None = None,
) -> None:
    """End a session: by its refresh token, or (without one) by the access token in the
    Authorization header. Every token of the session stops working."""
    await flows.logout(
        session,
        runtime,
        refresh_token=body.refresh_token if body else None,
        principal=principal,
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
    """Create a scoped API key (from a signed-in session). The key is in this response only."""
    row, key = await flows.create_api_key(
        session, runtime, principal, name=body.name, scopes=body.scopes, ip=request_ip(request)
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
    row = await flows.revoke_api_key(session, runtime, user, key_id, ip=request_ip(request))
    return ApiKeyOut.model_validate(row)


@router.post("/wallet/nonce")
async def wallet_nonce(body: WalletNonceRequest, runtime: RuntimeDep) -> WalletNonceResponse:
    """Start a Solana sign-in: the message to sign, valid once for a few minutes."""
    message = await wallet.issue_nonce(runtime.cache, runtime.settings, body.address)
    return WalletNonceResponse(
        nonce=message.nonce, message=message.text(), expires_at=message.expiration_time
    )


@router.post("/wallet/verify")
async def wallet_verify(
    body: WalletVerifyRequest, session: SessionDep, runtime: RuntimeDep, request: Request
) -> TokenResponse:
    """Finish a Solana sign-in with the signed message; creates the account the first time."""
    pair = await flows.wallet_login(
        session, runtime, message=body.message, signature=body.signature, ip=request_ip(request)
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
    linked = await flows.wallet_link(
        session,
        runtime,
        user,
        message=body.message,
        signature=body.signature,
        ip=request_ip(request),
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
    responses={
        302: {"description": "Redirect to the identity provider"},
        400: {"description": "return_to is not a path on this site"},
    },
)
async def oidc_login(
    provider: str,
    runtime: RuntimeDep,
    return_to: Annotated[
        str | None,
        Query(
            description="A path on this site (e.g. /app): the callback then sends the browser "
            "to the console's /auth/callback page instead of answering with JSON."
        ),
    ] = None,
) -> RedirectResponse:
    """Start an OIDC login: redirects to the provider (code flow, PKCE, nonce)."""
    url = await oidc.start_login(runtime, provider, return_to=return_to)
    return RedirectResponse(url, status_code=302)


@router.get(
    "/oidc/{provider}/callback",
    response_model=TokenResponse,
    responses={
        303: {
            "description": "For a login started with return_to: to the console's "
            "/auth/callback, tokens in the URL fragment"
        }
    },
)
async def oidc_callback(
    provider: str,
    session: SessionDep,
    runtime: RuntimeDep,
    request: Request,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=256)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
) -> TokenResponse | RedirectResponse:
    """Where the provider sends the browser back; answers with our tokens."""
    pair, return_to = await flows.oidc_callback(
        session, runtime, provider, code=code, state=state, error=error, ip=request_ip(request)
    )
    tokens = tokens_out(pair)
    if return_to is None:
        return tokens
    # The fragment never reaches a server (no access log, no Referer); no-store keeps the
    # redirect out of caches.
    fragment = urlencode(
        {
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "expires_in": tokens.expires_in,
            "next": return_to,
        }
    )
    return RedirectResponse(
        f"/auth/callback#{fragment}",
        status_code=status.HTTP_303_SEE_OTHER,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )
