"""Quotes, booking, holds and termination through the HTTP API on a real database."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
from sqlalchemy import select, update

from tesai.billing import ledger
from tesai.billing import service as billing
from tesai.clusters.models import Cluster, ClusterNode, ClusterStatus, DeviceReservation, Quote
from tesai.clusters.reconcile import reconcile
from tesai.clusters.service import hold_ref
from tesai.devices.models import Device, DeviceStatus
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tests.clusters.conftest import AddDevice, Grant

HOUR = 3600
REQ = {"gpu_model": "NVIDIA A100", "gpus": 2, "duration_s": HOUR}


async def balances(
    runtime: Runtime, user_id: uuid.UUID, cluster_id: uuid.UUID | None = None
) -> tuple[int, int]:
    async with runtime.sessionmaker() as s:
        avail = await ledger.balance_of(s, billing.available(user_id))
        held = (
            await ledger.balance_of(s, billing.held(user_id, hold_ref(cluster_id)))
            if cluster_id
            else 0
        )
    return avail, held


async def test_quote_prices_the_gang_and_holds_capacity(
    client: httpx.AsyncClient, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(3):
        await add_device(price=2_000_000)
    _, headers = await make_user()
    r = await client.post("/api/v1/quotes", json=REQ, headers=headers)
    assert r.status_code == 201, r.text
    q = r.json()
    assert q["shape"] == "2×1"
    assert len(q["devices"]) == 2
    assert q["hourly_micro"] == 4_000_000
    assert q["fee_micro"] == 400_000  # 10 % platform fee
    assert q["total_micro"] == 4_400_000

    # The quoted devices are not offered to anyone else while the quote lives.
    offers = (await client.get("/api/v1/offers", params={"gpu_model": "NVIDIA A100"})).json()
    assert len(offers["offers"]) == 1
    assert offers["groups"][0]["listed_devices"] == 3
    assert offers["groups"][0]["bookable_devices"] == 1

    _, other = await make_user()
    r = await client.post("/api/v1/quotes", json=REQ, headers=other)
    assert r.status_code == 409
    body = r.json()
    assert body["code"] == "no_capacity"
    assert "need 2 × NVIDIA A100" in body["detail"]


async def test_no_capacity_says_why_in_numbers(
    client: httpx.AsyncClient, make_user, add_device: AddDevice
) -> None:
    await add_device(price=3_000_000)
    await add_device(reliability=0.5)
    _, headers = await make_user()
    req = {**REQ, "gpus": 3, "max_price_per_gpu_hour_micro": 2_000_000, "min_reliability": 0.9}
    r = await client.post("/api/v1/quotes", json=req, headers=headers)
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert "2 online" in detail
    assert "above $2.00" in detail
    assert "below reliability 0.9" in detail


async def test_create_books_devices_and_holds_the_whole_duration(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device(price=2_000_000)
    await add_device(price=2_000_000)
    user, headers = await make_user()
    await grant(user.id, 10_000_000)
    quote = (await client.post("/api/v1/quotes", json=REQ, headers=headers)).json()
    r = await client.post(
        "/api/v1/clusters", json={"quote_id": quote["id"], "name": "train"}, headers=headers
    )
    assert r.status_code == 201, r.text
    cluster = r.json()
    assert cluster["status"] == "provisioning"
    assert cluster["ray_address"].endswith(f"/api/v1/clusters/{cluster['id']}/ray")
    cid = uuid.UUID(cluster["id"])
    assert await balances(runtime, user.id, cid) == (10_000_000 - 4_400_000, 4_400_000)
    async with runtime.sessionmaker() as s:
        statuses = (await s.execute(select(Device.status))).scalars().all()
    assert set(statuses) == {DeviceStatus.busy}

    # A used quote cannot book again.
    r = await client.post("/api/v1/clusters", json={"quote_id": quote["id"]}, headers=headers)
    assert r.status_code == 409

    detail = (await client.get(f"/api/v1/clusters/{cid}", headers=headers)).json()
    assert [n["role"] for n in detail["nodes"]] == ["head", "worker"]
    assert [e["reason"] for e in detail["events"]] == ["created", "provisioning"]

    # Terminating before it ever ran returns the whole hold.
    r = await client.post(f"/api/v1/clusters/{cid}/terminate", headers=headers)
    assert r.json()["status"] == "terminating"
    await reconcile(runtime.task_context)
    detail = (await client.get(f"/api/v1/clusters/{cid}", headers=headers)).json()
    assert detail["status"] == "terminated"
    assert {n["state"] for n in detail["nodes"]} == {"released"}
    assert await balances(runtime, user.id, cid) == (10_000_000, 0)
    async with runtime.sessionmaker() as s:
        statuses = (await s.execute(select(Device.status))).scalars().all()
    assert set(statuses) == {DeviceStatus.online}


async def test_insufficient_funds_books_nothing(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device()
    user, headers = await make_user()
    await grant(user.id, 100)
    r = await client.post("/api/v1/clusters", json={"request": {**REQ, "gpus": 1}}, headers=headers)
    assert r.status_code == 402
    assert r.json()["code"] == "insufficient_funds"
    async with runtime.sessionmaker() as s:
        assert (await s.execute(select(ClusterNode))).first() is None
        assert (await s.execute(select(Cluster))).first() is None
        assert (await s.execute(select(Device.status))).scalar_one() is DeviceStatus.online


async def test_two_customers_race_for_the_last_device(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device()
    users = [await make_user() for _ in range(6)]
    for user, _ in users:
        await grant(user.id, 10_000_000)
    body = {"request": {**REQ, "gpus": 1}}
    results = await asyncio.gather(
        *(client.post("/api/v1/clusters", json=body, headers=h) for _, h in users)
    )
    codes = sorted(r.status_code for r in results)
    assert codes.count(201) == 1, [r.text for r in results]
    assert all(c == 409 for c in codes if c != 201)
    async with runtime.sessionmaker() as s:
        assert len((await s.execute(select(ClusterNode))).all()) == 1


async def test_expired_quote_is_refused(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device()
    user, headers = await make_user()
    await grant(user.id, 10_000_000)
    quote = (await client.post("/api/v1/quotes", json={**REQ, "gpus": 1}, headers=headers)).json()
    async with runtime.sessionmaker.begin() as s:
        past = utcnow() - timedelta(seconds=1)
        await s.execute(update(Quote).values(expires_at=past))
        await s.execute(update(DeviceReservation).values(expires_at=past))
    r = await client.post("/api/v1/clusters", json={"quote_id": quote["id"]}, headers=headers)
    assert r.status_code == 409
    assert r.json()["code"] == "quote_expired"
    # Its device is free for others again.
    _, other = await make_user()
    assert (
        await client.post("/api/v1/quotes", json={**REQ, "gpus": 1}, headers=other)
    ).status_code == 201


async def test_quote_then_create_in_the_readmes_order_books_the_quoted_device(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    """``tesai quote …`` then ``tesai cluster create …`` with the same request and no
    ``--quote`` (the CLI sends an Idempotency-Key): the customer's own quote does not stand in
    the way of their create, while it still keeps everyone else off the device."""
    device = await add_device()
    one = {**REQ, "gpus": 1}
    user, headers = await make_user()
    stranger, other = await make_user()
    for u in (user, stranger):
        await grant(u.id, 10_000_000)
    quote = (await client.post("/api/v1/quotes", json=one, headers=headers)).json()
    assert [d["device_id"] for d in quote["devices"]] == [str(device.id)]

    r = await client.post(
        "/api/v1/clusters",
        json={"request": one},
        headers={**other, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "no_capacity"

    r = await client.post(
        "/api/v1/clusters",
        json={"name": "train", "request": one},
        headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 201, r.text
    detail = (await client.get(f"/api/v1/clusters/{r.json()['id']}", headers=headers)).json()
    assert [n["device_id"] for n in detail["nodes"]] == [str(device.id)]
    async with runtime.sessionmaker() as s:
        assert (await s.execute(select(DeviceReservation))).first() is None
    # The quote gave its device up to the cluster: booking it too is refused, not doubled.
    r = await client.post("/api/v1/clusters", json={"quote_id": quote["id"]}, headers=headers)
    assert r.status_code == 409
    async with runtime.sessionmaker() as s:
        assert len((await s.execute(select(ClusterNode))).all()) == 1


async def test_a_refused_create_leaves_the_customers_quote_holding_its_device(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device()
    one = {**REQ, "gpus": 1}
    user, headers = await make_user()
    await grant(user.id, 100)
    quote = (await client.post("/api/v1/quotes", json=one, headers=headers)).json()
    r = await client.post("/api/v1/clusters", json={"request": one}, headers=headers)
    assert r.status_code == 402, r.text
    async with runtime.sessionmaker() as s:
        held = (await s.execute(select(DeviceReservation.quote_id))).scalars().all()
    assert held == [uuid.UUID(quote["id"])]
    _, other = await make_user()
    assert (await client.post("/api/v1/quotes", json=one, headers=other)).status_code == 409

    await grant(user.id, 10_000_000)
    r = await client.post("/api/v1/clusters", json={"quote_id": quote["id"]}, headers=headers)
    assert r.status_code == 201, r.text


async def test_a_create_leaves_the_customers_other_quotes_holding_their_devices(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device()
    h100 = await add_device(gpu_model="NVIDIA H100")
    user, headers = await make_user()
    await grant(user.id, 10_000_000)
    kept = (
        await client.post(
            "/api/v1/quotes", json={**REQ, "gpus": 1, "gpu_model": "NVIDIA H100"}, headers=headers
        )
    ).json()
    r = await client.post("/api/v1/clusters", json={"request": {**REQ, "gpus": 1}}, headers=headers)
    assert r.status_code == 201, r.text
    async with runtime.sessionmaker() as s:
        held = (await s.execute(select(DeviceReservation))).scalars().all()
    assert [(h.device_id, str(h.quote_id)) for h in held] == [(h100.id, kept["id"])]


async def test_another_customers_cluster_is_404(
    client: httpx.AsyncClient, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device()
    user, headers = await make_user()
    await grant(user.id, 10_000_000)
    cid = (
        await client.post("/api/v1/clusters", json={"request": {**REQ, "gpus": 1}}, headers=headers)
    ).json()["id"]
    _, stranger = await make_user()
    for method, path in [
        ("GET", f"/api/v1/clusters/{cid}"),
        ("POST", f"/api/v1/clusters/{cid}/terminate"),
        ("GET", f"/api/v1/clusters/{cid}/jobs"),
        ("GET", f"/api/v1/clusters/{cid}/ray/api/version"),
    ]:
        r = await client.request(method, path, headers=stranger)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    # Without credentials at all: 401, including the Ray proxy.
    assert (await client.get(f"/api/v1/clusters/{cid}/ray/api/version")).status_code == 401


async def test_provisioning_deadline_fails_cleanly_and_releases_the_hold(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device()
    user, headers = await make_user()
    await grant(user.id, 10_000_000)
    cid = uuid.UUID(
        (
            await client.post(
                "/api/v1/clusters", json={"request": {**REQ, "gpus": 1}}, headers=headers
            )
        ).json()["id"]
    )
    await reconcile(runtime.task_context)  # sends the head its join command
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(Cluster).values(provisioning_deadline=utcnow() - timedelta(seconds=1))
        )
    await reconcile(runtime.task_context)
    detail = (await client.get(f"/api/v1/clusters/{cid}", headers=headers)).json()
    assert detail["status"] == ClusterStatus.failed.value
    assert detail["status_reason"] == "provisioning_deadline"
    assert await balances(runtime, user.id, cid) == (10_000_000, 0)


async def test_graphql_offers_match_rest(
    client: httpx.AsyncClient, make_user, add_device: AddDevice
) -> None:
    await add_device(price=2_000_000)
    await add_device(gpu_model="NVIDIA H100", price=3_000_000)
    rest = (await client.get("/api/v1/offers", params={"gpu_model": "NVIDIA A100"})).json()
    query = """query { offers(gpuModel: "NVIDIA A100") {
        offers { deviceId gpuModel pricePerGpuHourMicro }
        groups { gpuModel listedDevices bookableDevices } } }"""
    r = await client.post("/graphql", json={"query": query})
    assert r.status_code == 200, r.text
    data = r.json()["data"]["offers"]
    assert [o["deviceId"] for o in data["offers"]] == [o["device_id"] for o in rest["offers"]]
    assert data["offers"][0]["pricePerGpuHourMicro"] == 2_000_000
    assert data["groups"] == [{"gpuModel": "NVIDIA A100", "listedDevices": 1, "bookableDevices": 1}]
    bad = await client.post(
        "/graphql", json={"query": 'query { offers(sort: "nope") { groups { gpuModel } } }'}
    )
    assert bad.status_code == 200
    assert bad.json()["errors"][0]["extensions"]["code"] == "invalid_input"


async def test_extend_adds_the_price_of_the_extra_time_to_the_hold(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device(price=2_000_000)
    user, headers = await make_user()
    await grant(user.id, 10_000_000)
    body = {"request": {**REQ, "gpus": 1}}
    cid = (await client.post("/api/v1/clusters", json=body, headers=headers)).json()["id"]
    r = await client.post(
        f"/api/v1/clusters/{cid}/extend", json={"duration_s": 1800}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["duration_s"] == 5400
    # 1 h booked (2.20) + 30 min more (1.00 + 10 % fee) held.
    assert await balances(runtime, user.id, uuid.UUID(cid)) == (10_000_000 - 3_300_000, 3_300_000)
    # More than the balance: 402, nothing changes.
    r = await client.post(
        f"/api/v1/clusters/{cid}/extend", json={"duration_s": 30 * 24 * 3600}, headers=headers
    )
    assert r.status_code == 402
    assert (await client.get(f"/api/v1/clusters/{cid}", headers=headers)).json()[
        "duration_s"
    ] == 5400
