"""OIDC login, for real, through a local provider on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from tesai.audit.models import AuditEvent
from tesai.auth.models import OidcIdentity
from tesai.runtime import Runtime
from tesai.settings import OIDCProvider, Settings
from tests.auth.oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    LocalOidcProvider,
    free_socket,
    serve_oidc_provider,
)
from tests.fixtures.auth import MakeUser


@pytest.fixture
def idp(settings: Settings) -> Iterator[LocalOidcProvider]:
    with serve_oidc_provider() as provider:
        settings.oidc_providers = [
            OIDCProvider(
                name="local",
                issuer=provider.issuer,
                client_id=CLIENT_ID,
                client_secret=SecretStr(CLIENT_SECRET),
            )
        ]
        settings.oidc_redirect_base = "http://testserver"
        yield provider


async def oidc_login(client: httpx.AsyncClient) -> httpx.Response:
    """Browser steps: our login → provider /authorize → back to our callback."""
    start = await client.get("/api/v1/auth/oidc/local/login")
    assert start.status_code == 302, start.text
    async with httpx.AsyncClient() as browser:
        at_idp = await browser.get(start.headers["location"])
    assert at_idp.status_code == 302, at_idp.text
    callback = at_idp.headers["location"]
    assert callback.startswith("http://testserver/api/v1/auth/oidc/local/callback?")
    return await client.get(callback.removeprefix("http://testserver"))


async def me(client: httpx.AsyncClient, tokens: dict[str, str]) -> dict[str, str]:
    r = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert r.status_code == 200
    body: dict[str, str] = r.json()
    return body


async def test_login_creates_then_finds_user(
    client: httpx.AsyncClient, idp: LocalOidcProvider, runtime: Runtime
) -> None:
    start = await client.get("/api/v1/auth/oidc/local/login")
    location = start.headers["location"]
    for part in ("code_challenge_method=S256", "nonce=", "state=", f"client_id={CLIENT_ID}"):
        assert part in location

    first = await oidc_login(client)
    assert first.status_code == 200, first.text
    user = await me(client, first.json())
    assert user["email"] == "oidc-user@example.com"
    again = await oidc_login(client)
    assert (await me(client, again.json()))["id"] == user["id"]
    async with runtime.sessionmaker() as s:
        identities = (await s.scalars(select(OidcIdentity))).all()
        logins = (
            await s.scalars(select(AuditEvent).where(AuditEvent.action == "auth.login"))
        ).all()
    assert [(i.provider, i.subject) for i in identities] == [("local", "user-1")]
    assert [e.details["method"] for e in logins] == ["oidc", "oidc"]


async def test_verified_email_links_existing_account(
    client: httpx.AsyncClient, idp: LocalOidcProvider, make_user: MakeUser
) -> None:
    existing, _ = await make_user(email="linked@example.com")
    idp.next_user = {"sub": "abc", "email": "linked@example.com", "email_verified": True}
    r = await oidc_login(client)
    assert (await me(client, r.json()))["id"] == str(existing.id)


async def test_unverified_email_does_not_link(
    client: httpx.AsyncClient, idp: LocalOidcProvider, make_user: MakeUser
) -> None:
    existing, _ = await make_user(email="victim@example.com")
    idp.next_user = {"sub": "mallory", "email": "victim@example.com", "email_verified": False}
    r = await oidc_login(client)
    assert r.status_code == 200
    user = await me(client, r.json())
    assert user["id"] != str(existing.id)
    assert user["email"] is None


@pytest.mark.parametrize("misbehave", ["wrong_aud", "wrong_nonce", "wrong_key", "expired"])
async def test_bad_id_tokens_rejected(
    client: httpx.AsyncClient, idp: LocalOidcProvider, runtime: Runtime, misbehave: str
) -> None:
    idp.misbehave = misbehave
    r = await oidc_login(client)
    assert r.status_code == 401
    assert r.json()["code"] == "oidc_login_failed"
    async with runtime.sessionmaker() as s:
        failed = await s.scalar(select(AuditEvent).where(AuditEvent.action == "auth.login_failed"))
    assert failed is not None
    assert failed.details["provider"] == "local"


async def test_state_is_single_use_and_checked(
    client: httpx.AsyncClient, idp: LocalOidcProvider
) -> None:
    start = await client.get("/api/v1/auth/oidc/local/login")
    async with httpx.AsyncClient() as browser:
        callback = (await browser.get(start.headers["location"])).headers["location"]
    path = callback.removeprefix("http://testserver")
    assert (await client.get(path)).status_code == 200
    replay = await client.get(path)
    assert replay.status_code == 401
    forged = await client.get("/api/v1/auth/oidc/local/callback?code=x&state=made-up")
    assert forged.status_code == 401
    denied = await client.get("/api/v1/auth/oidc/local/callback?error=access_denied")
    assert denied.status_code == 401


async def test_unknown_provider_is_404(client: httpx.AsyncClient, idp: LocalOidcProvider) -> None:
    r = await client.get("/api/v1/auth/oidc/nope/login")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


async def test_unreachable_provider_is_503_problem(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    sock = free_socket()  # bound, never listening: connections are refused
    try:
        issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings.oidc_providers = [OIDCProvider(name="down", issuer=issuer, client_id="x")]
        r = await client.get("/api/v1/auth/oidc/down/login")
    finally:
        sock.close()
    assert r.status_code == 503
    assert r.json()["code"] == "oidc_provider_unavailable"
