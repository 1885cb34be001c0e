"""Ledger throughput and the metering + settlement tick at scale.

    .venv/bin/python bench/ledger.py [--nodes 100000] [--ops 2000] [--ticks 3] [--tick-only]
                                     [--compare]

Figures, on a scratch database of the local PostgreSQL:
1. postings/s, single: one money movement (hold or settlement: 2–3 postings) per commit,
   one connection, through the service functions (idempotency, locks, audit, triggers);
2. postings/s, batched: ``settle_usage_many`` (the same plans, idempotency keys and audit
   rows, set-based), 1,000 movements per commit on 4 concurrent connections;
3. the metering tick for N running nodes (default 100,000: 25,000 clusters, 10,000
   providers): every node metered and the minute that closed settled (one bucket per node,
   one ledger transaction), as the ``clusters.meter`` task runs it — goal ≤ 1 s;
   ``--compare`` adds the same minutes done in two stages (meter, then the sweep).
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

from _util import machine, scratch_database
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tesai.billing import metering, service
from tesai.db import create_engine, create_sessionmaker
from tesai.settings import Settings

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def _users(sm: async_sessionmaker[AsyncSession], n: int, tag: str) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    async with sm() as s, s.begin():
        await s.execute(
            text(
                "INSERT INTO users (id, email, display_name, is_customer, is_provider, is_admin,"
                " is_active) SELECT u, :tag || u::text || '@bench', '', true, true, false, true"
                " FROM unnest(CAST(:ids AS uuid[])) AS u"
            ),
            {"ids": ids, "tag": tag},
        )
    return ids


async def _postings(sm: async_sessionmaker[AsyncSession]) -> int:
    async with sm() as s:
        return int(await s.scalar(text("SELECT count(*) FROM ledger_postings")) or 0)


async def single(sm: async_sessionmaker[AsyncSession], ops: int) -> float:
    customer, provider = await _users(sm, 2, "single")
    async with sm() as s, s.begin():
        await service.admin_grant_credit(
            s,
            admin_user_id=None,
            user_id=customer,
            amount_micro=10**12,
            reason="bench",
            idempotency_key=f"fund:{customer}",
        )
        await service.place_hold(
            s, user_id=customer, amount_micro=10**11, ref="c", idempotency_key=f"h:{customer}"
        )
    before = await _postings(sm)
    t = time.perf_counter()
    for i in range(ops):
        async with sm() as s, s.begin():
            if i % 2:
                await service.settle_usage(
                    s,
                    user_id=customer,
                    ref="c",
                    provider_user_id=provider,
                    provider_amount_micro=1000,
                    fee_bps=1000,
                    idempotency_key=f"s:{customer}:{i}",
                )
            else:
                await service.place_hold(
                    s,
                    user_id=customer,
                    amount_micro=10,
                    ref=f"c{i}",
                    idempotency_key=f"h:{customer}:{i}",
                )
    elapsed = time.perf_counter() - t
    return (await _postings(sm) - before) / elapsed


async def batched(sm: async_sessionmaker[AsyncSession], ops: int, workers: int = 4) -> float:
    users = await _users(sm, workers * 2, "batched")
    async with sm() as s, s.begin():
        for c in users[:workers]:
            await service.admin_grant_credit(
                s,
                admin_user_id=None,
                user_id=c,
                amount_micro=10**12,
                reason="bench",
                idempotency_key=f"fund:{c}",
            )
            await service.place_hold(
                s, user_id=c, amount_micro=10**11, ref="c", idempotency_key=f"h:{c}"
            )
    per = ops // workers

    async def worker(w: int) -> None:
        customer, provider = users[w], users[workers + w]
        for start in range(0, per, 1000):
            charges = [
                service.UsageCharge(customer, "c", provider, 1000, f"b:{customer}:{i}")
                for i in range(start, min(per, start + 1000))
            ]
            async with sm() as s, s.begin():
                await service.settle_usage_many(s, charges, fee_bps=1000)

    before = await _postings(sm)
    t = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    elapsed = time.perf_counter() - t
    return (await _postings(sm) - before) / elapsed


async def fleet(
    sm: async_sessionmaker[AsyncSession], nodes: int, clusters: int, providers: int
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """N node meters over ``clusters`` funded holds and ``providers`` providers (set-based)."""
    customers = await _users(sm, clusters, "cust")
    provs = await _users(sm, providers, "prov")
    async with sm() as s, s.begin():
        await s.execute(
            text(
                "INSERT INTO ledger_accounts (owner_user_id, kind, ref, allow_negative)"
                " SELECT u, 'customer_held', 'cluster:' || u::text, false"
                " FROM unnest(CAST(:c AS uuid[])) u"
                " UNION ALL SELECT u, 'provider_earnings', '', false"
                " FROM unnest(CAST(:p AS uuid[])) u"
                " UNION ALL SELECT NULL, 'platform_credits', '', true"
                " ON CONFLICT DO NOTHING"
            ),
            {"c": customers, "p": provs},
        )
        tx = await s.scalar(
            text(
                "INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, memo, refs)"
                " VALUES ('grant', 'bench-fund', '', 'bench', '{}') RETURNING id"
            )
        )
        await s.execute(
            text(
                "INSERT INTO ledger_postings (transaction_id, account_id, amount)"
                " SELECT CAST(:tx AS bigint), id, 1000000000000 FROM ledger_accounts"
                "  WHERE kind = 'customer_held'"
                " UNION ALL SELECT CAST(:tx AS bigint), (SELECT id FROM ledger_accounts"
                "  WHERE kind = 'platform_credits'), -1000000000000 * count(*)"
                "  FROM ledger_accounts WHERE kind = 'customer_held'"
            ),
            {"tx": tx},
        )
        await s.execute(
            text(
                """
WITH n AS (
  SELECT i, gen_random_uuid() AS node_id, (CAST(:c AS uuid[]))[1 + i % :nc] AS customer,
         (CAST(:p AS uuid[]))[1 + i % :np] AS provider
  FROM generate_series(0, :nodes - 1) AS i
)
INSERT INTO billing_node_meters (node_id, cluster_id, device_id, hold_account_id,
    earnings_account_id, price_per_hour_micro, metered_until, billed_seconds, active)
SELECT n.node_id, n.customer, gen_random_uuid(), h.id, e.id,
       1000000 + (n.i % 7) * 250000, CAST(:t0 AS timestamptz), 0, true
FROM n
JOIN ledger_accounts h ON h.owner_user_id = n.customer AND h.kind = 'customer_held'
JOIN ledger_accounts e ON e.owner_user_id = n.provider AND e.kind = 'provider_earnings'"""
            ),
            {
                "c": customers,
                "p": provs,
                "nc": clusters,
                "np": providers,
                "nodes": nodes,
                "t0": T0,
            },
        )
    async with sm() as s:
        await s.execute(text("ANALYZE"))
    return customers, provs


async def tick(sm: async_sessionmaker[AsyncSession], minute: int) -> tuple[float, int, int]:
    """The production metering tick (``meter_and_settle``, what ``clusters.meter`` runs) at
    T0 + minute: every node metered, the minute that closed settled; returns its time."""
    now = T0 + timedelta(minutes=minute)
    t = time.perf_counter()
    async with sm() as s, s.begin():
        batch = await metering.meter_and_settle(
            s, now=now, fee_bps=1000, idempotency_key=f"bench-tick:{minute}"
        )
    return time.perf_counter() - t, batch.moved, batch.buckets


async def two_stage(sm: async_sessionmaker[AsyncSession], minute: int) -> float:
    """The same minute as two stages, for comparison: ``meter_tick`` writes the closed
    minutes unsettled, then the sweep (``settle_usage_batch``) settles and marks them."""
    now = T0 + timedelta(minutes=minute)
    t = time.perf_counter()
    async with sm() as s, s.begin():
        await metering.meter_tick(s, now=now)
    async with sm() as s, s.begin():
        batch = await metering.settle_usage_batch(
            s, before=now, fee_bps=1000, idempotency_key=f"bench-sweep:{minute}"
        )
    elapsed = time.perf_counter() - t
    if batch.buckets == 0:
        raise SystemExit(f"two-stage minute {minute} settled nothing")
    return elapsed


async def run(args: argparse.Namespace, url: str) -> None:
    if True:
        engine = create_engine(Settings(database_url=url, database_pool_size=8))
        sm = create_sessionmaker(engine)
        try:
            print(f"machine: {machine()}")
            if not args.tick_only:
                rate = await single(sm, args.ops)
                print(f"postings/s single (1 movement per commit, 1 connection): {rate:,.0f}")
                rate = await batched(sm, args.ops * 20)
                print(
                    f"postings/s batched (1,000 movements per commit, 4 connections): {rate:,.0f}"
                )
            clusters, providers = args.nodes // 4, max(1, args.nodes // 10)
            t = time.perf_counter()
            await fleet(sm, args.nodes, clusters, providers)
            print(
                f"fleet: {args.nodes:,} nodes, {clusters:,} cluster holds, {providers:,}"
                f" providers (set up in {time.perf_counter() - t:.1f} s)"
            )
            totals = []
            for minute in range(1, args.ticks + 1):
                before = await _postings(sm)
                elapsed, moved, buckets = await tick(sm, minute)
                posted = await _postings(sm) - before
                totals.append(elapsed)
                if buckets != args.nodes:  # a broken tick would look fast
                    raise SystemExit(f"tick {minute} settled {buckets:,} of {args.nodes:,} buckets")
                print(
                    f"tick {minute}: {moved:,} nodes metered, {buckets:,} closed minutes settled"
                    f" ({posted:,} postings) in {elapsed:.3f} s"
                )
            totals.sort()
            print(
                f"tick (meter + settle, one statement) over {len(totals)} ticks: median"
                f" {statistics.median(totals):.3f} s, max {totals[-1]:.3f} s"
            )
            if args.compare:
                staged = sorted(
                    [await two_stage(sm, args.ticks + i) for i in range(1, args.ticks + 1)]
                )
                print(
                    f"same minutes in two stages (meter, then sweep): median"
                    f" {statistics.median(staged):.3f} s; one statement is"
                    f" {statistics.median(staged) / statistics.median(totals):.2f}x faster"
                )
        finally:
            await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument(
        "--tick-only", action="store_true", help="skip the postings/s figures (1 and 2)"
    )
    parser.add_argument(
        "--compare", action="store_true", help="also time the same minutes in two stages"
    )
    arguments = parser.parse_args()
    with scratch_database("tesai_bench_ledger") as database_url:
        asyncio.run(run(arguments, database_url))
