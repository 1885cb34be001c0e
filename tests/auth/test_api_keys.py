"""Scoped API keys: shown once, hashed at rest, usable at once, revocable, last use kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends
from sqlalchemy import select

from tesai.app import create_app
from tesai.audit.models import AuditEvent
from tesai.auth.deps import AdminUser, CurrentPrincipal, ProviderUser, require_scope
from tesai.auth.errors import ApiKeyInvalid
from tesai.auth.models import ApiKey
from tesai.auth.principal import Principal, authenticate_api_key, hash_secret
from tesai.runtime import Runtime, open_runtime
from tesai.settings import Settings
from tests.fixtures.auth import MakeUser


async def create_key(
    client: httpx.AsyncClient, headers: dict[str, str], scopes: list[str]
) -> dict[str, str]:
    r = await client.post(
        "/api/v1/auth/api-keys", json={"name": "ci", "scopes": scopes}, headers=headers
    )
    assert r.status_code == 201, r.text
    body: dict[str, str] = r.json()
    return body


async def test_create_use_list_revoke(
    client: httpx.AsyncClient, runtime: Runtime, make_user: MakeUser
) -> None:
    user, headers = await make_user()
    created = await create_key(client, headers, ["read"])
    key = created["key"]
    prefix, secret = key.split("_")[1:]
    assert key.startswith("tesai_")
    assert created["prefix"] == prefix
    assert len(secret) * 4 >= 128

    # Both header forms authenticate as the owner.
    for auth in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        me = await client.get("/api/v1/auth/me", headers=auth)
        assert me.status_code == 200
        assert me.json()["id"] == str(user.id)

    # Stored as SHA-256 only; the listing never shows the key again.
    async with runtime.sessionmaker() as s:
        row = await s.scalar(select(ApiKey))
        assert row is not None
        assert row.key_hash == hash_secret(key)
        assert key not in str(row.__dict__)
    listing = (await client.get("/api/v1/auth/api-keys", headers=headers)).json()
    assert len(listing) == 1
    assert "key" not in listing[0]
    assert listing[0]["last_used_at"] is not None

    r = await client.delete(f"/api/v1/auth/api-keys/{created['id']}", headers=headers)
    assert r.status_code == 200
    assert r.json()["revoked_at"] is not None
    r = await client.get("/api/v1/auth/me", headers={"X-API-Key": key})
    assert r.status_code == 401
    assert r.json()["code"] == "api_key_invalid"
    async with runtime.sessionmaker() as s:
        actions = set((await s.scalars(select(AuditEvent.action))).all())
    assert {"auth.api_key_created", "auth.api_key_revoked"} <= actions


async def test_unknown_and_malformed_keys_are_401(client: httpx.AsyncClient) -> None:
    for key in ("tesai_abcd1234_" + "0" * 40, "tesai_nope", "tesai___"):
        r = await client.get("/api/v1/auth/me", headers={"X-API-Key": key})
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"


async def test_other_users_cannot_revoke(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    _, alice = await make_user()
    _, bob = await make_user()
    created = await create_key(client, alice, ["read"])
    r = await client.delete(f"/api/v1/auth/api-keys/{created['id']}", headers=bob)
    assert r.status_code == 404
    assert (await client.get("/api/v1/auth/me", headers={"X-API-Key": created["key"]})).is_success


async def test_unknown_scope_and_key_minting_keys_rejected(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    _, headers = await make_user()
    r = await client.post("/api/v1/auth/api-keys", json={"scopes": ["root"]}, headers=headers)
    assert r.status_code == 400
    assert r.json()["code"] == "unknown_scope"
    key = (await create_key(client, headers, ["read", "write"]))["key"]
    r = await client.post(
        "/api/v1/auth/api-keys", json={"scopes": ["read"]}, headers={"X-API-Key": key}
    )
    assert r.status_code == 403


@pytest.fixture
async def scoped_client(settings: Settings, runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The app plus probe routes guarded by scope and role dependencies."""
    app = create_app(settings, runtime=runtime)
    probe = APIRouter(prefix="/api/probe")  # under /api: the console serves other paths

    @probe.get("/clusters")
    async def clusters(
        principal: Annotated[Principal, Depends(require_scope("clusters"))],
    ) -> dict[str, str]:
        return {"principal": principal.id}

    @probe.get("/provider")
    async def provider(user: ProviderUser) -> dict[str, str]:
        return {"id": str(user.id)}

    @probe.get("/admin")
    async def admin(user: AdminUser) -> dict[str, str]:
        return {"id": str(user.id)}

    @probe.get("/any")
    async def anyone(principal: CurrentPrincipal) -> dict[str, str]:
        return {"kind": principal.kind}

    app.include_router(probe)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        yield httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_scopes_and_roles_enforced(
    client: httpx.AsyncClient, scoped_client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    _, customer = await make_user(roles=("customer",))
    _, admin = await make_user(roles=("admin",))
    read_key = (await create_key(client, customer, ["read"]))["key"]
    cluster_key = (await create_key(client, customer, ["clusters"]))["key"]
    admin_key_no_scope = (await create_key(client, admin, ["read"]))["key"]
    admin_key = (await create_key(client, admin, ["admin"]))["key"]
    async with scoped_client as c:
        assert (await c.get("/api/probe/clusters", headers=customer)).status_code == 200
        r = await c.get("/api/probe/clusters", headers={"X-API-Key": read_key})
        assert r.status_code == 403
        assert r.json()["code"] == "missing_scope"
        assert (await c.get("/api/probe/clusters", headers={"X-API-Key": cluster_key})).is_success
        r = await c.get("/api/probe/provider", headers=customer)
        assert r.status_code == 403
        assert r.json()["code"] == "missing_role"
        assert (await c.get("/api/probe/admin", headers=customer)).status_code == 403
        assert (await c.get("/api/probe/admin", headers=admin)).status_code == 200
        assert (
            await c.get("/api/probe/admin", headers={"X-API-Key": admin_key_no_scope})
        ).status_code == 403
        assert (
            await c.get("/api/probe/admin", headers={"X-API-Key": admin_key})
        ).status_code == 200
        assert (await c.get("/api/probe/any")).status_code == 401
        r = await c.get("/api/probe/any", headers={"Authorization": f"Bearer {read_key}"})
        assert r.json() == {"kind": "api_key"}


async def test_hot_path_uses_cache_not_sql(
    client: httpx.AsyncClient, runtime: Runtime, make_user: MakeUser
) -> None:
    """After the first use, an API-key request needs no database: it works while the
    key's row is invisible to SQL (here: deleted behind the cache's back)."""
    _, headers = await make_user()
    key = (await create_key(client, headers, ["read"]))["key"]
    assert (await client.get("/api/v1/auth/me", headers={"X-API-Key": key})).is_success
    async with runtime.sessionmaker() as s, s.begin():
        row = await s.scalar(select(ApiKey))
        assert row is not None
        await s.delete(row)
    assert (await client.get("/api/v1/auth/me", headers={"X-API-Key": key})).is_success


async def test_last_used_written_at_most_once_a_minute(
    client: httpx.AsyncClient, runtime: Runtime, make_user: MakeUser
) -> None:
    _, headers = await make_user()
    created = await create_key(client, headers, ["read"])
    for _ in range(3):
        assert (
            await client.get("/api/v1/auth/me", headers={"X-API-Key": created["key"]})
        ).is_success
    async with runtime.sessionmaker() as s:
        first = await s.scalar(select(ApiKey.last_used_at))
    assert first is not None
    # Within the minute further uses cost no write; the time stays the first one's.
    await client.get("/api/v1/auth/me", headers={"X-API-Key": created["key"]})
    async with runtime.sessionmaker() as s:
        assert await s.scalar(select(ApiKey.last_used_at)) == first
    # A minute later (this process's throttle forgotten) the next use is recorded.
    runtime.state["auth.key_last_used"].clear()
    await client.get("/api/v1/auth/me", headers={"X-API-Key": created["key"]})
    async with runtime.sessionmaker() as s:
        later = await s.scalar(select(ApiKey.last_used_at))
    assert later is not None
    assert later > first


async def test_revocation_reaches_other_processes_within_local_ttl(
    client: httpx.AsyncClient, settings: Settings, make_user: MakeUser
) -> None:
    """Another API process (its own runtime, same Redis) stops accepting a revoked key
    within ``auth_local_cache_ttl_s``."""
    _, headers = await make_user()
    created = await create_key(client, headers, ["read"])
    other = await open_runtime(settings, run_periodic=False)
    try:
        assert (await authenticate_api_key(other, created["key"])).kind == "api_key"
        r = await client.delete(f"/api/v1/auth/api-keys/{created['id']}", headers=headers)
        assert r.status_code == 200
        await asyncio.sleep(settings.auth_local_cache_ttl_s + 0.2)
        with pytest.raises(ApiKeyInvalid):
            await authenticate_api_key(other, created["key"])
    finally:
        await other.close()
