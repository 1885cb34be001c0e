"""OAuth2 / OpenID Connect login with the providers in ``settings.oidc_providers``.

Flow: ``start_login`` stores ``state`` → (provider, nonce, PKCE verifier, return_to) in the
cache and returns the provider's authorization URL (authorization code + PKCE S256 + nonce).
``return_to`` is set when the console started the login: a same-origin path checked by
``safe_return_to``, so the callback can send the browser back to the console (never to
another site). ``finish_login`` consumes the state once, exchanges the code (authlib),
and verifies the ID token: signature against the provider's JWKS (refetched once on an
unknown ``kid``), issuer, audience, expiry and nonce. Provider metadata is discovered from
``<issuer>/.well-known/openid-configuration`` and kept in ``runtime.state``.

Network calls happen here, before the request touches the database.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import orjson
from authlib.integrations.httpx_client import AsyncOAuth2Client
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.accounts import service as accounts
from tesai.accounts.models import User
from tesai.auth.errors import (
    InvalidReturnTo,
    OidcLoginFailed,
    OidcProviderUnavailable,
    UnknownOidcProvider,
)
from tesai.auth.models import OidcIdentity
from tesai.runtime import Runtime
from tesai.settings import OIDCProvider

# Asymmetric algorithms only: an HS* ID token would be keyed with our client secret.
ALLOWED_ALGORITHMS = {"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"}
HTTP_TIMEOUT_S = 10.0
RETURN_TO_MAX_LENGTH = 512


@dataclass(frozen=True)
class OidcClaims:
    provider: str
    subject: str
    email: str | None
    email_verified: bool


@dataclass(frozen=True)
class OidcLogin:
    """A finished login: who the provider vouched for, and where the console wants to land
    (``None`` for a login not started by the console: answer with JSON tokens)."""

    claims: OidcClaims
    return_to: str | None


def safe_return_to(value: str) -> str:
    """``value`` when it is a path on this origin ("/app/billing?tab=1").

    Raises ``InvalidReturnTo`` for anything a browser could read as another site: a scheme
    or host ("https://evil.example", "//evil"), backslashes ("/\\evil"), control
    characters or whitespace, or more than ``RETURN_TO_MAX_LENGTH`` characters.
    """
    if not value.startswith("/") or value.startswith("//") or len(value) > RETURN_TO_MAX_LENGTH:
        raise InvalidReturnTo("return_to must be a path on this site, such as /app")
    if "\\" in value or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidReturnTo("return_to must be a path on this site, such as /app")
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        raise InvalidReturnTo("return_to must be a path on this site, such as /app")
    return value


def provider_config(runtime: Runtime, name: str) -> OIDCProvider:
    """Raises ``UnknownOidcProvider``."""
    for provider in runtime.settings.oidc_providers:
        if provider.name == name:
            return provider
    raise UnknownOidcProvider(f"No OIDC provider named {name!r}")


def redirect_uri(runtime: Runtime, name: str) -> str:
    base = runtime.settings.oidc_redirect_base.rstrip("/")
    return f"{base}/api/v1/auth/oidc/{name}/callback"


def _state_key(state: str) -> str:
    return f"auth:oidc:{state}"


async def _get_json(url: str) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
            response = await http.get(url)
            response.raise_for_status()
            data = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise OidcProviderUnavailable(f"Identity provider unreachable or invalid: {url}") from exc
    if not isinstance(data, dict):
        raise OidcProviderUnavailable(f"Identity provider sent no JSON object: {url}")
    return data


async def _metadata(runtime: Runtime, provider: OIDCProvider) -> dict[str, Any]:
    cache: dict[str, dict[str, Any]] = runtime.state.setdefault("auth.oidc_metadata", {})
    meta = cache.get(provider.name)
    if meta is None:
        meta = await _get_json(provider.issuer.rstrip("/") + "/.well-known/openid-configuration")
        if meta.get("issuer") != provider.issuer:
            raise OidcProviderUnavailable("Provider metadata names another issuer")
        cache[provider.name] = meta
    return meta


async def _jwks(runtime: Runtime, provider: OIDCProvider, *, refresh: bool) -> jwt.PyJWKSet:
    cache: dict[str, jwt.PyJWKSet] = runtime.state.setdefault("auth.oidc_jwks", {})
    keys = cache.get(provider.name)
    if keys is None or refresh:
        meta = await _metadata(runtime, provider)
        try:
            keys = jwt.PyJWKSet.from_dict(await _get_json(str(meta["jwks_uri"])))
        except (KeyError, jwt.PyJWTError) as exc:
            raise OidcProviderUnavailable("Provider JWKS unusable") from exc
        cache[provider.name] = keys
    return keys


def _client(runtime: Runtime, provider: OIDCProvider) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=provider.client_id,
        client_secret=provider.client_secret.get_secret_value() or None,
        scope=provider.scopes,
        redirect_uri=redirect_uri(runtime, provider.name),
        code_challenge_method="S256",
        timeout=HTTP_TIMEOUT_S,
    )


async def start_login(runtime: Runtime, name: str, *, return_to: str | None = None) -> str:
    """The URL to send the browser to.

    Raises ``InvalidReturnTo`` (before anything is stored), ``UnknownOidcProvider`` or
    ``OidcProviderUnavailable``.
    """
    if return_to is not None:
        return_to = safe_return_to(return_to)
    provider = provider_config(runtime, name)
    meta = await _metadata(runtime, provider)
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier = secrets.token_urlsafe(48)
    await runtime.cache.set(
        _state_key(state),
        orjson.dumps(
            {"provider": name, "nonce": nonce, "verifier": verifier, "return_to": return_to}
        ),
        ttl_s=runtime.settings.oidc_state_ttl_s,
    )
    async with _client(runtime, provider) as client:
        url, _ = client.create_authorization_url(
            str(meta["authorization_endpoint"]),
            state=state,
            nonce=nonce,
            code_verifier=verifier,
        )
    return str(url)


async def _verify_id_token(
    runtime: Runtime, provider: OIDCProvider, id_token: str, nonce: str
) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError as exc:
        raise OidcLoginFailed("Malformed ID token") from exc
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise OidcLoginFailed("ID token algorithm not accepted")
    kid = header.get("kid")
    key = None
    for refresh in (False, True):
        keys = await _jwks(runtime, provider, refresh=refresh)
        candidates = [k for k in keys.keys if kid is None or k.key_id == kid]
        if candidates:
            key = candidates[0]
            break
    if key is None:
        raise OidcLoginFailed("ID token signed with an unknown key")
    try:
        claims: dict[str, Any] = jwt.decode(
            id_token,
            key,
            algorithms=[alg],
            audience=provider.client_id,
            issuer=provider.issuer,
            options={"require": ["iss", "aud", "sub", "exp", "iat"]},
        )
    except jwt.PyJWTError as exc:
        raise OidcLoginFailed(f"ID token rejected: {exc}") from exc
    if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
        raise OidcLoginFailed("ID token nonce does not match the login")
    return claims


async def finish_login(runtime: Runtime, name: str, *, code: str, state: str) -> OidcLogin:
    """Consume the login state, exchange the code, verify the ID token.

    Raises ``OidcLoginFailed`` for an unknown/used state, a failed exchange or a bad ID token.
    """
    provider = provider_config(runtime, name)
    stored = await runtime.cache.pop(_state_key(state))
    if stored is None:
        raise OidcLoginFailed("Login state unknown, expired or already used")
    saved = orjson.loads(stored)
    if saved["provider"] != name:
        raise OidcLoginFailed("Login state belongs to another provider")
    meta = await _metadata(runtime, provider)
    try:
        async with _client(runtime, provider) as client:
            token = await client.fetch_token(
                str(meta["token_endpoint"]), code=code, code_verifier=saved["verifier"]
            )
    except httpx.HTTPError as exc:
        raise OidcProviderUnavailable("Identity provider unreachable") from exc
    except Exception as exc:  # authlib raises several unrelated types (OAuthError, ValueError)
        raise OidcLoginFailed("Code exchange with the identity provider failed") from exc
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise OidcLoginFailed("Identity provider returned no ID token")
    claims = await _verify_id_token(runtime, provider, id_token, saved["nonce"])
    email = claims.get("email")
    return_to = saved.get("return_to")
    return OidcLogin(
        claims=OidcClaims(
            provider=name,
            subject=str(claims["sub"]),
            email=email if isinstance(email, str) else None,
            email_verified=claims.get("email_verified") is True,
        ),
        return_to=return_to if isinstance(return_to, str) else None,
    )


async def user_for_identity(session: AsyncSession, identity: OidcClaims) -> tuple[User, bool]:
    """The user linked to (provider, subject); else the user with the same *verified*
    email, now linked; else a new customer. Returns (user, created)."""
    linked = await session.scalar(
        select(User)
        .join(OidcIdentity, OidcIdentity.user_id == User.id)
        .where(
            OidcIdentity.provider == identity.provider,
            OidcIdentity.subject == identity.subject,
        )
    )
    if linked is not None:
        return linked, False
    verified_email = identity.email if identity.email_verified else None
    user = None
    if verified_email is not None:
        user = await accounts.get_user_by_email(session, verified_email)
    created = user is None
    if user is None:
        user = await accounts.create_user(session, email=verified_email, roles=("customer",))
    session.add(
        OidcIdentity(
            user_id=user.id,
            provider=identity.provider,
            subject=identity.subject,
            email=identity.email,
        )
    )
    await session.flush()
    return user, created
