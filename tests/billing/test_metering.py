"""Metering into minute buckets and batched settlement, on the real database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from tesai.billing import holds, metering, service, statements
from tesai.billing.ledger import account_id, balance_of, set_fault_hook
from tesai.billing.models import HoldTotals, NodeMeter, UsageBucket
from tesai.billing.money import customer_charge, settle_hold
from tesai.runtime import Runtime
from tests.billing.conftest import NewUser

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
PRICE = 3_600_000  # 1,000 micro-USDC per second


class Crash(Exception):
    pass


@contextmanager
def crash_at(point: str) -> Iterator[None]:
    """The ledger's checkpoint ``point`` raises ``Crash`` inside the block, which must fail."""

    def hook(name: str) -> None:
        if name == point:
            raise Crash(name)

    set_fault_hook(hook)
    try:
        with pytest.raises(Crash):
            yield
    finally:
        set_fault_hook(None)


async def _cluster(
    runtime: Runtime, new_user: NewUser, nodes: int
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, list[uuid.UUID]]:
    customer, provider = await new_user(), await new_user(("provider",))
    cluster = uuid.uuid4()
    node_ids = [uuid.uuid4() for _ in range(nodes)]
    async with runtime.sessionmaker() as s, s.begin():
        await service.admin_grant_credit(
            s,
            admin_user_id=None,
            user_id=customer,
            amount_micro=10_000_000,
            reason="t",
            idempotency_key=f"g{cluster}",
        )
        await holds.place_cluster_hold(
            s,
            customer_user_id=customer,
            cluster_id=cluster,
            amount_micro=1_000_000,
            idempotency_key=f"h{cluster}",
        )
        for node in node_ids:
            await metering.start_meter(
                s,
                node_id=node,
                cluster_id=cluster,
                device_id=uuid.uuid4(),
                customer_user_id=customer,
                provider_user_id=provider,
                price_per_hour_micro=PRICE,
                started_at=T0,
            )
    return customer, provider, cluster, node_ids


async def _one_bucket_per_node_and_minute(runtime: Runtime) -> None:
    """What the watermark guarantees (no unique index does it): never two buckets of one
    node for one minute."""
    async with runtime.sessionmaker() as s:
        twice = await s.scalar(
            text(
                "SELECT count(*) FROM (SELECT 1 FROM usage_buckets GROUP BY node_id, minute"
                " HAVING count(*) > 1) AS d"
            )
        )
    assert twice == 0


async def test_node_down_30s_is_billed_30s_less(runtime: Runtime, new_user: NewUser) -> None:
    customer, provider, cluster, (up, flaky) = await _cluster(runtime, new_user, 2)
    async with runtime.sessionmaker() as s, s.begin():
        for t in range(10, 181, 10):  # ticks every 10 s for 3 minutes
            down = [flaky] if 60 < t <= 90 else []
            await metering.meter_tick(s, now=T0 + timedelta(seconds=t), unhealthy=down)
        await metering.meter_tick(s, now=T0 + timedelta(seconds=180))  # replay: nothing new
    async with runtime.sessionmaker() as s:
        seconds = dict(
            (
                await s.execute(
                    select(UsageBucket.node_id, func.sum(UsageBucket.seconds)).group_by(
                        UsageBucket.node_id
                    )
                )
            ).all()
        )
    assert seconds == {up: 180, flaky: 150}

    async with runtime.sessionmaker() as s, s.begin():
        batch = await metering.settle_usage_batch(
            s, before=T0 + timedelta(minutes=3), fee_bps=1000, idempotency_key="b1"
        )
        again = await metering.settle_usage_batch(
            s, before=T0 + timedelta(minutes=3), fee_bps=1000, idempotency_key="b2"
        )
    assert (batch.buckets, batch.provider_micro, batch.fee_micro) == (6, 330_000, 33_000)
    assert again.transaction_id is None
    assert again.buckets == 0
    async with runtime.sessionmaker() as s:
        assert await balance_of(s, service.earnings(provider)) == 330_000
        assert (
            await holds.cluster_hold_balance(s, customer_user_id=customer, cluster_id=cluster)
            == 1_000_000 - 363_000
        )
        assert await s.scalar(text("SELECT sum(amount) FROM ledger_postings")) == 0


async def test_incomplete_minute_is_not_settled_and_short_hold_is_reported(
    runtime: Runtime, new_user: NewUser
) -> None:
    customer, _, cluster, (node,) = await _cluster(runtime, new_user, 1)
    async with runtime.sessionmaker() as s, s.begin():
        await metering.meter_tick(s, now=T0 + timedelta(seconds=90))
        batch = await metering.settle_usage_batch(
            s, before=T0 + timedelta(minutes=5), fee_bps=0, idempotency_key="c1"
        )
        assert batch.buckets == 1
        assert batch.provider_micro == 60_000
        await metering.meter_tick(s, now=T0 + timedelta(seconds=120))
        batch = await metering.settle_usage_batch(
            s, before=T0 + timedelta(minutes=5), fee_bps=0, idempotency_key="c2"
        )
        assert batch.buckets == 1
        assert batch.provider_micro == 60_000
        # Drain the hold: the next batch cannot pay and reports it instead of failing; the
        # bucket is settled as far as the hold goes (nothing) with its shortfall recorded.
        await holds.release_cluster_hold(
            s, customer_user_id=customer, cluster_id=cluster, idempotency_key="r"
        )
        await metering.meter_tick(s, now=T0 + timedelta(seconds=180))
        batch = await metering.settle_usage_batch(
            s, before=T0 + timedelta(minutes=5), fee_bps=0, idempotency_key="c3"
        )
        assert batch.short_holds
        assert (batch.buckets, batch.transaction_id, batch.shortfall_micro) == (1, None, 60_000)
        assert await metering.unsettled_seconds(s, node) == 0


async def test_a_crash_at_any_point_of_a_tick_counts_each_second_once(
    runtime: Runtime, new_user: NewUser
) -> None:
    """Crashes inside the metering stage, between the stages and inside settlement: each
    stage is replayed with the same inputs, and the minute is charged exactly once."""
    customer, provider, cluster, nodes = await _cluster(runtime, new_user, 3)
    now = T0 + timedelta(minutes=2)

    async def tick_then_die() -> None:
        async with runtime.sessionmaker() as s, s.begin():
            await metering.meter_tick(s, now=now)
            raise Crash

    async def settle_then_die() -> None:
        async with runtime.sessionmaker() as s, s.begin():
            await metering.settle_usage_batch(s, before=now, fee_bps=1000, idempotency_key="t")
            raise Crash

    # 1. The metering stage dies after its statement, before commit: nothing stays.
    with pytest.raises(Crash):
        await tick_then_die()
    async with runtime.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(UsageBucket)) == 0
    # 2. Replayed, it commits; the process dies before settling (between the stages), and
    #    the tick is replayed once more after the restart: the watermark makes it a no-op.
    for _ in range(2):
        async with runtime.sessionmaker() as s, s.begin():
            await metering.meter_tick(s, now=now)
    # 3. Settlement dies after its ledger statement (checkpoint "batch_posted"), then again
    #    before its commit: both roll back whole.
    for point in ("batch_claimed", "batch_posted"):
        with crash_at(point):
            async with runtime.sessionmaker() as s, s.begin():
                await metering.settle_usage_batch(
                    s, before=now, fee_bps=1000, idempotency_key=f"t:{point}"
                )
    with pytest.raises(Crash):
        await settle_then_die()
    async with runtime.sessionmaker() as s:
        assert await balance_of(s, service.earnings(provider)) == 0
    # 4. The replay settles; a replay of the settled run (its caller never heard) does not.
    for key in ("t", "t-again"):
        async with runtime.sessionmaker() as s, s.begin():
            await metering.meter_tick(s, now=now)
            await metering.settle_usage_batch(s, before=now, fee_bps=1000, idempotency_key=key)
    provider_micro = 3 * 120 * 1000  # 3 nodes × 120 s × 1,000 µUSDC/s
    async with runtime.sessionmaker() as s:
        assert await balance_of(s, service.earnings(provider)) == provider_micro
        assert (
            await holds.cluster_hold_balance(s, customer_user_id=customer, cluster_id=cluster)
            == 1_000_000 - provider_micro * 11 // 10
        )
        assert await s.scalar(select(func.count()).select_from(UsageBucket)) == 6
        assert (
            await s.scalar(
                select(func.count()).select_from(UsageBucket).where(UsageBucket.settled.is_(False))
            )
            == 0
        )
        assert (
            await s.scalar(
                text("SELECT count(*) FROM ledger_transactions WHERE kind = 'settle_batch'")
            )
            == 1
        )
        assert await s.scalar(text("SELECT sum(amount) FROM ledger_postings")) == 0
        assert [await metering.unsettled_seconds(s, n) for n in nodes] == [0, 0, 0]
    await _one_bucket_per_node_and_minute(runtime)


async def test_meter_nodes_meters_only_the_listed_nodes_and_reports_their_seconds(
    runtime: Runtime, new_user: NewUser
) -> None:
    _, _, _, (a, b, c) = await _cluster(runtime, new_user, 3)
    async with runtime.sessionmaker() as s, s.begin():
        got = await metering.meter_nodes(
            s, now=T0 + timedelta(seconds=90), node_ids=[a, b], unhealthy=[b]
        )
        # A replay moves nothing; an earlier ``now`` neither.
        again = await metering.meter_nodes(s, now=T0 + timedelta(seconds=90), node_ids=[a, b])
        earlier = await metering.meter_nodes(s, now=T0 + timedelta(seconds=30), node_ids=[a])
        # One node over an interval that skips a gap (not billed) and spans two minutes.
        billed = await metering.record_interval(
            s, c, T0 + timedelta(seconds=50), T0 + timedelta(seconds=130), healthy=True
        )
        await metering.stop_meter(s, a)
        stopped = await metering.meter_nodes(s, now=T0 + timedelta(minutes=5), node_ids=[a])
    assert got == {a: 90, b: 0}
    assert again == {}
    assert earlier == {}
    assert stopped == {}
    assert billed == 80
    async with runtime.sessionmaker() as s:
        rows = (
            await s.execute(
                select(UsageBucket.node_id, UsageBucket.minute, UsageBucket.seconds).order_by(
                    UsageBucket.node_id, UsageBucket.minute
                )
            )
        ).all()
    assert sorted((n, m - T0, sec) for n, m, sec in rows) == sorted(
        [
            (a, timedelta(0), 60),
            (a, timedelta(minutes=1), 30),
            (c, timedelta(0), 10),
            (c, timedelta(minutes=1), 60),
        ]
    )
    # A bucket is written when its minute closes (a's at its stop); c's minute in progress
    # waits on its meter and counts as unsettled.
    async with runtime.sessionmaker() as s:
        meter = await s.get(NodeMeter, c)
        assert meter is not None
        assert (meter.open_minute, meter.open_seconds) == (T0 + timedelta(minutes=2), 10)
        assert await metering.unsettled_seconds(s, c) == 80


async def test_two_ticks_at_once_count_each_second_once(
    runtime: Runtime, new_user: NewUser
) -> None:
    """A second tick that read the meters before the first committed waits on their row
    locks and then sees the moved watermark: nothing is counted twice."""
    _, _, _, nodes = await _cluster(runtime, new_user, 2)
    now = T0 + timedelta(seconds=45)

    async def second() -> int:
        async with runtime.sessionmaker() as s, s.begin():
            return await metering.meter_tick(s, now=now)

    async with runtime.sessionmaker() as first:
        await first.begin()
        assert await metering.meter_tick(first, now=now) == 2
        other = asyncio.create_task(second())
        await asyncio.sleep(0.5)
        assert not other.done()  # waiting on the meters the first tick holds
        await first.commit()
    assert await other == 0
    async with runtime.sessionmaker() as s:
        assert [await metering.unsettled_seconds(s, n) for n in nodes] == [45, 45]
    await _one_bucket_per_node_and_minute(runtime)


async def test_the_tick_settles_each_minute_as_it_closes_exactly_once(
    runtime: Runtime, new_user: NewUser
) -> None:
    """``meter_and_settle``: closed minutes are written settled, with their postings, by the
    same statement; the minute in progress waits on the meter; crashes inside the tick roll
    it back whole and a replay counts nothing twice; a hold that cannot pay is reported and
    it pays what it has (here nothing) and its buckets carry what it could not pay."""
    customer, provider, cluster, (up, flaky) = await _cluster(runtime, new_user, 2)

    async def tick(
        at: int, key: str, down: list[uuid.UUID] | None = None
    ) -> metering.BatchSettlement:
        async with runtime.sessionmaker() as s, s.begin():
            return await metering.meter_and_settle(
                s,
                now=T0 + timedelta(seconds=at),
                fee_bps=1000,
                idempotency_key=key,
                unhealthy=down or [],
            )

    for point in ("batch_claimed", "batch_posted"):
        with crash_at(point):
            await tick(90, f"k:{point}")
    first = await tick(90, "k90")
    assert (first.moved, first.buckets, first.provider_micro, first.fee_micro) == (
        2,
        2,
        120_000,
        12_000,
    )
    assert (await tick(90, "k90-replay")).moved == 0
    # The flaky node is down from 90 s to 150 s: those seconds are never billed.
    assert (await tick(150, "k150", down=[flaky])).buckets == 2  # minute 1 of both nodes
    assert (await tick(180, "k180")).buckets == 2  # minute 2 of both nodes
    async with runtime.sessionmaker() as s:
        seconds = dict(
            (
                await s.execute(
                    select(UsageBucket.node_id, func.sum(UsageBucket.seconds))
                    .where(UsageBucket.settled)
                    .group_by(UsageBucket.node_id)
                )
            ).all()
        )
        assert seconds == {up: 180, flaky: 120}
        assert await balance_of(s, service.earnings(provider)) == 300_000
        assert (
            await holds.cluster_hold_balance(s, customer_user_id=customer, cluster_id=cluster)
            == 1_000_000 - 330_000
        )
        assert await s.scalar(text("SELECT sum(amount) FROM ledger_postings")) == 0
        assert (
            await s.scalar(
                text("SELECT count(*) FROM ledger_transactions WHERE kind = 'settle_batch'")
            )
            == 3
        )

    # The hold is drained: the next closed minutes cannot be paid; they are settled as far
    # as the hold goes (nothing), their usage recorded as unpaid.
    async with runtime.sessionmaker() as s, s.begin():
        await holds.release_cluster_hold(
            s, customer_user_id=customer, cluster_id=cluster, idempotency_key="drain"
        )
    short = await tick(240, "k240")
    assert short.short_holds
    assert (short.buckets, short.transaction_id, short.shortfall_micro) == (2, None, 120_000)
    async with runtime.sessionmaker() as s:
        assert [await metering.unsettled_seconds(s, n) for n in (up, flaky)] == [0, 0]
        assert await s.scalar(select(func.sum(UsageBucket.unpaid_micro))) == 120_000
        assert await balance_of(s, service.earnings(provider)) == 300_000
    await _one_bucket_per_node_and_minute(runtime)


async def test_racing_ticks_and_node_stops_account_every_second_once(
    runtime: Runtime, new_user: NewUser
) -> None:
    """Ticks with and without settlement, a reconciler metering one node and another node
    stopping, all at once and across minute boundaries: each node's buckets and minute in
    progress add up to exactly its billed seconds and their rounded price, once."""
    _, _, cluster, nodes = await _cluster(runtime, new_user, 4)

    async def once(op: str, now: datetime) -> None:
        async with runtime.sessionmaker() as s, s.begin():
            if op == "settle":
                await metering.meter_and_settle(
                    s, now=now, fee_bps=1000, idempotency_key=f"race:{now.isoformat()}"
                )
            elif op == "meter":
                await metering.meter_tick(s, now=now)
            elif op == "node":
                await metering.meter_nodes(s, now=now, node_ids=nodes[:2])
            else:
                await metering.meter_nodes(s, now=now, node_ids=[nodes[3]])
                await metering.stop_meter(s, nodes[3])

    async def run(op: str, at: int) -> None:
        # Without the settlement lock (which production takes first, and which would run
        # these one after the other), two statements updating several meters in different
        # orders can deadlock: PostgreSQL rolls one back whole, and it is run again, as a
        # task would be.
        for attempt in range(5):
            try:
                return await once(op, T0 + timedelta(seconds=at))
            except DBAPIError as exc:
                if "deadlock detected" not in str(exc) or attempt == 4:
                    raise

    schedule = [("settle", 70), ("meter", 65), ("node", 75), ("settle", 130), ("meter", 125)]
    schedule += [("node", 185), ("stop", 100), ("settle", 200), ("meter", 61), ("settle", 250)]
    await asyncio.gather(*(run(op, at) for op, at in schedule))
    await run("settle", 300)
    async with runtime.sessionmaker() as s:
        for node in nodes:
            meter = await s.get(NodeMeter, node)
            assert meter is not None
            seconds, amount = (
                await s.execute(
                    select(
                        func.coalesce(func.sum(UsageBucket.seconds), 0),
                        func.coalesce(func.sum(UsageBucket.amount_micro), 0),
                    ).where(UsageBucket.node_id == node)
                )
            ).one()
            assert seconds + meter.open_seconds == meter.billed_seconds
            assert amount + meter.open_amount == meter.billed_seconds * PRICE // 3600
            # All healthy: billed from T0 to the watermark (where the stopped node stopped).
            assert meter.billed_seconds == (meter.metered_until - T0).total_seconds()
            assert meter.active is (node != nodes[3])
            if meter.active:
                assert meter.billed_seconds == 300
        # What budgets read: the same total off the meters alone.
        used = await s.scalar(select(func.sum(UsageBucket.amount_micro)))
        used += await s.scalar(select(func.sum(NodeMeter.open_amount)))
        assert await metering.spent_by_cluster(s, 1000, [cluster]) == {
            cluster: customer_charge(used, 1000)
        }
        assert await s.scalar(text("SELECT sum(amount) FROM ledger_postings")) == 0
    await _one_bucket_per_node_and_minute(runtime)


async def test_a_node_stop_and_the_tick_at_once_do_not_deadlock(
    runtime: Runtime, new_user: NewUser
) -> None:
    """The lock order: a transaction that stops a node takes the settlement lock before it
    touches the meter (as ``clusters.reconcile.stop_node_meter`` does). The tick, which
    holds that lock while it updates every meter, then simply waits for it; had the stop
    locked the meter first and waited for the lock to settle, the two would deadlock."""
    _, provider, _, (staying, leaving) = await _cluster(runtime, new_user, 2)
    stop_has_meter = asyncio.Event()

    async def stop() -> None:
        async with runtime.sessionmaker() as s, s.begin():
            await metering.settlement_lock(s)
            await metering.meter_nodes(s, now=T0 + timedelta(seconds=90), node_ids=[leaving])
            stop_has_meter.set()
            await asyncio.sleep(0.5)  # the tick starts meanwhile
            await metering.stop_meter(s, leaving)
            await metering.settle_usage_batch(
                s, before=T0 + timedelta(minutes=5), fee_bps=1000, idempotency_key="stop"
            )

    async def tick() -> metering.BatchSettlement:
        await stop_has_meter.wait()
        async with runtime.sessionmaker() as s, s.begin():
            return await metering.meter_and_settle(
                s, now=T0 + timedelta(seconds=120), fee_bps=1000, idempotency_key="tick"
            )

    _, ticked = await asyncio.gather(stop(), tick())
    assert ticked.moved == 1  # only the staying node: the other had stopped
    async with runtime.sessionmaker() as s:
        assert await balance_of(s, service.earnings(provider)) == (90 + 120) * 1000
        assert [await metering.unsettled_seconds(s, n) for n in (staying, leaving)] == [0, 0]


# --- holds always pay for what they were computed for; a short hold pays what it has ---------


async def _funded_node(
    runtime: Runtime,
    new_user: NewUser,
    *,
    price: int,
    hold: int,
    started_at: datetime = T0,
    billable_until: datetime | None = None,
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID]:
    """One metered node of a cluster whose hold is ``hold``: customer, provider, cluster,
    node."""
    customer, provider = await new_user(), await new_user(("provider",))
    cluster, node = uuid.uuid4(), uuid.uuid4()
    async with runtime.sessionmaker() as s, s.begin():
        await service.admin_grant_credit(
            s,
            admin_user_id=None,
            user_id=customer,
            amount_micro=100_000_000,
            reason="t",
            idempotency_key=f"g{cluster}",
        )
        await holds.place_cluster_hold(
            s,
            customer_user_id=customer,
            cluster_id=cluster,
            amount_micro=hold,
            idempotency_key=f"h{cluster}",
        )
        await metering.start_meter(
            s,
            node_id=node,
            cluster_id=cluster,
            device_id=uuid.uuid4(),
            customer_user_id=customer,
            provider_user_id=provider,
            price_per_hour_micro=price,
            started_at=started_at,
            billable_until=billable_until,
        )
    return customer, provider, cluster, node


async def _fees(runtime: Runtime) -> int:
    async with runtime.sessionmaker() as s:
        return await balance_of(s, service.FEES)


async def _end_of_cluster(
    runtime: Runtime, customer: uuid.UUID, cluster: uuid.UUID, node: uuid.UUID, key: str
) -> int:
    """The cluster ends as the reconciler ends it: the node stops, the sweep settles, the
    hold is released; returns what the release gave back."""
    async with runtime.sessionmaker() as s, s.begin():
        await metering.settlement_lock(s)
        await metering.stop_meter(s, node)
        await metering.settle_usage_batch(
            s, before=T0 + timedelta(days=1), fee_bps=1000, idempotency_key=f"final:{key}"
        )
        released = await holds.release_cluster_hold(
            s, customer_user_id=customer, cluster_id=cluster, idempotency_key=f"release:{key}"
        )
    return int(released.result["amount"])


async def _nothing_unsettled(runtime: Runtime) -> None:
    async with runtime.sessionmaker() as s:
        assert await s.scalar(select(func.count()).where(UsageBucket.settled.is_(False))) == 0
        assert await s.scalar(text("SELECT sum(amount) FROM ledger_postings")) == 0


async def test_an_hour_at_one_usdc_is_paid_in_full_by_the_hold_made_for_it(
    runtime: Runtime, new_user: NewUser
) -> None:
    """1 USDC/h for exactly 3,600 s, held as 1,100,000 (price + 10 % fee), settled minute by
    minute: the fee rounds once over the hold (100,000), not up on every minute (60 ×
    1,667 = 100,020, which left the last minute unpaid and refunded)."""
    price = 1_000_000
    hold = holds.cluster_hold_amount(
        gpus=1, price_per_gpu_hour_micro=price, duration_s=3600, fee_bps=1000
    )
    assert hold == 1_100_000
    customer, provider, cluster, node = await _funded_node(
        runtime, new_user, price=price, hold=hold, billable_until=T0 + timedelta(hours=1)
    )
    fees_before = await _fees(runtime)
    for minute in range(1, 62):
        async with runtime.sessionmaker() as s, s.begin():
            batch = await metering.meter_and_settle(
                s, now=T0 + timedelta(minutes=minute), fee_bps=1000, idempotency_key=f"m{minute}"
            )
        assert batch.short_holds == []
    assert await _end_of_cluster(runtime, customer, cluster, node, "hour") == 0
    async with runtime.sessionmaker() as s:
        assert await balance_of(s, service.earnings(provider)) == 1_000_000
        totals = await s.get(
            HoldTotals, await account_id(s, service.held(customer, f"cluster:{cluster}"))
        )
        assert totals is not None
        assert (totals.provider_micro, totals.fee_micro, totals.shortfall_micro) == (
            1_000_000,
            100_000,
            0,
        )
    assert await _fees(runtime) - fees_before == 100_000
    await _nothing_unsettled(runtime)


@pytest.mark.parametrize("path", ["tick", "sweep"])
async def test_a_short_hold_pays_what_it_has_and_records_the_shortfall(
    runtime: Runtime, new_user: NewUser, path: str
) -> None:
    """A hold of 100,000 for two minutes at 1,000 µUSDC/s + 10 %: the first minute
    (66,000) is paid; of the second, the provider gets the largest part the remaining
    34,000 can pay with its fee, the hold is emptied, and the part it could not pay is
    recorded — the usage is not left unsettled while the release hands the 34,000 back."""
    customer, provider, cluster, node = await _funded_node(
        runtime, new_user, price=PRICE, hold=100_000
    )
    fees_before = await _fees(runtime)
    for minute in (1, 2):
        async with runtime.sessionmaker() as s, s.begin():
            now = T0 + timedelta(minutes=minute)
            if path == "tick":
                batch = await metering.meter_and_settle(
                    s, now=now, fee_bps=1000, idempotency_key=f"t{minute}"
                )
            else:
                await metering.meter_tick(s, now=now)
                batch = await metering.settle_usage_batch(
                    s, before=now, fee_bps=1000, idempotency_key=f"s{minute}"
                )
    expected = settle_hold(
        usage=60_000, balance=34_000, provider_before=60_000, fee_before=6_000, fee_bps=1000
    )
    assert (expected.provider, expected.fee, expected.shortfall) == (30_909, 3_091, 29_091)
    assert batch.buckets == 1
    assert batch.short_holds
    assert (batch.provider_micro, batch.fee_micro, batch.shortfall_micro) == (
        30_909,
        3_091,
        29_091,
    )
    assert await _end_of_cluster(runtime, customer, cluster, node, path) == 0
    async with runtime.sessionmaker() as s:
        assert await balance_of(s, service.earnings(provider)) == 90_909
        unpaid = await s.scalar(select(func.sum(UsageBucket.unpaid_micro)))
        assert unpaid == 29_091
        hold = await account_id(s, service.held(customer, f"cluster:{cluster}"))
        totals = await s.get(HoldTotals, hold)
        assert totals is not None
        assert (totals.provider_micro, totals.fee_micro, totals.shortfall_micro) == (
            90_909,
            9_091,
            29_091,
        )
        # The provider's usage statement says what was earned and what was paid of it.
        [line] = await statements.usage_by_node(
            s, earnings_account_ids=[await account_id(s, service.earnings(provider))]
        )
        assert (line.seconds, line.amount_micro, line.settled_micro) == (120, 120_000, 90_909)
    assert await _fees(runtime) - fees_before == 9_091
    await _nothing_unsettled(runtime)


async def test_a_meter_started_mid_second_bills_only_whole_observed_seconds(
    runtime: Runtime, new_user: NewUser
) -> None:
    """Started at 12:00:00.19 and metered to 12:01:36: 95.81 s observed, 95 billed (the
    start rounds up), not 96."""
    _, _, _, node = await _funded_node(
        runtime,
        new_user,
        price=PRICE,
        hold=1_000_000,
        started_at=T0 + timedelta(microseconds=190_000),
    )
    async with runtime.sessionmaker() as s, s.begin():
        await metering.meter_tick(s, now=T0 + timedelta(seconds=96))
    async with runtime.sessionmaker() as s:
        meter = await s.get(NodeMeter, node)
        assert meter is not None
        assert meter.billed_seconds == 95


async def test_a_meter_bills_nothing_past_its_paid_end_until_the_end_moves(
    runtime: Runtime, new_user: NewUser
) -> None:
    """Paid until 12:01:00.5: a tick at 12:02 bills 60 s, not 120 (the rest moves the
    watermark unbilled); the end moved on (an extension) bills from then on."""
    customer, _, cluster, node = await _funded_node(
        runtime,
        new_user,
        price=PRICE,
        hold=1_000_000,
        billable_until=T0 + timedelta(seconds=60, microseconds=500_000),
    )
    async with runtime.sessionmaker() as s, s.begin():
        await metering.meter_and_settle(
            s, now=T0 + timedelta(minutes=2), fee_bps=1000, idempotency_key="a"
        )
        meter = await s.get(NodeMeter, node)
        assert meter is not None
        assert meter.billed_seconds == 60
        state = await metering.limit_cluster_billing(
            s,
            cluster_id=cluster,
            ends_at=T0 + timedelta(minutes=3),
            limit_micro=1_000_000,
            fee_bps=1000,
        )
        assert (state.spent_micro, state.exhausted) == (66_000, False)
    async with runtime.sessionmaker() as s, s.begin():
        await metering.meter_and_settle(
            s, now=T0 + timedelta(minutes=4), fee_bps=1000, idempotency_key="b"
        )
        meter = await s.get(NodeMeter, node)
        assert meter is not None
        assert meter.billed_seconds == 120
    del customer


async def test_a_budget_stops_billing_at_the_second_it_is_used_up(
    runtime: Runtime, new_user: NewUser
) -> None:
    """A limit of 5,500 at 1,100 µUSDC/s (price + fee) buys exactly 5 s: a tick 7 s in bills
    5 (5,500), not 7 (7,700), and the cluster then counts as out of money."""
    _, _, cluster, node = await _funded_node(runtime, new_user, price=PRICE, hold=1_000_000)
    async with runtime.sessionmaker() as s, s.begin():
        state = await metering.limit_cluster_billing(
            s, cluster_id=cluster, ends_at=None, limit_micro=5_500, fee_bps=1000
        )
        assert (state.spent_micro, state.end_s, state.exhausted) == (
            0,
            int(T0.timestamp()) + 5,
            False,
        )
    async with runtime.sessionmaker() as s, s.begin():
        await metering.meter_tick(s, now=T0 + timedelta(seconds=7))
        state = await metering.limit_cluster_billing(
            s, cluster_id=cluster, ends_at=None, limit_micro=5_500, fee_bps=1000
        )
        assert (state.spent_micro, state.exhausted) == (5_500, True)
        meter = await s.get(NodeMeter, node)
        assert meter is not None
        assert meter.billed_seconds == 5
