"""CurrentUser and the role aliases, through real routes."""

from __future__ import annotations

import httpx

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
