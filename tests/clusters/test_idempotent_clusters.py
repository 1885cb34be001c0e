"""`POST /clusters` and `POST /clusters/{id}/extend` honour `Idempotency-Key`: a retry (also
one racing the first request, also from another API process) books once and gets the first
answer; the key with another body is a 409; a crash before the answer is stored books
nothing, so the retry books exactly once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tesai.billing import idempotency, ledger
from tesai.billing import service as billing
from tesai.billing.idempotency import Answer
from tesai.billing.models import LedgerTransaction
from tesai.clusters import batching
from tesai.clusters.models import Cluster
from tesai.clusters.schemas import ClusterRequest, CreateCluster
from tesai.clusters.service import hold_ref
from tesai.runtime import Runtime
from tests.clusters.conftest import AddDevice, Grant
from tests.fixtures.auth import MakeUser

HOUR = 3600
HOLD = 1_100_000  # 1 USDC an hour + 10 % fee
BODY = {"name": "once", "request": {"gpu_model": "NVIDIA A100", "gpus": 1, "duration_s": HOUR}}


async def customer(make_user: MakeUser, grant: Grant) -> tuple[uuid.UUID, dict[str, str]]:
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    return user.id, headers


async def clusters_of(runtime: Runtime, user_id: uuid.UUID) -> list[uuid.UUID]:
    async with runtime.sessionmaker() as s:
        rows = await s.scalars(select(Cluster.id).where(Cluster.customer_id == user_id))
        return list(rows.all())


async def holds_placed(runtime: Runtime, kind: str) -> int:
    async with runtime.sessionmaker() as s:
        count = await s.scalar(
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.kind == kind)
        )
    return int(count or 0)


async def available(runtime: Runtime, user_id: uuid.UUID) -> int:
    async with runtime.sessionmaker() as s:
        return await ledger.balance_of(s, billing.available(user_id))


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def test_create_retried_with_its_key_books_one_cluster_and_one_hold(
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    add_device: AddDevice,
    grant: Grant,
) -> None:
    for _ in range(3):
        await add_device(price=1_000_000)
    user_id, headers = await customer(make_user, grant)
    first = await client.post("/api/v1/clusters", json=BODY, headers=keyed(headers, "rent-1"))
    assert first.status_code == 201, first.text
    again = await client.post("/api/v1/clusters", json=BODY, headers=keyed(headers, "rent-1"))
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert await clusters_of(runtime, user_id) == [uuid.UUID(first.json()["id"])]
    assert await available(runtime, user_id) == 100_000_000 - HOLD

    other = {**BODY, "name": "another"}
    reused = await client.post("/api/v1/clusters", json=other, headers=keyed(headers, "rent-1"))
    assert reused.status_code == 409, reused.text
    assert reused.json()["code"] == "idempotency_key_reused"
    # Another key is another cluster; no key at all books every time.
    assert (
        await client.post("/api/v1/clusters", json=BODY, headers=keyed(headers, "rent-2"))
    ).status_code == 201
    assert (await client.post("/api/v1/clusters", json=BODY, headers=headers)).status_code == 201
    assert len(await clusters_of(runtime, user_id)) == 3
    bad = await client.post("/api/v1/clusters", json=BODY, headers=keyed(headers, "x" * 201))
    assert bad.status_code == 400
    assert bad.json()["code"] == "idempotency_key_required"


async def test_concurrent_creates_with_one_key_book_once(
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    add_device: AddDevice,
    grant: Grant,
) -> None:
    for _ in range(4):
        await add_device(price=1_000_000)
    user_id, headers = await customer(make_user, grant)
    answers = await asyncio.gather(
        *(
            client.post("/api/v1/clusters", json=BODY, headers=keyed(headers, "double-click"))
            for _ in range(3)
        )
    )
    assert [r.status_code for r in answers] == [201] * 3, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert len(await clusters_of(runtime, user_id)) == 1
    assert await available(runtime, user_id) == 100_000_000 - HOLD


async def test_two_api_processes_with_one_key_book_once(
    runtime: Runtime, make_user: MakeUser, add_device: AddDevice, grant: Grant
) -> None:
    """Each API process batches its own creations: the second waits on the first's key."""
    for _ in range(4):
        await add_device(price=1_000_000)
    user_id, _ = await customer(make_user, grant)
    body = CreateCluster.model_validate(BODY)
    call = idempotency.idempotent_call(
        user_id=user_id, route="POST /clusters", key="k", params=body.model_dump(mode="json")
    )
    assert call is not None
    once = batching.Once(call, lambda c: {"id": str(c.id)})
    results = await asyncio.gather(
        batching.CreateBatcher(runtime).create_once(user_id, body, once),
        batching.CreateBatcher(runtime).create_once(user_id, body, once),
    )
    [cluster] = [r for r in results if isinstance(r, Cluster)]
    [replay] = [r for r in results if isinstance(r, Answer)]
    assert replay == Answer(201, {"id": str(cluster.id)})
    assert await clusters_of(runtime, user_id) == [cluster.id]


async def test_crash_before_the_answer_is_stored_books_nothing_and_the_retry_books_once(
    runtime: Runtime,
    make_user: MakeUser,
    add_device: AddDevice,
    grant: Grant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for _ in range(3):
        await add_device(price=1_000_000)
    user_id, _ = await customer(make_user, grant)
    body = CreateCluster(
        name="crash", request=ClusterRequest(gpu_model="NVIDIA A100", gpus=1, duration_s=HOUR)
    )
    call = idempotency.idempotent_call(
        user_id=user_id, route="POST /clusters", key="k", params=body.model_dump(mode="json")
    )
    assert call is not None
    once = batching.Once(call, lambda c: {"id": str(c.id)})

    async def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the process died after booking, before storing the answer")

    with monkeypatch.context() as mp:
        mp.setattr(idempotency, "answer", crash)
        with pytest.raises(RuntimeError):
            await batching.CreateBatcher(runtime).create_once(user_id, body, once)
    assert await clusters_of(runtime, user_id) == []
    assert await available(runtime, user_id) == 100_000_000

    retried = await batching.CreateBatcher(runtime).create_once(user_id, body, once)
    assert isinstance(retried, Cluster)
    replay = await batching.CreateBatcher(runtime).create_once(user_id, body, once)
    assert replay == Answer(201, {"id": str(retried.id)})
    assert await clusters_of(runtime, user_id) == [retried.id]
    assert await available(runtime, user_id) == 100_000_000 - HOLD


async def test_extend_retried_with_its_key_adds_the_time_once(
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    add_device: AddDevice,
    grant: Grant,
) -> None:
    for _ in range(2):
        await add_device(price=1_000_000)
    user_id, headers = await customer(make_user, grant)
    ids = []
    for name in ("a", "b"):
        r = await client.post("/api/v1/clusters", json={**BODY, "name": name}, headers=headers)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    cid = ids[0]
    path = f"/api/v1/clusters/{cid}/extend"
    extend = {"duration_s": HOUR}
    answers = list(
        await asyncio.gather(
            *(client.post(path, json=extend, headers=keyed(headers, "more")) for _ in "123")
        )
    )
    answers += [await client.post(path, json=extend, headers=keyed(headers, "more")) for _ in "45"]
    assert [r.status_code for r in answers] == [200] * 5, [r.text for r in answers]
    assert all(r.json() == answers[0].json() for r in answers)
    assert answers[0].json()["duration_s"] == 2 * HOUR
    async with runtime.sessionmaker() as s:
        cluster = await s.get(Cluster, uuid.UUID(cid))
        assert cluster is not None
        assert cluster.duration_s == 2 * HOUR
        held = await ledger.balance_of(s, billing.held(user_id, hold_ref(cluster.id)))
    assert held == 2 * HOLD
    assert await holds_placed(runtime, "hold_extend") == 1

    for body, other_path in (
        (dict(duration_s=60), path),
        (extend, f"/api/v1/clusters/{ids[1]}/extend"),
    ):
        r = await client.post(other_path, json=body, headers=keyed(headers, "more"))
        assert r.status_code == 409, r.text
        assert r.json()["code"] == "idempotency_key_reused"
