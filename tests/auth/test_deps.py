"""CurrentUser and the role aliases, through real routes."""

from __future__ import annotations

import httpx

from tesai.accounts.models import User
from tesai.auth.principal import authenticate_access_token
from tesai.auth.tokens import issue_access_token, runtime_signing_key
from tesai.runtime import Runtime
from tests.fixtures.auth import MakeUser


async def test_make_user_headers_authenticate(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user, headers = await make_user(roles=("customer", "provider"))
    r = await client.get("/api/v1/auth/me", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == str(user.id)
    assert r.json()["roles"] == ["customer", "provider"]


async def test_no_credentials_is_401_problem(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/auth/me")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "unauthorized"
    r = await client.get("/api/v1/auth/me", headers={"Authorization": "Bearer garbage"})
    assert r.status_code == 401
    assert r.json()["code"] == "token_invalid"


async def test_snapshot_user_is_safe_to_attach(runtime: Runtime, make_user: MakeUser) -> None:
    """The detached snapshot given to routes can be merged or added without clobbering
    the row (no INSERT, password hash untouched)."""
    user, _ = await make_user(password="a long enough password")
    principal = await authenticate_access_token(
        runtime,
        issue_access_token(
            runtime_signing_key(runtime.state, runtime.settings), runtime.settings, user.id
        ),
    )
    snapshot = principal.user
    async with runtime.sessionmaker() as s, s.begin():
        merged = await s.merge(snapshot)
        assert merged.email == user.email
    async with runtime.sessionmaker() as s, s.begin():
        s.add(snapshot)
        snapshot.display_name = "Renamed"
    async with runtime.sessionmaker() as s:
        row = await s.get(User, user.id)
        assert row is not None
        assert row.display_name == "Renamed"
        assert row.password_hash == user.password_hash
