"""Business metrics: what operators read from /metrics about devices, clusters and money."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from celery import Celery
from kombu import Connection
from prometheus_client import REGISTRY, values
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.billing import holds, metering
from tesai.billing import service as billing
from tesai.clusters.models import Cluster, ClusterStatus
from tesai.devices.models import Device, DeviceStatus
from tesai.kit.time import utcnow
from tesai.observability import business
from tesai.observability.business import (
    BUSINESS,
    MAX_MODELS,
    bound_models,
    celery_queue_depths,
    refreshing,
    settlement_lag,
    take_snapshot,
)
from tesai.observability.metrics import MULTIPROC_ENV, render
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.conftest import TEST_BROKER_URL
from tests.fixtures.auth import MakeUser


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The tests set the snapshot themselves; the app's refresher would race them.
    return settings.model_copy(update={"business_metrics_interval_s": 0})


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _fleet(session: AsyncSession, provider: uuid.UUID, customer: uuid.UUID) -> None:
    def device(status: DeviceStatus, model: str | None) -> Device:
        return Device(
            provider_id=provider,
            name="d",
            status=status,
            gpu_model=model,
            gpu_count=1 if model else 0,
            price_per_gpu_hour_micro=1_000_000,
            hardware={},
        )

    def cluster(status: ClusterStatus, running_ago_s: float) -> Cluster:
        now = utcnow()
        return Cluster(
            customer_id=customer,
            name="c",
            status=status,
            request={},
            gpus=1,
            duration_s=3600,
            ray_version="2.60.0",
            ray_token_sealed="x",
            running_at=now - timedelta(seconds=running_ago_s),
        )

    session.add_all(
        [
            device(DeviceStatus.online, "NVIDIA H100"),
            device(DeviceStatus.online, "NVIDIA H100"),
            device(DeviceStatus.busy, "NVIDIA H100"),
            device(DeviceStatus.offline, "NVIDIA A100"),
            device(DeviceStatus.online, None),
            cluster(ClusterStatus.running, 4000),
            cluster(ClusterStatus.degraded, 500),
            cluster(ClusterStatus.terminated, 100_000),
            cluster(ClusterStatus.failed, 0),
        ]
    )
    await session.commit()


async def test_scrape_reports_devices_clusters_and_settlement_lag_from_the_snapshot(
    runtime: Runtime, session: AsyncSession, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    provider, _ = await make_user(roles=("provider",))
    customer, _ = await make_user()
    await _fleet(session, provider.id, customer.id)
    BUSINESS.snapshot = await take_snapshot(runtime.sessionmaker, runtime.tasks)

    r = await client.get("/metrics")
    assert r.status_code == 200
    got = samples(r.text)
    assert got[("tesai_devices", (("gpu_model", "NVIDIA H100"), ("state", "online")))] == 2
    assert got[("tesai_devices", (("gpu_model", "NVIDIA H100"), ("state", "busy")))] == 1
    assert got[("tesai_devices", (("gpu_model", "NVIDIA A100"), ("state", "offline")))] == 1
    assert got[("tesai_devices", (("gpu_model", "cpu"), ("state", "online")))] == 1
    # A state with no device shows 0 rather than vanishing (alerts compare over time).
    assert got[("tesai_devices", (("gpu_model", "NVIDIA A100"), ("state", "online")))] == 0
    assert got[("tesai_clusters", (("state", "running"),))] == 1
    assert got[("tesai_clusters", (("state", "failed"),))] == 1
    assert got[("tesai_clusters", (("state", "pending"),))] == 0
    # No usage metered yet: nothing waits for settlement.
    assert got[("tesai_settlement_lag_seconds", ())] == 0
    # No label names a device, a user or a cluster.
    for _, labels in got:
        for key, _ in labels:
            assert key not in {"device", "device_id", "user", "user_id", "cluster", "cluster_id"}
    # In-process tasks have no broker queue.
    assert not [k for k in got if k[0] == "tesai_task_queue_depth"]
    assert got[("tesai_business_snapshot_age_seconds", ())] < 60


def _age(t: datetime) -> float:
    return (utcnow() - t).total_seconds()


async def _lag_scraped(runtime: Runtime, client: httpx.AsyncClient) -> float:
    BUSINESS.snapshot = await take_snapshot(runtime.sessionmaker)
    r = await client.get("/metrics")
    assert r.status_code == 200
    return samples(r.text)[("tesai_settlement_lag_seconds", ())]


async def test_settlement_lag_is_zero_when_caught_up_and_the_age_of_the_oldest_due_minute(
    runtime: Runtime, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    provider, _ = await make_user(roles=("provider",))
    customer, _ = await make_user()
    cluster_id = uuid.uuid4()
    start = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=10)
    async with runtime.sessionmaker() as s, s.begin():
        await billing.admin_grant_credit(
            s,
            admin_user_id=None,
            user_id=customer.id,
            amount_micro=10**9,
            reason="t",
            idempotency_key=f"g{cluster_id}",
        )
        await holds.place_cluster_hold(
            s,
            customer_user_id=customer.id,
            cluster_id=cluster_id,
            amount_micro=10**8,
            idempotency_key=f"h{cluster_id}",
        )
        await metering.start_meter(
            s,
            node_id=uuid.uuid4(),
            cluster_id=cluster_id,
            device_id=uuid.uuid4(),
            customer_user_id=customer.id,
            provider_user_id=provider.id,
            price_per_hour_micro=3_600_000,
            started_at=start,
        )
        await metering.meter_tick(s, now=start + timedelta(minutes=5, seconds=30))
    # Five complete minutes wait unsettled; the oldest became due at start + 1 min.
    lag = await _lag_scraped(runtime, client)
    assert lag == pytest.approx(_age(start + timedelta(minutes=1)), abs=5)
    async with runtime.sessionmaker() as s, s.begin():
        batch = await metering.settle_usage_batch(
            s, before=utcnow(), fee_bps=1000, idempotency_key=f"s{cluster_id}"
        )
    assert batch.buckets == 5
    # Settled as far as it is metered; but metering is behind the clock: the sixth minute,
    # in progress on the meter, was due at start + 6 min.
    lag = await _lag_scraped(runtime, client)
    assert lag == pytest.approx(_age(start + timedelta(minutes=6)), abs=5)
    # The tick catches up to start + 8 min, settling as it goes: the ninth minute is late.
    async with runtime.sessionmaker() as s, s.begin():
        await metering.meter_and_settle(
            s, now=start + timedelta(minutes=8), fee_bps=1000, idempotency_key="m8"
        )
    lag = await _lag_scraped(runtime, client)
    assert lag == pytest.approx(_age(start + timedelta(minutes=9)), abs=5)
    # Caught up with the clock: nothing is late.
    async with runtime.sessionmaker() as s, s.begin():
        await metering.meter_and_settle(s, now=utcnow(), fee_bps=1000, idempotency_key="now")
    assert await _lag_scraped(runtime, client) == 0


async def test_multiprocess_scrapes_include_the_snapshot(
    runtime: Runtime,
    session: AsyncSession,
    make_user: MakeUser,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider, _ = await make_user(roles=("provider",))
    customer, _ = await make_user()
    await _fleet(session, provider.id, customer.id)
    BUSINESS.snapshot = await take_snapshot(runtime.sessionmaker)
    # What a worker of `tesai server --workers N` runs with: samples in files.
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    body, _ = render()
    got = samples(body.decode())
    assert got[("tesai_devices", (("gpu_model", "NVIDIA H100"), ("state", "online")))] == 2
    assert got[("tesai_clusters", (("state", "degraded"),))] == 1


async def test_the_refresher_picks_up_changes_without_a_scrape_querying(
    settings: Settings, runtime: Runtime, session: AsyncSession, make_user: MakeUser
) -> None:
    provider, _ = await make_user(roles=("provider",))
    customer, _ = await make_user()
    BUSINESS.snapshot = None
    runtime.settings = settings.model_copy(update={"business_metrics_interval_s": 0.05})
    async with refreshing(runtime):
        await _fleet(session, provider.id, customer.id)
        for _ in range(100):
            snap = BUSINESS.snapshot
            if snap is not None and snap.clusters.get("running") == 1:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"snapshot never refreshed: {BUSINESS.snapshot}")
    assert snap.devices[("online", "NVIDIA H100")] == 2


def test_gpu_model_labels_are_capped() -> None:
    counts: dict[tuple[str, str | None], int] = {
        ("online", f"model-{i:03d}"): 100 - i for i in range(MAX_MODELS + 20)
    }
    counts[("busy", None)] = 1000
    out = bound_models(counts)
    models = {m for _, m in out}
    assert len(models) == MAX_MODELS + 1  # the most common ones, plus "other"
    assert "cpu" in models
    assert "model-000" in models
    # Everything is still counted.
    assert sum(out.values()) == sum(counts.values())
    assert out[("online", "other")] == sum(100 - i for i in range(MAX_MODELS - 1, MAX_MODELS + 20))


def test_settlement_lag_is_zero_without_billed_clusters() -> None:
    now = utcnow()
    assert settlement_lag(None, now) == 0
    assert settlement_lag(now - timedelta(seconds=90), now) == pytest.approx(90)
    assert settlement_lag(now + timedelta(seconds=5), now) == 0  # clock skew between hosts


def test_queue_depth_counts_waiting_messages_in_rabbitmq() -> None:
    name = f"tesai-test-depth-{secrets.token_hex(4)}"
    missing = name + "-missing"
    with Connection(TEST_BROKER_URL) as conn, conn.SimpleQueue(name) as queue:
        try:
            for i in range(3):
                queue.put({"n": i})
            app = Celery(broker=TEST_BROKER_URL)
            assert celery_queue_depths(app, [name, missing]) == {name: 3}
        finally:
            queue.queue.delete()
            queue.queue.exchange.delete()


def test_no_label_names_a_device_or_user_on_counters() -> None:
    for metric in (
        business.HEARTBEATS,
        business.DEVICE_TRANSITIONS,
        business.PLACEMENT_DURATION,
        business.PAYOUT_FAILURES,
    ):
        assert set(metric._labelnames) <= {"to_state", "reason"}


async def test_a_quote_is_timed_in_the_placement_histogram_even_without_capacity(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    _, customer = await make_user()
    before = REGISTRY.get_sample_value("tesai_placement_duration_seconds_count") or 0
    r = await client.post(
        "/api/v1/quotes",
        json={"gpu_model": "NVIDIA H100", "gpus": 1, "duration_s": 3600},
        headers=customer,
    )
    assert r.status_code == 409, r.text  # an empty pool: no capacity, but placement ran
    r = await client.get("/metrics")
    got = samples(r.text)
    assert got[("tesai_placement_duration_seconds_count", ())] == before + 1
