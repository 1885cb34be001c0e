"""Email + password sign-up and login, sessions, refresh rotation and logout."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import select

from tesai.audit.models import AuditEvent
from tesai.auth.models import RefreshToken
from tesai.runtime import Runtime
from tesai.settings import Settings

PASSWORD = "correct horse battery"


async def signup_and_login(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    r = await client.post(
        "/api/v1/auth/signup",
        json={"email": email, "password": PASSWORD, "roles": ["customer", "provider"]},
    )
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    tokens: dict[str, str] = r.json()
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_signup_login_me(client: httpx.AsyncClient) -> None:
    tokens = await signup_and_login(client, "Alice@Example.com")
    assert tokens["token_type"] == "bearer"
    assert 0 < int(tokens["expires_in"]) <= 900
    me = await client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200
    assert me.json()["email"] == "alice@example.com"
    assert me.json()["roles"] == ["customer", "provider"]


async def test_signup_rejects_duplicates_admin_role_and_weak_input(
    client: httpx.AsyncClient,
) -> None:
    body = {"email": "bob@example.com", "password": PASSWORD}
    assert (await client.post("/api/v1/auth/signup", json=body)).status_code == 201
    dup = await client.post("/api/v1/auth/signup", json={**body, "email": "BOB@example.com"})
    assert dup.status_code == 409
    assert dup.json()["code"] == "email_taken"
    admin = await client.post(
        "/api/v1/auth/signup",
        json={"email": "eve@example.com", "password": PASSWORD, "roles": ["admin"]},
    )
    assert admin.status_code == 422
    short = await client.post(
        "/api/v1/auth/signup", json={"email": "x@example.com", "password": "short"}
    )
    assert short.status_code == 422
    assert short.headers["content-type"] == "application/problem+json"


async def test_wrong_password_is_401_and_audited(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await signup_and_login(client, "carol@example.com")
    for email in ("carol@example.com", "nobody@example.com"):
        r = await client.post("/api/v1/auth/login", json={"email": email, "password": "wrong"})
        assert r.status_code == 401
        assert r.json()["code"] == "invalid_credentials"
    async with runtime.sessionmaker() as s:
        events = (await s.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
    actions = [e.action for e in events]
    assert actions.count("auth.login") == 1
    failed = [e for e in events if e.action == "auth.login_failed"]
    assert [e.details["email"] for e in failed] == ["carol@example.com", "nobody@example.com"]


async def test_refresh_rotates_and_reuse_revokes_family(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    first = await signup_and_login(client, "dave@example.com")
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    me = await client.get("/api/v1/auth/me", headers=bearer(second["access_token"]))
    assert me.status_code == 200

    # The first token is used up: presenting it again is theft; the whole family dies.
    reuse = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert reuse.status_code == 401
    assert reuse.json()["code"] == "refresh_token_reused"
    later = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}
    )
    assert later.status_code == 401
    me = await client.get("/api/v1/auth/me", headers=bearer(second["access_token"]))
    assert me.status_code == 401
    async with runtime.sessionmaker() as s:
        rows = (await s.scalars(select(RefreshToken))).all()
        assert rows
        assert all(row.revoked_at is not None for row in rows)
        reused = await s.scalar(select(AuditEvent).where(AuditEvent.action == "auth.refresh_reuse"))
        assert reused is not None

    # Another session of the same user is untouched.
    other = await client.post(
        "/api/v1/auth/login", json={"email": "dave@example.com", "password": PASSWORD}
    )
    assert other.status_code == 200


async def test_unknown_refresh_token_is_401(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": "nope"})
    assert r.status_code == 401
    assert r.json()["code"] == "refresh_token_invalid"


async def test_logout_revokes_refresh_and_access(client: httpx.AsyncClient) -> None:
    tokens = await signup_and_login(client, "erin@example.com")
    r = await client.post("/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 204
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401
    me = await client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401


async def test_logout_with_access_token_only(client: httpx.AsyncClient) -> None:
    tokens = await signup_and_login(client, "frank@example.com")
    r = await client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
    assert r.status_code == 204
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401
    assert (await client.post("/api/v1/auth/logout", json={})).status_code == 401


async def test_concurrent_signups_one_wins(client: httpx.AsyncClient) -> None:
    body = {"email": "race@example.com", "password": PASSWORD}
    results = await asyncio.gather(
        *(client.post("/api/v1/auth/signup", json=body) for _ in range(4))
    )
    assert sorted(r.status_code for r in results) == [201, 409, 409, 409]


async def test_expired_refresh_token_rejected(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    settings.refresh_token_ttl_s = 1
    try:
        tokens = await signup_and_login(client, "gina@example.com")
    finally:
        settings.refresh_token_ttl_s = 30 * 24 * 3600
    await asyncio.sleep(1.5)
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]
