"""Analytics at scale: rollup catch-up and report latency over 1,000,000 usage rows.

    .venv/bin/python bench/analytics.py [--usage 1000000] [--devices 10000] [--runs 5]

On a scratch database of the local PostgreSQL: 10,000 devices (8 GPU models × 6 regions,
2,000 providers), 1,000,000 usage buckets, 1,000,000 uptime minutes, 50,000 device events,
20,000 cluster events and 60,000 ledger postings over 30 days, bulk-loaded with COPY (the
ledger through SQL, so its triggers check every transaction). Then:

1. the rollup's catch-up from empty rollup tables (every source, from watermark 0);
2. an incremental rollup after 10,000 new usage rows (reads only those);
3. each report, the median of ``--runs`` runs: the window query on the rollups, the pandas
   work and the JSON-ready rows (what the endpoint does, minus HTTP) — goal ≤ 1 s each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import asyncpg
import numpy as np
from _util import _plain, machine, scratch_database
from sqlalchemy import text

from tesai.analytics.reports import REPORTS, make_params, records, run_report
from tesai.analytics.rollup import rollup
from tesai.db import create_engine, create_sessionmaker
from tesai.settings import Settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30
MODELS = {
    "H100": 2_400_000, "A100": 1_500_000, "L40S": 900_000, "RTX4090": 450_000,
    "A10": 350_000, "T4": 150_000, "RTX3090": 250_000, "cpu": 100_000,
}  # fmt: skip
REGIONS = ["eu-west", "eu-central", "us-east", "us-west", "ap-south", "ap-east"]


async def load(
    url: str, n_devices: int, n_usage: int, rng: np.random.Generator
) -> dict[str, float]:
    conn = await asyncpg.connect(_plain(url))
    timings: dict[str, float] = {}
    try:
        t = time.perf_counter()
        providers = [uuid.uuid4() for _ in range(2000)]
        customers = [uuid.uuid4() for _ in range(500)]
        await conn.copy_records_to_table(
            "users",
            records=[
                (u, f"{u}@bench", f"provider-{i}", False, True, False, True)
                for i, u in enumerate(providers)
            ]
            + [(u, f"{u}@bench", "", True, False, False, True) for u in customers],
            columns=["id", "email", "display_name", "is_customer", "is_provider", "is_admin",
                     "is_active"],
        )  # fmt: skip
        models = list(MODELS)
        dev_ids = [uuid.uuid4() for _ in range(n_devices)]
        dev_model = rng.integers(0, len(models), n_devices)
        dev_region = rng.integers(0, len(REGIONS), n_devices)
        dev_gpus = rng.choice([1, 2, 4, 8], n_devices)
        dev_price = np.array([MODELS[models[m]] for m in dev_model]) * rng.uniform(
            0.7, 1.4, n_devices
        )
        dev_price = (dev_price // 10_000 * 10_000).astype(np.int64)
        dev_provider = rng.integers(0, len(providers), n_devices)
        verified = rng.random(n_devices) < 0.95
        await conn.copy_records_to_table(
            "devices",
            records=[
                (
                    dev_ids[i], providers[dev_provider[i]], f"dev-{i}", "online", "{}",
                    None if models[dev_model[i]] == "cpu" else models[dev_model[i]],
                    0 if models[dev_model[i]] == "cpu" else int(dev_gpus[i]),
                    REGIONS[dev_region[i]], int(dev_price[i]), 1.0,
                    T0 if verified[i] else None, 1, T0, 0, 0, 0,
                )
                for i in range(n_devices)
            ],
            columns=["id", "provider_id", "name", "status", "hardware", "gpu_model", "gpu_count",
                     "region", "price_per_gpu_hour_micro", "reliability", "verified_at",
                     "version", "created_at", "vram_bytes_per_gpu", "cpu_cores", "ram_bytes"],
        )  # fmt: skip
        timings["devices"] = time.perf_counter() - t

        t = time.perf_counter()
        minutes_total = DAYS * 24 * 60
        # Distinct (minute, device) slots in time order, as metering writes them.
        slots = np.unique(rng.integers(0, minutes_total * n_devices, int(n_usage * 1.01) + 100))
        slots = np.sort(rng.choice(slots, n_usage, replace=False))
        minute, dev = slots // n_devices, slots % n_devices
        node_of = [uuid.uuid4() for _ in range(n_devices)]
        cluster_of = [uuid.uuid4() for _ in range(n_devices)]
        units = np.where(np.array([models[m] == "cpu" for m in dev_model]), 1, dev_gpus).astype(
            np.int64
        )
        hourly = dev_price * units
        seconds = np.where(rng.random(n_usage) < 0.9, 60, rng.integers(1, 60, n_usage))
        await conn.copy_records_to_table(
            "usage_buckets",
            records=(
                (
                    cluster_of[d], node_of[d], dev_ids[d], 1, 2, T0 + timedelta(minutes=int(m)),
                    int(s), int(hourly[d]), int(hourly[d]) * int(s) // 3600, True,
                )
                for m, d, s in zip(minute, dev, seconds, strict=True)
            ),
            columns=["cluster_id", "node_id", "device_id", "hold_account_id",
                     "earnings_account_id", "minute", "seconds", "price_per_hour_micro",
                     "amount_micro", "settled"],
        )  # fmt: skip
        timings["usage"] = time.perf_counter() - t

        t = time.perf_counter()
        # Uptime: one row per (device, minute); ids in time order like the flush writes them.
        up_minute = np.sort(rng.integers(0, minutes_total, n_usage))
        up_dev = rng.permutation(np.resize(np.arange(n_devices), n_usage))
        pairs = sorted(set(zip(up_minute.tolist(), up_dev.tolist(), strict=True)))
        await conn.copy_records_to_table(
            "device_uptime_minutes",
            records=((dev_ids[d], T0 + timedelta(minutes=m), 60) for m, d in pairs),
            columns=["device_id", "minute", "seconds_up"],
        )
        ev_at = np.sort(rng.integers(0, DAYS * 86400, 50_000))
        ev_dev = rng.integers(0, n_devices, 50_000)
        kinds = [("online", "offline"), ("busy", "offline"), ("offline", "online")]
        ev_kind = rng.integers(0, 3, 50_000)
        await conn.copy_records_to_table(
            "device_events",
            records=(
                (dev_ids[d], T0 + timedelta(seconds=int(a)), *kinds[k], "bench", "")
                for a, d, k in zip(ev_at, ev_dev, ev_kind, strict=True)
            ),
            columns=["device_id", "at", "from_status", "to_status", "reason", "message"],
        )
        clusters = [uuid.uuid4() for _ in range(5000)]
        await conn.copy_records_to_table(
            "clusters",
            records=[
                (c, customers[i % len(customers)], "bench", "terminated", "{}",
                 models[i % len(models)] if models[i % len(models)] != "cpu" else None,
                 8, 3600, "2.60.0", "x", T0, 0, 0, 0, 1)
                for i, c in enumerate(clusters)
            ],
            columns=["id", "customer_id", "name", "status", "request", "gpu_model", "gpus",
                     "duration_s", "ray_version", "ray_token_sealed", "created_at",
                     "hourly_price_micro", "hold_micro", "replacements", "version"],
        )  # fmt: skip
        steps = [("provisioning", "running"), ("running", "degraded"), ("degraded", "running"),
                 ("running", "terminated")]  # fmt: skip
        cev = []
        for i, c in enumerate(clusters):
            start = T0 + timedelta(seconds=int(rng.integers(0, DAYS * 86400 - 7200)))
            path = steps if i % 10 else [("provisioning", "failed")]
            for j, (f, to) in enumerate(path):
                cev.append((c, start + timedelta(minutes=10 * j), f, to, "bench", "", "{}"))
        cev.sort(key=lambda r: r[1])
        await conn.copy_records_to_table(
            "cluster_events",
            records=cev,
            columns=["cluster_id", "at", "from_status", "to_status", "reason", "message", "data"],
        )
        timings["other_raw"] = time.perf_counter() - t

        t = time.perf_counter()
        await ledger(conn, providers, customers, rng)
        timings["ledger"] = time.perf_counter() - t
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return timings


async def ledger(
    conn: asyncpg.Connection,
    providers: list[uuid.UUID],
    customers: list[uuid.UUID],
    rng: np.random.Generator,
) -> None:
    """Deposits and holds per customer, then 20,000 settlements over 30 days (SQL)."""
    async with conn.transaction():
        await conn.execute(
            """
INSERT INTO ledger_accounts (owner_user_id, kind, ref, allow_negative) VALUES
  (NULL, 'platform_treasury', '', true), (NULL, 'platform_fees', '', false);
INSERT INTO ledger_accounts (owner_user_id, kind, ref, allow_negative)
  SELECT id, 'customer_available', '', false FROM users WHERE is_customer
  UNION ALL SELECT id, 'customer_held', 'cluster:bench', false FROM users WHERE is_customer
  UNION ALL SELECT id, 'provider_earnings', '', false FROM users WHERE is_provider;"""
        )
    for kind, src, dst in (
        ("deposit", "platform_treasury", "customer_available"),
        ("hold", "customer_available", "customer_held"),
    ):
        async with conn.transaction():
            await conn.execute(
                f"""
WITH c AS (SELECT id FROM users WHERE is_customer),
tx AS (
  INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, memo, refs, created_at)
  SELECT '{kind}', '{kind}:' || c.id, '', '', '{{}}', '{T0.isoformat()}' FROM c
  RETURNING id, idempotency_key
)
INSERT INTO ledger_postings (transaction_id, account_id, amount)
SELECT tx.id, a.id, CASE WHEN a.kind = '{src}' THEN -1000000000000 ELSE 1000000000000 END
FROM tx JOIN ledger_accounts a
  ON a.owner_user_id IS NOT DISTINCT FROM
     (CASE WHEN '{src}' = 'platform_treasury' AND a.kind = '{src}' THEN NULL
           ELSE CAST(split_part(tx.idempotency_key, ':', 2) AS uuid) END)
 AND a.kind IN ('{src}', '{dst}')"""
            )
    n = 20_000
    at = np.sort(rng.integers(0, DAYS * 86400, n))
    prov = rng.integers(0, len(providers), n)
    cust = rng.integers(0, len(customers), n)
    amount = rng.integers(10_000, 5_000_000, n)
    async with conn.transaction():
        await conn.execute(
            """
CREATE TEMP TABLE bench_settle (i int, at timestamptz, provider uuid, customer uuid,
                                amount bigint)"""
        )
        await conn.copy_records_to_table(
            "bench_settle",
            records=[
                (i, T0 + timedelta(seconds=int(a)), providers[p], customers[c], int(m))
                for i, (a, p, c, m) in enumerate(zip(at, prov, cust, amount, strict=True))
            ],
        )
        await conn.execute(
            """
WITH tx AS (
  INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, memo, refs, created_at)
  SELECT 'settle_batch', 'bench:' || i, '', '', '{}', at FROM bench_settle ORDER BY i
  RETURNING id, idempotency_key
), s AS (
  SELECT tx.id, b.* FROM tx JOIN bench_settle b ON tx.idempotency_key = 'bench:' || b.i
)
INSERT INTO ledger_postings (transaction_id, account_id, amount)
SELECT s.id, a.id, -(s.amount + s.amount / 10) FROM s
  JOIN ledger_accounts a ON a.owner_user_id = s.customer AND a.kind = 'customer_held'
UNION ALL
SELECT s.id, a.id, s.amount FROM s
  JOIN ledger_accounts a ON a.owner_user_id = s.provider AND a.kind = 'provider_earnings'
UNION ALL
SELECT s.id, (SELECT id FROM ledger_accounts WHERE kind = 'platform_fees'), s.amount / 10
FROM s"""
        )


async def main(args: argparse.Namespace, url: str) -> None:
    rng = np.random.default_rng(7)
    if True:
        loaded = await load(url, args.devices, args.usage, rng)
        print("bulk load (s): " + ", ".join(f"{k} {v:.1f}" for k, v in loaded.items()))
        settings = Settings(database_url=url)
        engine = create_engine(settings)
        sm = create_sessionmaker(engine)
        end = T0 + timedelta(days=DAYS)
        try:
            t = time.perf_counter()
            result = await rollup(sm, now=end + timedelta(days=1))
            catch_up = time.perf_counter() - t
            print(f"rollup catch-up: {catch_up:.1f} s for {result.total:,} raw rows {result.rows}")
            async with sm() as s:
                counts = {
                    tname: int(await s.scalar(text(f"SELECT count(*) FROM {tname}")) or 0)
                    for tname in ("analytics_market", "analytics_prices", "analytics_ledger",
                                  "analytics_device_daily", "analytics_provider_daily",
                                  "analytics_cluster_outcomes")
                }  # fmt: skip
            print("rollup rows: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))

            conn = await asyncpg.connect(_plain(url))
            try:
                await conn.execute(
                    """
INSERT INTO usage_buckets (cluster_id, node_id, device_id, hold_account_id, earnings_account_id,
                           minute, seconds, price_per_hour_micro, amount_micro, settled)
SELECT cluster_id, gen_random_uuid(), device_id, 1, 2, minute + interval '1 day', seconds,
       price_per_hour_micro, amount_micro, false
FROM usage_buckets ORDER BY id DESC LIMIT 10000"""
                )
            finally:
                await conn.close()
            t = time.perf_counter()
            inc = await rollup(sm, now=end + timedelta(days=3))
            print(f"incremental rollup: {time.perf_counter() - t:.2f} s for {inc.total:,} new rows")

            windows = {
                "30 days, per day": make_params(since=T0, until=end, grain="day"),
                "7 days, per hour": make_params(
                    since=end - timedelta(days=7), until=end, grain="hour"
                ),
            }
            print(f"\nreport latency, median of {args.runs} runs (s):")
            print(f"| report | {' | '.join(windows)} | rows |")
            print("|---|" + "---|" * (len(windows) + 1))
            worst = 0.0
            for name in REPORTS:
                cells = []
                nrows = 0
                for params in windows.values():
                    times = []
                    for _ in range(args.runs):
                        t = time.perf_counter()
                        async with sm() as s:
                            df = await run_report(s, name, params)
                        rows = records(df)
                        times.append(time.perf_counter() - t)
                    nrows = max(nrows, len(rows))
                    med = statistics.median(times)
                    worst = max(worst, med)
                    cells.append(f"{med:.3f}")
                print(f"| {name} | {' | '.join(cells)} | {nrows:,} |")
            print(f"\nslowest report median: {worst:.3f} s (goal ≤ 1 s)")
        finally:
            await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--usage", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    print(f"machine: {machine()}")
    with scratch_database("tesai_bench_analytics") as scratch:
        asyncio.run(main(parser.parse_args(), scratch))
