"""Metering into minute buckets and batched settlement, on the real database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text

from tesai.billing import holds, metering, service
from tesai.billing.ledger import balance_of
from tesai.billing.models import UsageBucket
from tesai.runtime import Runtime
from tests.billing.conftest import NewUser

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
PRICE = 3_600_000  # 1,000 micro-USDC per second


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
        # Drain the hold: the next batch cannot pay and reports it instead of failing.
        await holds.release_cluster_hold(
            s, customer_user_id=customer, cluster_id=cluster, idempotency_key="r"
        )
        await metering.meter_tick(s, now=T0 + timedelta(seconds=180))
        batch = await metering.settle_usage_batch(
            s, before=T0 + timedelta(minutes=5), fee_bps=0, idempotency_key="c3"
        )
        assert batch.short_holds
        assert batch.buckets == 0
    del node
