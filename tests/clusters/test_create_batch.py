"""Cluster creation in batches (group commit): each request gets the answer it would get
alone, nothing of a refused request is written, and two API processes booking the same
devices at once never book one twice."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.audit.models import AuditEvent
from tesai.billing import guardrails, ledger
from tesai.billing import service as billing
from tesai.billing.errors import InsufficientFunds
from tesai.billing.guardrails import SpendCapExceeded
from tesai.billing.models import LedgerAccount
from tesai.clusters import batching, service
from tesai.clusters.errors import InvalidClusterRequest, NoCapacity, PoolChanged
from tesai.clusters.models import (
    Cluster,
    ClusterEvent,
    ClusterNode,
    ClusterStatus,
    DeviceReservation,
    Quote,
)
from tesai.clusters.schemas import ClusterRequest, CreateCluster
from tesai.devices.models import Device, DeviceEvent, DeviceStatus
from tesai.runtime import Runtime, open_runtime
from tests.clusters.conftest import AddDevice, Grant

HOUR = 3600


def _new(customer: uuid.UUID, gpus: int = 1, model: str = "NVIDIA A100") -> service.NewCluster:
    request = ClusterRequest(gpu_model=model, gpus=gpus, duration_s=HOUR)
    return service.NewCluster(customer, CreateCluster(name="b", request=request))


async def _funded(make_user, grant: Grant, credit: int = 100_000_000):  # type: ignore[no-untyped-def]
    """A customer with ``credit`` micro-USDC available."""
    user, _ = await make_user()
    await grant(user.id, credit)
    return user


async def test_a_batch_answers_each_request_as_one_by_one_and_writes_only_the_booked(
    runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(6):
        await add_device(price=1_000_000)  # 1.1 USDC an hour with the fee
    rich, _ = await make_user()
    poor, _ = await make_user()
    capped, _ = await make_user()
    await grant(rich.id, 100_000_000)
    await grant(poor.id, 1_000_000)
    await grant(capped.id, 100_000_000)
    async with runtime.sessionmaker.begin() as s:
        await guardrails.set_cap(s, runtime.settings, capped.id, 2_000_000)

    items = [
        _new(rich.id, gpus=2),  # booked
        _new(poor.id),  # 1.1 USDC needed, 1 available: 402
        _new(capped.id),  # 1.1 of a 2 USDC cap: booked
        _new(capped.id),  # 2.2 of 2: over the cap
        _new(rich.id, model="NVIDIA H100"),  # none listed: no capacity, in numbers
        service.NewCluster(
            rich.id,
            CreateCluster(request=ClusterRequest(gpus=3, nodes=2, duration_s=HOUR)),
        ),  # 3 GPUs cannot split over 2 nodes
        _new(rich.id),
    ]
    async with runtime.sessionmaker() as s:
        out = await service.create_clusters(s, runtime, items)
        await s.commit()

    kinds = [type(o) for o in out]
    assert kinds == [
        Cluster,
        InsufficientFunds,
        Cluster,
        SpendCapExceeded,
        NoCapacity,
        InvalidClusterRequest,
        Cluster,
    ], out
    booked = [o for o in out if isinstance(o, Cluster)]
    assert [c.status for c in booked] == [ClusterStatus.provisioning] * 3
    assert [c.hold_micro for c in booked] == [2_200_000, 1_100_000, 1_100_000]

    async with runtime.sessionmaker() as s:
        clusters = {c.id: c for c in (await s.scalars(select(Cluster))).all()}
        assert set(clusters) == {c.id for c in booked}
        for c in booked:
            row = clusters[c.id]
            assert (row.status, row.hold_micro, row.customer_id) == (
                ClusterStatus.provisioning,
                c.hold_micro,
                c.customer_id,
            )
            events = (
                await s.scalars(
                    select(ClusterEvent.reason)
                    .where(ClusterEvent.cluster_id == c.id)
                    .order_by(ClusterEvent.id)
                )
            ).all()
            assert events == ["created", "provisioning"]
            held = await ledger.balance_of(s, billing.held(c.customer_id, service.hold_ref(c.id)))
            assert held == c.hold_micro
        nodes = (await s.execute(select(ClusterNode.cluster_id, ClusterNode.device_id))).all()
        assert len(nodes) == 4
        assert len({d for _, d in nodes}) == 4
        # The devices the refused requests had chosen are free again.
        statuses = sorted((await s.scalars(select(Device.status))).all())
        assert statuses == sorted([DeviceStatus.busy] * 4 + [DeviceStatus.online] * 2)
        assert (
            await s.scalar(
                select(func.count()).select_from(DeviceEvent).where(DeviceEvent.reason == "rented")
            )
            == 4
        )
        assert (
            await s.scalar(
                select(func.count()).select_from(Quote).where(Quote.used_at.is_not(None))
            )
            == 3
        )
        # The refused holds moved nothing and left no empty hold account behind.
        assert await ledger.balance_of(s, billing.available(poor.id)) == 1_000_000
        assert await ledger.balance_of(s, billing.available(capped.id)) == 98_900_000
        assert await ledger.balance_of(s, billing.available(rich.id)) == 100_000_000 - 3_300_000
        hold_accounts = await s.scalar(
            select(func.count())
            .select_from(LedgerAccount)
            .where(LedgerAccount.kind == ledger.AccountKind.CUSTOMER_HELD)
        )
        assert hold_accounts == 3
        assert (
            await s.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "money.hold")
            )
            == 3
        )


async def test_a_quote_gives_its_devices_up_to_its_own_customer_alone_in_a_batch(
    runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    """Customer A quoted the best device; B's request comes first in the same batch as A's
    create without the quote. A's quote keeps the device from B and gives it to A; a refused
    create of another quoting customer gives their quote its device back."""
    best = await add_device(price=500_000)
    other = await add_device(price=900_000)
    last = await add_device(price=2_000_000)
    a = await _funded(make_user, grant)
    b = await _funded(make_user, grant)
    poor = await _funded(make_user, grant, credit=100)
    one = ClusterRequest(gpu_model="NVIDIA A100", gpus=1, duration_s=HOUR)
    async with runtime.sessionmaker() as s:
        quote = await service.create_quote(s, runtime.settings, a.id, one)
        poor_quote = await service.create_quote(s, runtime.settings, poor.id, one)
        await s.commit()
    assert [d["device_id"] for d in quote.placement["devices"]] == [str(best.id)]
    assert [d["device_id"] for d in poor_quote.placement["devices"]] == [str(other.id)]

    async with runtime.sessionmaker() as s:
        out = await service.create_clusters(s, runtime, [_new(b.id), _new(a.id), _new(poor.id)])
        await s.commit()
    assert [type(o) for o in out] == [Cluster, Cluster, InsufficientFunds], out
    async with runtime.sessionmaker() as s:
        rows = await s.execute(select(ClusterNode.cluster_id, ClusterNode.device_id))
        nodes = {cluster_id: device_id for cluster_id, device_id in rows.tuples()}
        reservations = (
            await s.execute(select(DeviceReservation.device_id, DeviceReservation.quote_id))
        ).all()
    assert nodes == {out[0].id: last.id, out[1].id: best.id}
    assert reservations == [(other.id, poor_quote.id)]


async def test_two_api_processes_booking_at_once_never_book_a_device_twice(
    runtime: Runtime, settings, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(6):
        await add_device()
    customers = []
    for _ in range(4):
        user, _ = await make_user()
        await grant(user.id, 100_000_000)
        customers.append(user.id)
    other = await open_runtime(settings, run_periodic=False)  # a second API process
    try:

        async def batch(rt: Runtime, who: list[uuid.UUID]) -> list[object]:
            async with rt.sessionmaker() as s:
                out = await service.create_clusters(s, rt, [_new(c) for c in who])
                await s.commit()
                return list(out)

        results = await asyncio.gather(
            batch(runtime, customers * 2), batch(other, list(reversed(customers)) * 2)
        )
    finally:
        await other.close()
    answers = [o for r in results for o in r]
    booked = [o for o in answers if isinstance(o, Cluster)]
    assert len(booked) == 6, answers  # every device, each once
    assert all(isinstance(o, NoCapacity) for o in answers if not isinstance(o, Cluster))
    async with runtime.sessionmaker() as s:
        devices = (await s.scalars(select(ClusterNode.device_id))).all()
        assert len(devices) == len(set(devices)) == 6
        assert (await s.scalars(select(Device.status))).all() == [DeviceStatus.busy] * 6
        for c in booked:
            held = await ledger.balance_of(s, billing.held(c.customer_id, service.hold_ref(c.id)))
            assert held == c.hold_micro


async def test_concurrent_posts_are_committed_together(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(8):
        await add_device()
    users = [await make_user() for _ in range(8)]
    for user, _ in users:
        await grant(user.id, 100_000_000)
    body = {"request": {"gpu_model": "NVIDIA A100", "gpus": 1, "duration_s": HOUR}}
    sizes: list[int] = []
    real = service.create_clusters

    async def spy(session, rt, items):  # type: ignore[no-untyped-def]
        sizes.append(len(items))
        return await real(session, rt, items)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(service, "create_clusters", spy)
        results = await asyncio.gather(
            *(client.post("/api/v1/clusters", json=body, headers=h) for _, h in users)
        )
    assert [r.status_code for r in results] == [201] * 8, [r.text for r in results]
    assert sum(sizes) == 8
    assert max(sizes) > 1, sizes  # not one transaction each
    ids = {r.json()["id"] for r in results}
    async with runtime.sessionmaker() as s:
        assert set(map(str, (await s.scalars(select(Cluster.id))).all())) == ids


async def test_a_batch_that_fails_whole_is_retried_one_by_one(
    runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(2):
        await add_device()
    user, _ = await make_user()
    await grant(user.id, 1_500_000)  # one cluster's hold, not two

    async def broken(session, rt, items):  # type: ignore[no-untyped-def]
        raise RuntimeError("the batch's transaction failed")

    batcher = batching.CreateBatcher(runtime)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(service, "create_clusters", broken)
        results = await asyncio.gather(
            *(batcher.create(user.id, _new(user.id).body) for _ in range(2)),
            return_exceptions=True,
        )
    assert sorted(type(r).__name__ for r in results) == ["Cluster", "InsufficientFunds"]
    async with runtime.sessionmaker() as s:
        assert len((await s.scalars(select(Cluster.id))).all()) == 1


async def test_a_lost_race_waits_for_the_next_batch(
    runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device()
    user = await _funded(make_user, grant)
    calls = 0
    real = service.create_clusters

    async def loses_once(session, rt, items):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            return [PoolChanged("The pool changed while placing; try again") for _ in items]
        return await real(session, rt, items)

    batcher = batching.CreateBatcher(runtime)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(service, "create_clusters", loses_once)
        cluster = await batcher.create(user.id, _new(user.id).body)
    assert isinstance(cluster, Cluster)
    assert calls == 2

    async def always_loses(session, rt, items):  # type: ignore[no-untyped-def]
        return [PoolChanged("The pool changed while placing; try again") for _ in items]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(service, "create_clusters", always_loses)
        with pytest.raises(PoolChanged):
            await batcher.create(user.id, _new(user.id).body)


async def test_a_hold_refused_for_funds_does_not_count_against_the_cap(
    runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(3):
        await add_device(price=1_000_000)  # 1.1 USDC an hour with the fee
    user, _ = await make_user()
    await grant(user.id, 2_000_000)
    async with runtime.sessionmaker.begin() as s:
        await guardrails.set_cap(s, runtime.settings, user.id, 3_000_000)
    # 2.2 fits the cap but not the funds; then 1.1 fits both, as it would alone.
    async with runtime.sessionmaker() as s:
        out = await service.create_clusters(s, runtime, [_new(user.id, gpus=2), _new(user.id)])
        await s.commit()
    assert [type(o) for o in out] == [InsufficientFunds, Cluster], out


async def test_a_commit_that_failed_on_the_way_back_is_not_booked_twice(
    runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(2):
        await add_device()
    user = await _funded(make_user, grant)
    real_commit = AsyncSession.commit
    failures: list[str] = []

    async def lost_answer(self: AsyncSession) -> None:  # committed, then the line drops
        await real_commit(self)
        if not failures:
            failures.append("after")
            raise ConnectionResetError("connection lost while committing")

    batcher = batching.CreateBatcher(runtime)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AsyncSession, "commit", lost_answer)
        cluster = await batcher.create(user.id, _new(user.id).body)
    assert failures == ["after"]
    async with runtime.sessionmaker() as s:
        assert (await s.scalars(select(Cluster.id))).all() == [cluster.id]

    async def refused(self: AsyncSession) -> None:  # never committed
        if len(failures) == 1:
            failures.append("before")
            await self.rollback()
            raise ConnectionResetError("connection lost before committing")
        await real_commit(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AsyncSession, "commit", refused)
        second = await batcher.create(user.id, _new(user.id).body)  # retried alone
    assert failures == ["after", "before"]
    async with runtime.sessionmaker() as s:
        assert sorted(map(str, (await s.scalars(select(Cluster.id))).all())) == sorted(
            [str(cluster.id), str(second.id)]
        )


async def test_a_request_that_went_away_while_waiting_is_left_out(
    runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(2):
        await add_device()
    user = await _funded(make_user, grant)
    batcher = batching.CreateBatcher(runtime)
    kept = asyncio.create_task(batcher.create(user.id, _new(user.id).body))
    gone = asyncio.create_task(batcher.create(user.id, _new(user.id).body))
    await asyncio.sleep(0)  # both queued; the batch has not formed yet
    gone.cancel()
    cluster = await kept
    with pytest.raises(asyncio.CancelledError):
        await gone
    async with runtime.sessionmaker() as s:
        assert (await s.scalars(select(Cluster.id))).all() == [cluster.id]
