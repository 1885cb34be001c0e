"""The per-process placement index: incremental refresh, and stale indexes racing to book.

Each API process keeps a ``PoolCache``; these tests stand for several processes with several
caches (and ``Runtime`` copies that share the database but not ``state``).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, text, update

from tesai.billing import idempotency
from tesai.billing.idempotency import idempotent_call
from tesai.clusters import service
from tesai.clusters.errors import NoCapacity
from tesai.clusters.models import Cluster, ClusterNode, DeviceReservation
from tesai.clusters.pool import POOL_CACHE_KEY, PoolCache
from tesai.clusters.schemas import ClusterRequest, CreateCluster
from tesai.devices.models import Device, DeviceStatus
from tesai.devices.service import record_transition
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tests.clusters.conftest import AddDevice, Grant

HOUR = 3600
ONE_GPU = ClusterRequest(gpu_model="NVIDIA A100", gpus=1, duration_s=HOUR)


def as_process(runtime: Runtime, cache: PoolCache) -> Runtime:
    """Another API process: same database, its own pool cache."""
    return replace(runtime, state={POOL_CACHE_KEY: cache})


async def refreshed(runtime: Runtime, cache: PoolCache) -> PoolCache:
    async with runtime.sessionmaker() as s:
        await cache.current(s)
    return cache


async def live_nodes(runtime: Runtime) -> dict[uuid.UUID, int]:
    async with runtime.sessionmaker() as s:
        rows = await s.execute(
            select(ClusterNode.device_id, func.count())
            .where(ClusterNode.released_at.is_(None))
            .group_by(ClusterNode.device_id)
        )
        return {device_id: n for device_id, n in rows.tuples()}


async def book(runtime: Runtime, customer: uuid.UUID, req: ClusterRequest = ONE_GPU) -> str:
    """Create a one-node cluster and commit; the booked device's id."""
    async with runtime.sessionmaker() as s:
        cluster = await service.create_cluster(
            s, runtime, customer, CreateCluster(name="c", request=req)
        )
        await s.commit()
        nodes = await service.nodes_of(s, cluster.id)
    assert len(nodes) == 1
    return str(nodes[0].device_id)


async def test_delta_reads_only_changed_devices(
    runtime: Runtime, add_device: AddDevice, make_user, grant: Grant
) -> None:
    cheap = await add_device(price=500_000)
    pricey = await add_device(price=2_000_000)
    leaving = await add_device(price=900_000)
    cache = await refreshed(runtime, PoolCache(refresh_interval_s=0))
    assert cache.stats.full_loads == 1
    index = cache.index
    assert index is not None
    assert len(index) == 3

    # Heartbeat bookkeeping is not a placement change: the rows keep their stamps.
    stamps = select(Device.id, Device.change_xact).order_by(Device.id)
    async with runtime.sessionmaker.begin() as s:
        before = (await s.execute(stamps)).all()
        await s.execute(update(Device).values(last_seen_at=utcnow()))
    async with runtime.sessionmaker() as s:
        assert (await s.execute(stamps)).all() == before
    assert all(stamp is not None for _, stamp in before)

    # A new device, a price change, one going offline, one booked by another process.
    newcomer = await add_device(price=700_000)
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(Device).where(Device.id == pricey.id).values(price_per_gpu_hour_micro=400_000)
        )
        device = await s.get(Device, leaving.id)
        assert device is not None
        record_transition(s, device, DeviceStatus.offline, "missed_heartbeats")
    customer, _ = await make_user()
    await grant(customer.id, 10**10)
    other = as_process(runtime, PoolCache())
    booked = await book(other, customer.id)
    assert booked == str(pricey.id)  # now the cheapest

    await refreshed(runtime, cache)
    assert cache.stats.full_loads == 1  # no second full read, only changes since the watermark
    assert cache.stats.deltas >= 1
    assert cache.index is index
    assert set(d.id for d in index.devices()) == {str(cheap.id), str(pricey.id), str(newcomer.id)}
    assert index.get(str(pricey.id)).price_per_gpu_hour_micro == 400_000
    assert not index.is_free(str(pricey.id))
    assert index.is_free(str(newcomer.id))


async def test_watermark_keeps_a_change_that_commits_after_a_read(
    runtime: Runtime, add_device: AddDevice
) -> None:
    device = await add_device(price=1_000_000)
    cache = await refreshed(runtime, PoolCache(refresh_interval_s=0))
    async with runtime.sessionmaker() as slow:
        # A transaction changes the price, then commits only after another refresh ran.
        await slow.execute(
            update(Device).where(Device.id == device.id).values(price_per_gpu_hour_micro=42)
        )
        await slow.execute(text("SELECT 1"))
        await refreshed(runtime, cache)
        assert cache.index is not None
        assert cache.index.get(str(device.id)).price_per_gpu_hour_micro == 1_000_000
        await slow.commit()
    await refreshed(runtime, cache)
    assert cache.index.get(str(device.id)).price_per_gpu_hour_micro == 42


async def test_stale_index_loses_the_race_and_takes_the_next_device(
    runtime: Runtime, add_device: AddDevice, make_user, grant: Grant
) -> None:
    best = await add_device(price=500_000)
    second = await add_device(price=800_000)
    customer, _ = await make_user()
    await grant(customer.id, 10**10)
    # Process B read the pool before process A booked, and does not refresh again.
    b_cache = await refreshed(runtime, PoolCache(refresh_interval_s=3600))
    a = as_process(runtime, PoolCache())
    b = as_process(runtime, b_cache)
    assert await book(a, customer.id) == str(best.id)

    assert await book(b, customer.id) == str(second.id)  # picked `best`, learnt, retried
    assert b_cache.stats.conflicts == 1
    assert b_cache.stats.deltas == 0  # the retry did not need a refresh

    # Nothing left: a shortfall in numbers, not a lost race.
    with pytest.raises(NoCapacity) as err:
        await book(b, customer.id)
    eliminated = {e["filter"]: e["count"] for e in err.value.extra["eliminated"]}
    assert eliminated.get("rented") == 2, err.value.extra
    assert sorted((await live_nodes(runtime)).values()) == [1, 1]


async def test_concurrent_bookings_of_the_last_device_one_wins(
    runtime: Runtime, add_device: AddDevice, make_user, grant: Grant
) -> None:
    last = await add_device()
    customer, _ = await make_user()
    await grant(customer.id, 10**10)
    a = as_process(runtime, await refreshed(runtime, PoolCache()))
    b = as_process(runtime, await refreshed(runtime, PoolCache()))
    async with a.sessionmaker() as sa, b.sessionmaker() as sb:
        # A has locked the device's row but not committed; B's index still shows it free.
        await service.create_cluster(sa, a, customer.id, CreateCluster(name="a", request=ONE_GPU))
        with pytest.raises(NoCapacity):
            await service.create_cluster(
                sb, b, customer.id, CreateCluster(name="b", request=ONE_GPU)
            )
        await sb.rollback()
        await sa.commit()
    assert await live_nodes(runtime) == {last.id: 1}
    # B gave back what it held: once A's cluster ends, B can place on the device again.
    b_cache = b.state[POOL_CACHE_KEY]
    assert str(last.id) not in b_cache.held()


async def _expire_quotes(runtime: Runtime) -> None:
    """Every quote's hold runs out (a minute later)."""
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(DeviceReservation).values(expires_at=utcnow() - timedelta(seconds=1))
        )


async def test_a_process_never_quotes_the_device_it_rented_itself(
    client: httpx.AsyncClient, runtime: Runtime, add_device: AddDevice, make_user, grant: Grant
) -> None:
    """The CLI's path: ``cluster create`` books in a batch whose transaction first claims
    its Idempotency-Key (a write), while other work commits (heartbeats, the metering tick);
    then ``quote``s reach the same process once its own hold on the device has run out."""
    rented = await add_device(price=500_000)
    free = await add_device(price=800_000)
    cache = PoolCache(refresh_interval_s=0, hold_ttl_s=0)
    runtime.state[POOL_CACHE_KEY] = await refreshed(runtime, cache)
    customer, headers = await make_user()
    await grant(customer.id, 10**10)
    body = CreateCluster(name="c", request=ONE_GPU)
    call = idempotent_call(
        user_id=customer.id,
        route="POST /clusters",
        key=str(uuid.uuid4()),
        params=body.model_dump(mode="json"),
    )
    assert call is not None
    async with runtime.sessionmaker() as s:
        assert await idempotency.claim(s, [call]) == [None]
        async with runtime.sessionmaker.begin() as elsewhere:
            await elsewhere.execute(text("SELECT txid_current()"))
        [cluster] = await service.create_clusters(
            s, runtime, [service.NewCluster(customer.id, body)]
        )
        assert isinstance(cluster, Cluster)
        await s.commit()
    assert await live_nodes(runtime) == {rented.id: 1}

    # The change feed itself tells the process what it booked: not free, no longer held.
    await refreshed(runtime, cache)
    assert cache.index is not None
    assert not cache.index.is_free(str(rented.id))
    assert str(rented.id) not in cache.held()

    for _ in range(5):
        r = await client.post(
            "/api/v1/quotes", json=ONE_GPU.model_dump(mode="json"), headers=headers
        )
        assert r.status_code == 201, r.text
        assert [d["device_id"] for d in r.json()["devices"]] == [str(free.id)]
        await _expire_quotes(runtime)


async def test_a_stale_process_never_quotes_a_device_another_process_rented(
    runtime: Runtime, add_device: AddDevice, make_user, grant: Grant
) -> None:
    best = await add_device(price=500_000)
    second = await add_device(price=800_000)
    customer, _ = await make_user()
    await grant(customer.id, 10**10)
    # Process B read the pool before process A booked, and does not refresh again.
    b_cache = await refreshed(runtime, PoolCache(refresh_interval_s=3600))
    b = as_process(runtime, b_cache)
    assert await book(as_process(runtime, PoolCache()), customer.id) == str(best.id)

    for _ in range(5):
        async with b.sessionmaker() as s:
            quote = await service.create_quote(s, b.settings, customer.id, ONE_GPU, pool=b_cache)
            await s.commit()
        assert [d["device_id"] for d in quote.placement["devices"]] == [str(second.id)]
        await _expire_quotes(runtime)
    assert b_cache.stats.deltas == 0  # learnt from the rows it checked, not from a refresh

    # And the quote books.
    async with b.sessionmaker() as s:
        cluster = await service.create_cluster(
            s, b, customer.id, CreateCluster(name="q", quote_id=quote.id)
        )
        await s.commit()
    assert await live_nodes(runtime) == {best.id: 1, second.id: 1}
    assert cluster.status.value == "provisioning"


async def test_a_device_freed_without_a_change_to_its_row_is_placed_again(
    runtime: Runtime, add_device: AddDevice, make_user, grant: Grant
) -> None:
    """A rented device went offline and came back ``online`` while its lost node was still
    live (not bookable); the reconciler then releases the node, which leaves the device's
    row as it is. The process must still learn that the device is free."""
    device = await add_device()
    customer, _ = await make_user()
    await grant(customer.id, 10**10)
    await book(as_process(runtime, PoolCache()), customer.id)
    async with runtime.sessionmaker.begin() as s:
        row = await s.get(Device, device.id)
        assert row is not None
        record_transition(s, row, DeviceStatus.offline, "missed_heartbeats")
    async with runtime.sessionmaker.begin() as s:
        row = await s.get(Device, device.id)
        assert row is not None
        record_transition(s, row, DeviceStatus.online, "heartbeat_resumed")
    cache = await refreshed(runtime, PoolCache(refresh_interval_s=0))
    assert cache.index is not None
    assert not cache.index.is_free(str(device.id))

    async with runtime.sessionmaker.begin() as s:
        await s.execute(update(ClusterNode).values(released_at=utcnow()))
    await refreshed(runtime, cache)
    assert cache.index.is_free(str(device.id))
    assert cache.stats.full_loads == 1


async def test_a_local_hold_never_frees_a_device_the_database_shows_rented(
    runtime: Runtime, add_device: AddDevice, make_user, grant: Grant
) -> None:
    """A process held a device it chose; another process booked it; the process then read
    the whole pool again (its periodic resync). When the hold runs out the device must stay
    rented in the index."""
    device = await add_device()
    customer, _ = await make_user()
    await grant(customer.id, 10**10)
    cache = await refreshed(runtime, PoolCache(refresh_interval_s=3600))
    cache.hold([str(device.id)], ttl_s=0)
    await book(as_process(runtime, PoolCache()), customer.id)
    async with runtime.sessionmaker() as s:
        await cache.current(s, full=True)
    assert cache.index is not None
    assert not cache.index.is_free(str(device.id))
    assert str(device.id) not in cache.held()
