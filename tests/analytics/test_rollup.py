"""Rollups against the hand-computed market of conftest.py, idempotence and watermarks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import text

from tesai.analytics.rollup import rollup
from tesai.devices.models import DeviceEvent
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tesai.task_registry import load_all_tasks
from tesai.tasks import PERIODIC
from tests.analytics.conftest import AFTER, H0, Market, add_all, minutes, uptime_rows, usage_rows

TABLES = (
    "analytics_market", "analytics_prices", "analytics_ledger", "analytics_cluster_outcomes",
    "analytics_device_daily", "analytics_provider_daily", "analytics_watermarks",
)  # fmt: skip


async def rows(runtime: Runtime, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    async with runtime.sessionmaker() as s:
        return [tuple(r) for r in (await s.execute(text(sql), params)).all()]


async def snapshot(runtime: Runtime) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for t in TABLES:
        cols = "source, last_id, rows" if t == "analytics_watermarks" else "*"
        out[t] = sorted(await rows(runtime, f"SELECT {cols} FROM {t}"), key=repr)  # noqa: S608
    return out


async def test_market_rollup_matches_hand_figures(runtime: Runtime, market: Market) -> None:
    result = await rollup(runtime.sessionmaker, now=utcnow() + timedelta(hours=1))
    assert result.rows == {
        "usage": 45, "uptime": 100, "device_events": 4, "cluster_events": 6, "ledger": 7,
    }  # fmt: skip
    market_rows = await rows(
        runtime,
        "SELECT grain, start, gpu_model, region, up_device_s, up_gpu_s, rented_gpu_s, "
        "provider_micro, faults FROM analytics_market ORDER BY grain, start, region",
    )
    h1 = H0 + timedelta(hours=1)
    day = H0.replace(hour=0)
    assert market_rows == [
        ("day", day, "A100", "eu-west", 3600, 7200, 3600, 1_800_000, 1),
        ("day", day, "A100", "us-east", 1800, 1800, 900, 900_000, 1),
        ("hour", H0, "A100", "eu-west", 3600, 7200, 3600, 1_800_000, 1),
        ("hour", H0, "A100", "us-east", 1800, 1800, 600, 600_000, 1),
        ("hour", h1, "A100", "us-east", 0, 0, 300, 300_000, 0),
    ]
    devices = await rows(
        runtime,
        "SELECT device_id, up_s, rented_s, faults, faults_rented FROM analytics_device_daily",
    )
    assert sorted(devices, key=lambda r: r[1]) == [
        (market.d3, 600, 0, 0, 0),
        (market.d2, 1800, 900, 1, 1),
        (market.d1, 3600, 1800, 1, 0),
    ]
    prices = await rows(
        runtime,
        "SELECT region, bucket, gpu_s FROM analytics_prices WHERE grain = 'hour' AND start = :h "
        "ORDER BY region, bucket",
        h=H0,
    )
    # Per region, and over all regions ("*").
    assert [(r, g) for r, _, g in prices] == [
        ("*", 3600), ("*", 600), ("eu-west", 3600), ("us-east", 600),
    ]  # fmt: skip
    assert [b for r, b, _ in prices if r == "*"] == [b for r, b, _ in prices if r != "*"]
    for (_, bucket, _), price in zip(prices[2:], (1_800_000, 3_600_000), strict=True):
        assert 1.02**bucket <= price < 1.02 ** (bucket + 1)
    outcomes = await rows(
        runtime,
        "SELECT gpu_model, outcome, clusters FROM analytics_cluster_outcomes "
        "WHERE grain = 'hour' ORDER BY gpu_model, outcome",
    )
    assert outcomes == [
        ("A100", "completed", 1), ("A100", "degraded", 1), ("A100", "self_healed", 1),
        ("A100", "started", 1), ("cpu", "failed", 1),
    ]  # fmt: skip
    ledger = await rows(
        runtime,
        "SELECT tx_kind, account_kind, credit_micro, debit_micro FROM analytics_ledger "
        "WHERE grain = 'day' ORDER BY tx_kind, account_kind",
    )
    assert ("settle", "platform_fees", 240_000, 0) in ledger
    assert ("settle", "provider_earnings", 2_400_000, 0) in ledger
    assert ("settle", "customer_held", 0, 2_640_000) in ledger
    assert ("deposit", "customer_available", 10_000_000, 0) in ledger
    earned = await rows(runtime, "SELECT provider_id, earned_micro FROM analytics_provider_daily")
    assert earned == [(market.provider.id, 2_400_000)]


async def test_an_announced_stop_is_not_a_fault(runtime: Runtime, market: Market) -> None:
    """A device whose agent said it was stopping (drain, Ctrl-C) did not fail: neither the
    market's faults nor the device's count it, as its reliability score does not."""
    now = utcnow() + timedelta(hours=1)
    await rollup(runtime.sessionmaker, now=now, sources=("device_events",))
    before = await rows(runtime, "SELECT faults, faults_rented FROM analytics_device_daily")
    at = H0 + timedelta(minutes=50)
    await add_all(
        runtime,
        [
            DeviceEvent(device_id=market.d3, at=at, from_status="busy", to_status="offline",
                        reason="agent_left"),
            DeviceEvent(device_id=market.d3, at=at, from_status="online", to_status="offline",
                        reason="agent_left"),
        ],
    )  # fmt: skip
    taken = await rollup(runtime.sessionmaker, now=now, sources=("device_events",))
    assert taken.rows == {"device_events": 2}
    assert await rows(runtime, "SELECT faults, faults_rented FROM analytics_device_daily") == before
    market_faults = await rows(runtime, "SELECT sum(faults) FROM analytics_market")
    assert market_faults == [(4,)]  # the two hand-made faults, by hour and by day


async def test_rerun_changes_nothing(runtime: Runtime, market: Market) -> None:
    now = utcnow() + timedelta(hours=1)
    await rollup(runtime.sessionmaker, now=now)
    first = await snapshot(runtime)
    again = await rollup(runtime.sessionmaker, now=now)
    assert again.total == 0
    assert await snapshot(runtime) == first
    # Small batches reach the same totals as one big batch.
    async with runtime.sessionmaker() as s, s.begin():
        for t in TABLES:
            await s.execute(text(f"DELETE FROM {t}"))  # noqa: S608
    await rollup(runtime.sessionmaker, now=now, batch=7)
    assert await snapshot(runtime) == first


async def test_new_rows_are_picked_up_and_old_ones_not_recounted(
    runtime: Runtime, market: Market
) -> None:
    await rollup(runtime.sessionmaker, now=AFTER, sources=("usage", "uptime"))
    h2 = H0 + timedelta(hours=2)
    await add_all(
        runtime,
        [
            *usage_rows(market.d1, minutes(h2, 10), 3_600_000),
            *uptime_rows(market.d1, minutes(h2, 20)),
        ],
    )
    taken = await rollup(runtime.sessionmaker, now=AFTER, sources=("usage", "uptime"))
    assert taken.rows == {"usage": 10, "uptime": 20}
    hourly = await rows(
        runtime,
        "SELECT start, up_gpu_s, rented_gpu_s FROM analytics_market "
        "WHERE grain = 'hour' AND region = 'eu-west' ORDER BY start",
    )
    assert hourly == [(H0, 7200, 3600), (h2, 2400, 1200)]
    daily = await rows(
        runtime,
        "SELECT up_gpu_s, rented_gpu_s FROM analytics_market "
        "WHERE grain = 'day' AND region = 'eu-west'",
    )
    assert daily == [(7200 + 2400, 3600 + 1200)]
    marks = dict(await rows(runtime, "SELECT source, rows FROM analytics_watermarks"))
    assert marks == {"usage": 55, "uptime": 120}


async def test_open_minutes_wait_for_the_grace(runtime: Runtime, market: Market) -> None:
    now = utcnow().replace(second=30, microsecond=0)
    current = now.replace(second=0)
    await rollup(runtime.sessionmaker, now=AFTER, sources=("usage",))
    await add_all(
        runtime,
        [
            *usage_rows(market.d1, [current - timedelta(minutes=10)], 3_600_000),
            *usage_rows(market.d1, [current], 3_600_000),
            *usage_rows(market.d2, [current - timedelta(minutes=9)], 3_600_000),
        ],
    )
    first = await rollup(runtime.sessionmaker, now=now, grace_s=120, sources=("usage",))
    # The open minute stops the batch: the row after it waits too, nothing is skipped.
    assert first.rows == {"usage": 1}
    later = await rollup(
        runtime.sessionmaker, now=now + timedelta(minutes=5), grace_s=120, sources=("usage",)
    )
    assert later.rows == {"usage": 2}
    total = await rows(
        runtime, "SELECT sum(rented_gpu_s) FROM analytics_market WHERE grain = 'day'"
    )
    assert total == [(3600 + 900 + 3 * 120 - 60,)]


def test_rollup_is_a_discovered_periodic_task() -> None:
    assert "tesai.analytics.tasks" in load_all_tasks()
    assert PERIODIC["analytics.rollup"].every_s == 60.0
