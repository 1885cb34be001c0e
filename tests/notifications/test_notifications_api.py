"""The notifications API: each user sees and marks only their own, customers and providers."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select

from tesai.notifications.models import Notification
from tesai.notifications.service import NewNotification, notify
from tesai.runtime import Runtime
from tests.fixtures.auth import MakeUser


async def _store(
    runtime: Runtime, user_id: uuid.UUID, n: int, kind: str = "spend_cap_warning"
) -> list[int]:
    async with runtime.sessionmaker.begin() as s:
        for i in range(n):
            assert await notify(
                s,
                NewNotification(
                    user_id=user_id,
                    kind=kind,
                    severity="warning",
                    subject_type="account",
                    subject_id=str(user_id),
                    threshold=80 + i,
                    period="2026-11",
                    message=f"note {i}",
                ),
            )
        # The same notification again is not stored twice.
        assert not await notify(
            s,
            NewNotification(
                user_id=user_id,
                kind=kind,
                severity="warning",
                subject_type="account",
                subject_id=str(user_id),
                threshold=80,
                period="2026-11",
                message="again",
            ),
        )
    async with runtime.sessionmaker() as s:
        return list(
            (
                await s.scalars(
                    select(Notification.id)
                    .where(Notification.user_id == user_id)
                    .order_by(Notification.id.desc())
                )
            ).all()
        )


async def test_list_page_mark_read_and_read_all(
    client: httpx.AsyncClient, runtime: Runtime, make_user: MakeUser
) -> None:
    user, headers = await make_user()
    ids = await _store(runtime, user.id, 3)
    page = (await client.get("/api/v1/notifications?limit=2", headers=headers)).json()
    assert [n["id"] for n in page["items"]] == ids[:2]
    assert page["unread"] == 3
    assert page["next_before_id"] == ids[1]
    rest = (
        await client.get(f"/api/v1/notifications?limit=2&before_id={ids[1]}", headers=headers)
    ).json()
    assert [n["id"] for n in rest["items"]] == ids[2:]
    assert rest["next_before_id"] is None

    r = await client.post(f"/api/v1/notifications/{ids[0]}/read", headers=headers)
    assert r.status_code == 200
    first_read_at = r.json()["read_at"]
    assert first_read_at is not None
    again = await client.post(f"/api/v1/notifications/{ids[0]}/read", headers=headers)
    assert again.json()["read_at"] == first_read_at  # idempotent
    unread = (await client.get("/api/v1/notifications?unread=true", headers=headers)).json()
    assert [n["id"] for n in unread["items"]] == ids[1:]
    assert unread["unread"] == 2

    r = await client.post("/api/v1/notifications/read-all", headers=headers)
    assert r.json() == {"marked": 2}
    assert (await client.get("/api/v1/notifications?unread=true", headers=headers)).json()[
        "items"
    ] == []
    assert (await client.post("/api/v1/notifications/read-all", headers=headers)).json() == {
        "marked": 0
    }


async def test_another_user_cannot_read_or_mark_yours(
    client: httpx.AsyncClient, runtime: Runtime, make_user: MakeUser
) -> None:
    owner, owner_headers = await make_user()
    provider, other = await make_user(roles=("provider",))
    [mine] = await _store(runtime, owner.id, 1)
    [theirs] = await _store(runtime, provider.id, 1, kind="payout_warning")

    # Providers use the same endpoints and see only their own.
    listed = (await client.get("/api/v1/notifications", headers=other)).json()
    assert [n["id"] for n in listed["items"]] == [theirs]
    r = await client.post(f"/api/v1/notifications/{mine}/read", headers=other)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "notification_not_found"
    assert (await client.post("/api/v1/notifications/read-all", headers=other)).json() == {
        "marked": 1
    }
    async with runtime.sessionmaker() as s:
        note = await s.get(Notification, mine)
        assert note is not None
        assert note.read_at is None
    assert (
        await client.post("/api/v1/notifications/999999/read", headers=owner_headers)
    ).status_code == 404


async def test_bad_input_is_a_4xx_problem(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    _, headers = await make_user()
    assert (await client.get("/api/v1/notifications")).status_code == 401
    for path in (
        "/api/v1/notifications/abc/read",
        "/api/v1/notifications/0/read",
        f"/api/v1/notifications/{2**70}/read",
    ):
        r = await client.post(path, headers=headers)
        assert r.status_code == 422, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    for query in ("limit=0", "limit=1000", "before_id=-1", "unread=maybe"):
        r = await client.get(f"/api/v1/notifications?{query}", headers=headers)
        assert r.status_code == 422, (query, r.text)
