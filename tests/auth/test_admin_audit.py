"""Admin user management and the audit log."""

from __future__ import annotations

import httpx

from tests.fixtures.auth import MakeUser


async def test_non_admins_get_403(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    _, headers = await make_user(roles=("customer", "provider"))
    for path in ("/api/v1/internal/users", "/api/v1/internal/audit"):
        r = await client.get(path, headers=headers)
        assert r.status_code == 403
        assert r.json()["code"] == "missing_role"
        assert (await client.get(path)).status_code == 401


async def test_role_change_is_audited_and_immediate(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    admin, admin_headers = await make_user(roles=("admin",))
    user, headers = await make_user(roles=("customer",))
    # Warm the user's cached snapshot first: the change must still apply at once.
    assert (await client.get("/api/v1/internal/users", headers=headers)).status_code == 403

    r = await client.patch(
        f"/api/v1/internal/users/{user.id}/roles",
        json={"roles": ["customer", "admin"]},
        headers=admin_headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["roles"] == ["customer", "admin"]
    listing = await client.get("/api/v1/internal/users", headers=headers)
    assert listing.status_code == 200
    assert listing.json()["total"] == 2

    audit = await client.get(
        "/api/v1/internal/audit", params={"action": "admin.roles_changed"}, headers=admin_headers
    )
    (event,) = audit.json()["items"]
    assert event["actor_user_id"] == str(admin.id)
    assert event["subject_id"] == str(user.id)
    assert event["details"] == {"before": ["customer"], "after": ["customer", "admin"]}

    bad = await client.patch(
        f"/api/v1/internal/users/{user.id}/roles", json={"roles": ["root"]}, headers=admin_headers
    )
    assert bad.status_code == 422
    empty = await client.patch(
        f"/api/v1/internal/users/{user.id}/roles", json={"roles": []}, headers=admin_headers
    )
    assert empty.status_code == 422
    missing = await client.patch(
        "/api/v1/internal/users/00000000-0000-0000-0000-000000000000/roles",
        json={"roles": ["customer"]},
        headers=admin_headers,
    )
    assert missing.status_code == 404


async def test_audit_filters_and_pages(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin, admin_headers = await make_user(roles=("admin",))
    for i in range(5):
        await client.post(
            "/api/v1/auth/login", json={"email": f"ghost{i}@example.com", "password": "x"}
        )
    await client.post("/api/v1/auth/api-keys", json={"scopes": ["read"]}, headers=admin_headers)

    page1 = (
        await client.get(
            "/api/v1/internal/audit",
            params={"action": "auth.login_failed", "limit": 3},
            headers=admin_headers,
        )
    ).json()
    assert len(page1["items"]) == 3
    assert page1["next_before_id"] is not None
    page2 = (
        await client.get(
            "/api/v1/internal/audit",
            params={
                "action": "auth.login_failed",
                "limit": 3,
                "before_id": page1["next_before_id"],
            },
            headers=admin_headers,
        )
    ).json()
    emails = [e["details"]["email"] for e in page1["items"] + page2["items"]]
    assert emails == [f"ghost{i}@example.com" for i in reversed(range(5))]
    assert page2["next_before_id"] is None

    mine = (
        await client.get(
            "/api/v1/internal/audit", params={"actor": str(admin.id)}, headers=admin_headers
        )
    ).json()
    assert [e["action"] for e in mine["items"]] == ["auth.api_key_created"]
    future = await client.get(
        "/api/v1/internal/audit", params={"since": "2999-01-01T00:00:00Z"}, headers=admin_headers
    )
    assert future.json()["items"] == []
