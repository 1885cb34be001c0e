"""Spend guardrails on the real metering path: clusters made through the API, brought up by
the reconciler with the heartbeat records agents leave, metered, then checked by the
``billing.spend_guardrails`` task (see tests/clusters/test_reconcile.py for the set-up)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import httpx
from sqlalchemy import func, select

from tesai.billing import guardrails, ledger
from tesai.billing import service as billing
from tesai.billing.models import SpendCap
from tesai.billing.tasks import spend_guardrails
from tesai.clusters.models import Cluster, ClusterEvent, ClusterStatus
from tesai.clusters.reconcile import reconcile
from tesai.clusters.service import hold_ref
from tesai.devices.models import Device, DeviceStatus
from tesai.kit.time import utcnow
from tesai.notifications.models import Notification
from tesai.runtime import Runtime
from tests.clusters import conftest as cluster_fixtures
from tests.clusters.test_reconcile import bring_up, cluster_row, meter
from tests.fixtures.auth import MakeUser

add_device = cluster_fixtures.add_device
grant = cluster_fixtures.grant

PER_SECOND = 1_100  # 1,000 µUSDC per node-second to the provider + 10 % platform fee


# --- pure rules ------------------------------------------------------------------------------


def test_month_bounds_and_period_are_the_utc_calendar_month() -> None:
    start, end = guardrails.month_bounds(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert (start, end) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert guardrails.period_of(datetime(2026, 2, 28, 12, tzinfo=UTC)) == "2026-02"


def test_thresholds_crossed_and_cap_arithmetic() -> None:
    assert guardrails.crossed(79, 100) == []
    assert guardrails.crossed(80, 100) == [80]
    assert guardrails.crossed(95, 100) == [80, 95]
    assert guardrails.crossed(10, 0) == []
    assert not guardrails.would_exceed(100, 40, 30, 30)
    assert guardrails.would_exceed(100, 40, 30, 31)


# --- helpers ---------------------------------------------------------------------------------


async def _running_cluster(
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    add_device: cluster_fixtures.AddDevice,
    grant: cluster_fixtures.Grant,
    **body: object,
) -> tuple[uuid.UUID, uuid.UUID, dict[str, str]]:
    await add_device(gpu_model=None, gpus=0, price=3_600_000)  # 1,000 µUSDC per second
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    r = await client.post(
        "/api/v1/clusters",
        json={"request": {"nodes": 1, "duration_s": 3600}, **body},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    cid = uuid.UUID(r.json()["id"])
    await bring_up(runtime, cid)
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.running
    return user.id, cid, headers


async def _meter(runtime: Runtime, seconds: int) -> None:
    """Let ``seconds`` of healthy time pass for every node: the metering tick bills it, then
    the reconciler checks the budgets."""
    await meter(runtime, seconds)
    await reconcile(runtime.task_context)


async def _notes(runtime: Runtime, user_id: uuid.UUID) -> list[tuple[str, int, str]]:
    async with runtime.sessionmaker() as s:
        rows = await s.execute(
            select(Notification.kind, Notification.threshold, Notification.subject_id)
            .where(Notification.user_id == user_id)
            .order_by(Notification.kind, Notification.threshold)
        )
        return [tuple(r) for r in rows.tuples()]  # type: ignore[misc]


async def _spent(runtime: Runtime, user_id: uuid.UUID) -> int:
    async with runtime.sessionmaker() as s:
        return (await guardrails.month_to_date(s, runtime.settings, [user_id], utcnow()))[user_id]


# --- cluster budget --------------------------------------------------------------------------


async def test_budget_warnings_at_80_and_95_are_stored_once_then_the_stop_is_notified(
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    add_device: cluster_fixtures.AddDevice,
    grant: cluster_fixtures.Grant,
) -> None:
    budget = 20_000  # about 18 s of this node
    user_id, cid, headers = await _running_cluster(
        client, runtime, make_user, add_device, grant, budget_micro=budget
    )
    await _meter(runtime, 15)  # 15-16 s: 82-88 % of the budget
    spent = await _spent(runtime, user_id)
    assert budget * 80 <= spent * 100 < budget * 95, spent
    await spend_guardrails(runtime.task_context)
    await spend_guardrails(runtime.task_context)  # a second run stores nothing new
    assert await _notes(runtime, user_id) == [("cluster_budget_warning", 80, str(cid))]

    await meter(runtime, 4)  # 19-20 s: over 100 %, running until the reconciler's next pass
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.running
    # Two runs at once store each warning once between them.
    await asyncio.gather(
        spend_guardrails(runtime.task_context), spend_guardrails(runtime.task_context)
    )
    assert await _notes(runtime, user_id) == [
        ("cluster_budget_warning", 80, str(cid)),
        ("cluster_budget_warning", 95, str(cid)),
    ]

    # The reconciler stops it for its budget; the customer is told once.
    await _meter(runtime, 2)
    assert (await cluster_row(runtime, cid)).status_reason in ("budget_exhausted", "released")
    await spend_guardrails(runtime.task_context)
    await spend_guardrails(runtime.task_context)
    notes = await _notes(runtime, user_id)
    assert notes.count(("cluster_stopped", 100, str(cid))) == 1
    body = (await client.get("/api/v1/notifications", headers=headers)).json()
    stopped = next(n for n in body["items"] if n["kind"] == "cluster_stopped")
    assert stopped["data"]["reason"] == "budget_exhausted"
    assert stopped["severity"] == "critical"
    assert body["unread"] == 3


# --- monthly spend cap -----------------------------------------------------------------------


async def test_cap_reached_stops_the_clusters_with_spend_cap_reached_and_notifies(
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    add_device: cluster_fixtures.AddDevice,
    grant: cluster_fixtures.Grant,
) -> None:
    user_id, cid, headers = await _running_cluster(client, runtime, make_user, add_device, grant)
    await _meter(runtime, 15)
    spent = await _spent(runtime, user_id)
    assert spent >= 15 * PER_SECOND

    # A cap that puts what is spent at about 85 %: only the 80 % warning.
    cap = spent * 100 // 85
    r = await client.put(
        "/api/v1/customer/spend-cap", json={"monthly_cap_micro": cap}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["month_to_date_micro"] == spent
    await spend_guardrails(runtime.task_context)
    assert [n[:2] for n in await _notes(runtime, user_id)] == [("spend_cap_warning", 80)]
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.running

    # The customer lowers the cap below what is spent: the cluster is stopped, gracefully.
    r = await client.put(
        "/api/v1/customer/spend-cap", json={"monthly_cap_micro": spent - 1}, headers=headers
    )
    assert r.json()["used_pct"] > 100
    await spend_guardrails(runtime.task_context)
    await spend_guardrails(runtime.task_context)
    cluster = await cluster_row(runtime, cid)
    assert cluster.status is ClusterStatus.terminating
    assert cluster.status_reason == "spend_cap_reached"
    period = guardrails.period_of(utcnow())
    assert await _notes(runtime, user_id) == [
        ("cluster_stopped", 100, str(cid)),
        ("spend_cap_reached", 100, str(user_id)),
        ("spend_cap_warning", 80, str(user_id)),
        ("spend_cap_warning", 95, str(user_id)),
    ]
    async with runtime.sessionmaker() as s:
        events = list(
            (
                await s.execute(
                    select(ClusterEvent).where(
                        ClusterEvent.cluster_id == cid, ClusterEvent.reason == "spend_cap_reached"
                    )
                )
            ).scalars()
        )
        periods = set(
            (
                await s.scalars(
                    select(Notification.period).where(Notification.subject_type == "account")
                )
            ).all()
        )
    assert [(e.from_status, e.to_status) for e in events] == [("running", "terminating")]
    assert "spent in" in events[0].message
    assert periods == {period}

    # The reconciler releases the nodes, settles and returns the rest of the hold.
    await reconcile(runtime.task_context)
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.terminated
    async with runtime.sessionmaker() as s:
        assert await ledger.balance_of(s, billing.held(user_id, hold_ref(cid))) == 0
    page = (await client.get("/api/v1/notifications?unread=true", headers=headers)).json()
    stopped = next(n for n in page["items"] if n["kind"] == "cluster_stopped")
    assert stopped["data"]["reason"] == "spend_cap_reached"
    assert "monthly spend cap" in stopped["message"]


async def test_create_or_extend_over_the_cap_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    add_device: cluster_fixtures.AddDevice,
    grant: cluster_fixtures.Grant,
) -> None:
    user_id, cid, headers = await _running_cluster(client, runtime, make_user, add_device, grant)
    await _meter(runtime, 10)
    hold = 3600 * PER_SECOND
    async with runtime.sessionmaker() as s:
        held_before = await ledger.balance_of(s, billing.held(user_id, hold_ref(cid)))
    # Cap = what is committed now (spent + open hold) + a little: no new hour fits.
    status = (await client.get("/api/v1/customer/spend-cap", headers=headers)).json()
    assert status["monthly_cap_micro"] is None
    committed = status["month_to_date_micro"] + status["open_holds_micro"]
    assert committed == hold  # what is spent came out of the hold
    cap = committed + 1_000_000
    await client.put("/api/v1/customer/spend-cap", json={"monthly_cap_micro": cap}, headers=headers)

    # Extend by an hour: over the cap → 409 with the numbers, nothing changed.
    before = await cluster_row(runtime, cid)
    r = await client.post(
        f"/api/v1/clusters/{cid}/extend", json={"duration_s": 3600}, headers=headers
    )
    assert r.status_code == 409, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["code"] == "spend_cap_exceeded"
    assert problem["monthly_cap_micro"] == cap
    assert problem["requested_micro"] == hold
    assert problem["month_to_date_micro"] + problem["open_holds_micro"] == committed
    assert "over your monthly spend cap" in problem["detail"]
    after = await cluster_row(runtime, cid)
    assert (after.duration_s, after.hold_micro, after.version) == (
        before.duration_s,
        before.hold_micro,
        before.version,
    )
    # A short extension that fits is allowed.
    r = await client.post(
        f"/api/v1/clusters/{cid}/extend", json={"duration_s": 60}, headers=headers
    )
    assert r.status_code == 200, r.text

    # Create another cluster for an hour: refused, no cluster, no hold, the device stays free.
    spare = await add_device(gpu_model=None, gpus=0, price=3_600_000)
    async with runtime.sessionmaker() as s:
        available = await ledger.balance_of(s, billing.available(user_id))
    r = await client.post(
        "/api/v1/clusters",
        json={"request": {"nodes": 1, "duration_s": 3600}},
        headers=headers,
    )
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "spend_cap_exceeded"
    async with runtime.sessionmaker() as s:
        assert (
            await s.scalar(
                select(func.count()).select_from(Cluster).where(Cluster.customer_id == user_id)
            )
            == 1
        )
        assert await ledger.balance_of(s, billing.available(user_id)) == available
        device = await s.get(Device, spare.id)
        assert device is not None
        assert device.status is DeviceStatus.online
        assert (
            await ledger.balance_of(s, billing.held(user_id, hold_ref(cid)))
            == held_before + 60 * PER_SECOND
        )
    # Without the cap the same request goes through.
    r = await client.delete("/api/v1/customer/spend-cap", headers=headers)
    assert r.json()["monthly_cap_micro"] is None
    r = await client.post(
        "/api/v1/clusters",
        json={"request": {"nodes": 1, "duration_s": 3600}},
        headers=headers,
    )
    assert r.status_code == 201, r.text


async def test_spend_cap_api_validates_input_and_roles(
    client: httpx.AsyncClient, runtime: Runtime, make_user: MakeUser
) -> None:
    user, headers = await make_user()
    for bad in (
        {"monthly_cap_micro": 0},
        {"monthly_cap_micro": -5},
        {"monthly_cap_micro": "ten"},
        {"monthly_cap_micro": 1.5},
        {"monthly_cap_micro": True},
        {},
        {"monthly_cap_micro": 10**30},
    ):
        r = await client.put("/api/v1/customer/spend-cap", json=bad, headers=headers)
        assert r.status_code == 422, (bad, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    async with runtime.sessionmaker() as s:
        assert await s.get(SpendCap, user.id) is None

    r = await client.put(
        "/api/v1/customer/spend-cap", json={"monthly_cap_micro": 50_000_000}, headers=headers
    )
    assert r.status_code == 200
    assert r.json()["monthly_cap_micro"] == 50_000_000
    assert r.json()["used_pct"] == 0
    r = await client.put(
        "/api/v1/customer/spend-cap", json={"monthly_cap_micro": None}, headers=headers
    )
    assert r.json()["monthly_cap_micro"] is None
    assert (await client.get("/api/v1/customer/spend-cap")).status_code == 401
    _, provider = await make_user(roles=("provider",))
    assert (await client.get("/api/v1/customer/spend-cap", headers=provider)).status_code == 403
