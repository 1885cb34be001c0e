"""OIDC login started from the console: the callback sends the browser back to the console
with the tokens in the URL fragment; API clients that gave no ``return_to`` still get JSON."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from tesai.audit.models import AuditEvent
from tesai.auth.errors import InvalidReturnTo
from tesai.auth.oidc import safe_return_to
from tesai.runtime import Runtime
from tests.auth.oidc_provider import LocalOidcProvider
from tests.auth.test_oidc import idp, me

__all__ = ["idp"]  # the fixture, shared with test_oidc


async def console_login(client: httpx.AsyncClient, return_to: str) -> httpx.Response:
    start = await client.get("/api/v1/auth/oidc/local/login", params={"return_to": return_to})
    assert start.status_code == 302, start.text
    async with httpx.AsyncClient() as browser:
        at_idp = await browser.get(start.headers["location"])
    callback = at_idp.headers["location"]
    return await client.get(callback.removeprefix("http://testserver"))


async def test_console_login_redirects_with_tokens_in_the_fragment(
    client: httpx.AsyncClient, idp: LocalOidcProvider
) -> None:
    r = await console_login(client, "/app/billing?tab=deposits")
    assert r.status_code == 303, r.text
    assert r.headers["cache-control"] == "no-store"
    location = urlsplit(r.headers["location"])
    # Relative, same origin, and nothing secret in the path or query (servers log those).
    assert (location.scheme, location.netloc, location.path, location.query) == (
        "",
        "",
        "/auth/callback",
        "",
    )
    fragment = {k: v[0] for k, v in parse_qs(location.fragment).items()}
    assert fragment["next"] == "/app/billing?tab=deposits"
    assert int(fragment["expires_in"]) > 0
    user = await me(client, fragment)
    assert user["email"] == "oidc-user@example.com"
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": fragment["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text


async def test_without_return_to_the_callback_still_answers_json(
    client: httpx.AsyncClient, idp: LocalOidcProvider
) -> None:
    start = await client.get("/api/v1/auth/oidc/local/login")
    async with httpx.AsyncClient() as browser:
        callback = (await browser.get(start.headers["location"])).headers["location"]
    r = await client.get(callback.removeprefix("http://testserver"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert set(r.json()) >= {"access_token", "refresh_token"}


@pytest.mark.parametrize(
    "return_to",
    [
        "https://evil.example",
        "https://evil.example/app",
        "//evil.example",
        "//evil",
        "/\\evil.example",
        "\\\\evil.example",
        "app",
        "javascript:alert(1)",
        "/app\r\nSet-Cookie: x=1",
        "/app\t",
        "/" + "a" * 600,
        "",
    ],
)
async def test_foreign_return_to_is_refused_before_anything_happens(
    client: httpx.AsyncClient, idp: LocalOidcProvider, runtime: Runtime, return_to: str
) -> None:
    r = await client.get("/api/v1/auth/oidc/local/login", params={"return_to": return_to})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "invalid_return_to"
    assert "location" not in r.headers
    # Refused before the provider was asked for its metadata or any state was stored.
    assert not runtime.state.get("auth.oidc_metadata")
    async with runtime.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(AuditEvent)) == 0


def test_safe_return_to_keeps_paths_with_query_and_fragment() -> None:
    for ok in ("/", "/app", "/app/clusters/1?x=1&y=%2F%2Fevil", "/admin#audit"):
        assert safe_return_to(ok) == ok
    with pytest.raises(InvalidReturnTo):
        safe_return_to("/\x7fapp")


async def test_a_console_state_is_single_use(
    client: httpx.AsyncClient, idp: LocalOidcProvider
) -> None:
    start = await client.get("/api/v1/auth/oidc/local/login", params={"return_to": "/app"})
    async with httpx.AsyncClient() as browser:
        callback = (await browser.get(start.headers["location"])).headers["location"]
    path = callback.removeprefix("http://testserver")
    assert (await client.get(path)).status_code == 303
    replay = await client.get(path)
    assert replay.status_code == 401
    assert replay.json()["code"] == "oidc_login_failed"
