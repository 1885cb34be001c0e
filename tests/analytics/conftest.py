"""A small market written straight into the raw tables, with figures computed by hand.

Hour ``H0`` = 2026-01-05 10:00 UTC. Devices (one provider, "Alpha"):

- ``d1``: A100 ×2, eu-west, 1.80 USDC/GPU-h, verified; up the whole of H0; rented 30 min
  of H0 (node price 3.60/h → 60,000 micro a minute); a fault at H0+20 min (online → offline).
- ``d2``: A100 ×1, us-east, 3.60 USDC/GPU-h, verified; up 30 min of H0; rented 10 min of
  H0 and 5 min of H0+1h; a fault while rented at H0+40 min (busy → offline).
- ``d3``: CPU-only, eu-west, unverified: up 10 min (not counted as supply).

Clusters: an A100 one starts, degrades, heals and completes in H0; a CPU one fails.
Ledger (real billing services, stamped now): deposit 10 USDC, hold 5, settle 2.4 to the
provider at a 10 % fee.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.accounts.models import User
from tesai.billing import service as billing
from tesai.billing.models import UsageBucket
from tesai.clusters.models import Cluster, ClusterEvent
from tesai.devices.models import Device, DeviceEvent, DeviceUptimeMinute
from tesai.runtime import Runtime
from tests.fixtures.auth import MakeUser

H0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
AFTER = H0 + timedelta(days=2)
"""A ``now`` by which every row of the dataset is final."""


@dataclass
class Market:
    provider: User
    customer: User
    d1: uuid.UUID
    d2: uuid.UUID
    d3: uuid.UUID


def minutes(start: datetime, n: int) -> list[datetime]:
    return [start + timedelta(minutes=i) for i in range(n)]


def usage_rows(device_id: uuid.UUID, at: list[datetime], price: int) -> list[UsageBucket]:
    node = uuid.uuid4()
    return [
        UsageBucket(
            cluster_id=uuid.uuid4(),
            node_id=node,
            device_id=device_id,
            hold_account_id=1,
            earnings_account_id=2,
            minute=m,
            seconds=60,
            price_per_hour_micro=price,
            amount_micro=price // 60,
        )
        for m in at
    ]


def uptime_rows(device_id: uuid.UUID, at: list[datetime]) -> list[DeviceUptimeMinute]:
    return [DeviceUptimeMinute(device_id=device_id, minute=m, seconds_up=60) for m in at]


async def add_all(runtime: Runtime, rows: list[object]) -> None:
    async with runtime.sessionmaker() as s, s.begin():
        s.add_all(rows)


def _event(device: uuid.UUID, at: datetime, frm: str, to: str) -> DeviceEvent:
    return DeviceEvent(device_id=device, at=at, from_status=frm, to_status=to, reason="test")


def _cluster(customer: uuid.UUID, model: str | None) -> Cluster:
    return Cluster(
        customer_id=customer,
        name="c",
        request={},
        gpu_model=model,
        gpus=1,
        duration_s=3600,
        ray_version="2.60.0",
        ray_token_sealed="x",
    )


async def _ledger(s: AsyncSession, customer: uuid.UUID, provider: uuid.UUID) -> None:
    await billing.credit_deposit(
        s, user_id=customer, amount_micro=10_000_000, signature="sig-a", idempotency_key="a-d"
    )
    await billing.place_hold(
        s, user_id=customer, amount_micro=5_000_000, ref="cluster:a", idempotency_key="a-h"
    )
    await billing.settle_usage(
        s,
        user_id=customer,
        ref="cluster:a",
        provider_user_id=provider,
        provider_amount_micro=2_400_000,
        fee_bps=1000,
        idempotency_key="a-s",
    )


@pytest.fixture
async def market(runtime: Runtime, make_user: MakeUser) -> Market:
    provider, _ = await make_user(roles=("provider",))
    customer, _ = await make_user(roles=("customer",))
    async with runtime.sessionmaker() as s, s.begin():
        (await s.get(User, provider.id, with_for_update=True)).display_name = "Alpha"  # type: ignore[union-attr]
        d1, d2, d3 = (
            Device(provider_id=provider.id, name="d1", gpu_model="A100", gpu_count=2,
                   region="eu-west", price_per_gpu_hour_micro=1_800_000, verified_at=H0),
            Device(provider_id=provider.id, name="d2", gpu_model="A100", gpu_count=1,
                   region="us-east", price_per_gpu_hour_micro=3_600_000, verified_at=H0),
            Device(provider_id=provider.id, name="d3", gpu_model=None, gpu_count=0,
                   region="eu-west", price_per_gpu_hour_micro=500_000),
        )  # fmt: skip
        s.add_all([d1, d2, d3])
        await s.flush()
        s.add_all(uptime_rows(d1.id, minutes(H0, 60)))
        s.add_all(uptime_rows(d2.id, minutes(H0, 30)))
        s.add_all(uptime_rows(d3.id, minutes(H0, 10)))
        s.add_all(usage_rows(d1.id, minutes(H0, 30), 3_600_000))
        s.add_all(usage_rows(d2.id, minutes(H0 + timedelta(minutes=30), 10), 3_600_000))
        s.add_all(usage_rows(d2.id, minutes(H0 + timedelta(hours=1), 5), 3_600_000))
        s.add_all(
            [
                _event(d1.id, H0 + timedelta(minutes=20), "online", "offline"),
                _event(d1.id, H0 + timedelta(minutes=25), "offline", "online"),
                _event(d2.id, H0 - timedelta(minutes=5), "verifying", "online"),
                _event(d2.id, H0 + timedelta(minutes=40), "busy", "offline"),
            ]
        )
        k1, k2 = _cluster(customer.id, "A100"), _cluster(customer.id, None)
        s.add_all([k1, k2])
        await s.flush()
        steps = [
            ("provisioning", "running"),
            ("running", "degraded"),
            ("degraded", "running"),
            ("running", "terminating"),
            ("terminating", "terminated"),
        ]
        s.add_all(
            ClusterEvent(cluster_id=k1.id, at=H0 + timedelta(minutes=i), from_status=f,
                         to_status=t, reason="test")
            for i, (f, t) in enumerate(steps)
        )  # fmt: skip
        s.add(ClusterEvent(cluster_id=k2.id, at=H0, from_status="provisioning",
                           to_status="failed", reason="provisioning_deadline"))  # fmt: skip
        await _ledger(s, customer.id, provider.id)
    return Market(provider, customer, d1.id, d2.id, d3.id)
