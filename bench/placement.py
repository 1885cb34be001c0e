"""Placement benchmark: pure decisions over a large synthetic pool.

    .venv/bin/python bench/placement.py [--devices 100000] [--requests 20000] [--reference 200]
    .venv/bin/python bench/placement.py --committed [--devices 100000] [--workers 4] [--seconds 20]
        [--concurrency 128] [--one-by-one] [--pgbench]

Builds ``PoolIndex`` over N synthetic devices (a realistic mix of GPU models, regions, GPUs per
device and prices), then places requests of 1–8 GPUs one after another, booking each placement
(``take``) and freeing the oldest bookings as clusters end (``release``), as a control plane
would. Prints placements/s and p50/p99 latency of ``place``, and the same for the reference
scan on a smaller sample of the same requests (with the speed-up ratio). Goal: ≥ 10,000
placements/s and p99 ≤ 5 ms on the index path.

``--committed`` instead seeds a scratch PostgreSQL database with N online devices and customers
with credit, then lets 4 OS processes create clusters for a fixed time through what the API's
``POST /clusters`` calls: the process's ``CreateBatcher`` (``tesai.clusters.batching``; group
commit: the requests in flight in a process are booked together by
``service.create_clusters``, one transaction per batch; not over HTTP), with
``--concurrency`` requests in flight per process (default 128: at 1,000 clusters/s and a few
hundred ms per answer, Little's law puts about that many in flight per process).
``--one-by-one`` instead runs one transaction per cluster (``service.create_cluster``, as the
API did before group commit), for a side-by-side figure. Each process keeps its own
``PoolCache`` (warmed before the clock starts, as an API process does on its first request).
Prints clusters/s committed, p50/p99 latency, lost races, then checker queries: zero
double-booked devices, every hold in the ledger. Goal ≥ 1,000 clusters/s. ``--pgbench`` adds the
commit floor of this machine's PostgreSQL (pgbench, 4 clients, single-row insert transactions).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _util import REDIS_URL, machine, scratch_database

from tesai.scheduling import Device, Placement, PlacementRequest, PoolIndex, place_reference

if TYPE_CHECKING:
    from tesai.settings import Settings

# (model, share of the pool, typical price per GPU-hour in micro-USDC, VRAM MB)
MODELS = [
    ("RTX 4090", 0.30, 350_000, 24_576),
    ("RTX 3090", 0.18, 200_000, 24_576),
    ("A100", 0.14, 1_300_000, 81_920),
    ("H100", 0.10, 2_300_000, 81_920),
    ("L40S", 0.08, 900_000, 49_152),
    ("RTX A6000", 0.08, 600_000, 49_152),
    (None, 0.12, 60_000, 0),
]
REGIONS = [
    ("us-east", 0.22, ["US", "CA"]),
    ("us-west", 0.14, ["US"]),
    ("eu-west", 0.16, ["FR", "NL", "GB", "IE"]),
    ("eu-central", 0.14, ["DE", "PL", "CZ"]),
    ("ap-northeast", 0.10, ["JP", "KR"]),
    ("ap-south", 0.10, ["IN", "SG"]),
    ("sa-east", 0.08, ["BR"]),
    ("af-south", 0.06, ["ZA"]),
]
GPU_COUNTS = [(1, 0.50), (2, 0.20), (4, 0.15), (8, 0.15)]


def synthetic_pool(n: int, rng: random.Random) -> list[Device]:
    """N devices; about 25 % already rented."""
    models = [m for m, *_ in MODELS]
    model_info = {m: (price, vram) for m, _, price, vram in MODELS}
    regions = [r for r, _, _ in REGIONS]
    countries = {r: c for r, _, c in REGIONS}
    pool = []
    for i in range(n):
        model = rng.choices(models, weights=[w for _, w, *_ in MODELS])[0]
        region = rng.choices(regions, weights=[w for _, w, _ in REGIONS])[0]
        price, vram = model_info[model]
        gpus = 0 if model is None else rng.choices(*zip(*GPU_COUNTS, strict=True))[0]
        pool.append(
            Device(
                id=f"dev-{i:06d}",
                gpu_model=model,
                gpu_count=gpus,
                vram_mb=vram,
                region=region,
                country=rng.choice(countries[region]),
                price_per_gpu_hour_micro=int(price * rng.uniform(0.7, 1.6)),
                reliability=round(min(1.0, rng.betavariate(20, 1.2)), 3),
                verified_score=round(rng.uniform(0.5, 1.0), 2),
                connectivity_tier=rng.choice([1, 2, 2, 3, 3, 3, 4, 5, None]),
                free=rng.random() > 0.25,
            )
        )
    return pool


def synthetic_requests(n: int, rng: random.Random) -> list[PlacementRequest]:
    """N requests of 1–8 GPUs with a realistic share of filters."""
    gpu_models = [(m, w, p) for m, w, p, _ in MODELS if m is not None]
    regions = [r for r, _, _ in REGIONS]
    out = []
    for _ in range(n):
        model, _, price = rng.choices(gpu_models, weights=[w for _, w, _ in gpu_models])[0]
        total = rng.choice([1, 1, 1, 2, 2, 4, 4, 8, 3, 6])
        per_node = rng.choice([None, None, None, *[d for d in (1, 2, 4, 8) if total % d == 0]])
        out.append(
            PlacementRequest(
                gpu_model=model,
                gpu_count=total,
                gpus_per_node=per_node,
                max_price_per_gpu_hour_micro=(
                    int(price * rng.uniform(0.9, 1.5)) if rng.random() < 0.6 else None
                ),
                regions=frozenset(rng.sample(regions, rng.choice([1, 2])))
                if rng.random() < 0.4
                else frozenset(),
                min_reliability=rng.choice([0.0, 0.0, 0.9, 0.95]),
                min_connectivity_tier=rng.choice([None, None, 3]),
                min_verified_score=rng.choice([0.0, 0.0, 0.7]),
                allow_cross_region=rng.random() < 0.7,
            )
        )
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run(n_devices: int, n_requests: int, n_reference: int, live: int, seed: int) -> int:
    rng = random.Random(seed)
    pool = synthetic_pool(n_devices, rng)
    requests = synthetic_requests(n_requests, rng)

    t0 = time.perf_counter()
    index = PoolIndex.build(pool)
    build_s = time.perf_counter() - t0
    # A long-lived index is old data: keep the cyclic GC from rescanning it on every collection
    # (a full collection over the 100k-device snapshot otherwise costs ~1 s, once).
    gc.freeze()
    print(f"pool: {n_devices} devices ({sum(d.free for d in pool)} free); build {build_s:.2f} s")

    # Reference vs index on the same snapshot and requests (no booking between them).
    sample = requests[:n_reference]
    ref_lat = []
    for req in sample:
        t = time.perf_counter()
        expected = place_reference(pool, req)
        ref_lat.append(time.perf_counter() - t)
        if index.place(req) != expected:
            print("MISMATCH between index and reference for", req, file=sys.stderr)
            return 1
    idx_lat = []
    for req in sample:
        t = time.perf_counter()
        index.place(req)
        idx_lat.append(time.perf_counter() - t)

    # The index path with booking and churn.
    lat = []
    cpu = []  # CPU time of the same calls: on a shared, loaded machine wall time includes waits
    placed = 0
    booked: deque[tuple[str, ...]] = deque()
    t_all = time.perf_counter()
    for req in requests:
        c = time.thread_time()
        t = time.perf_counter()
        result = index.place(req)
        lat.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
        if isinstance(result, Placement):
            placed += 1
            index.take(result.device_ids)
            booked.append(result.device_ids)
            if len(booked) > live:
                index.release(booked.popleft())
    wall = time.perf_counter() - t_all

    ref_mean = statistics.fmean(ref_lat)
    idx_mean = statistics.fmean(idx_lat)
    print(
        f"index:     {len(requests)} requests, {placed} placed, {len(requests) - placed} shortfalls"
    )
    print(
        f"           {len(requests) / sum(lat):,.0f} placements/s (place only); "
        f"{len(requests) / wall:,.0f}/s with take/release"
    )
    print(
        f"           p50 {percentile(lat, 50) * 1e3:.3f} ms, "
        f"p99 {percentile(lat, 99) * 1e3:.3f} ms, max {max(lat) * 1e3:.3f} ms"
    )
    print(
        f"  (CPU)    {len(requests) / sum(cpu):,.0f} placements/s; "
        f"p50 {percentile(cpu, 50) * 1e3:.3f} ms, p99 {percentile(cpu, 99) * 1e3:.3f} ms"
    )
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"reference: {len(sample)} requests, {1 / ref_mean:,.1f} placements/s, "
        f"p50 {percentile(ref_lat, 50) * 1e3:.1f} ms, p99 {percentile(ref_lat, 99) * 1e3:.1f} ms"
    )
    print(
        f"ratio:     index is {ref_mean / idx_mean:,.0f}× faster than the reference "
        f"on the same {len(sample)} requests (identical results)"
    )
    # Requests that cannot be met: the index counts why over the model's devices.
    short_lat = []
    for req in requests[:200]:
        impossible = replace(req, max_price_per_gpu_hour_micro=1)
        t = time.perf_counter()
        result = index.place(impossible)
        short_lat.append(time.perf_counter() - t)
        assert not isinstance(result, Placement)
    print(
        f"shortfall: {len(short_lat)} unmeetable requests, p50 "
        f"{percentile(short_lat, 50) * 1e3:.1f} ms, p99 {percentile(short_lat, 99) * 1e3:.1f} ms"
    )
    ok = len(requests) / sum(lat) >= 10_000 and percentile(lat, 99) <= 0.005
    print("goal (>= 10,000/s, p99 <= 5 ms):", "met" if ok else "NOT met")
    return 0


# --- committed to PostgreSQL: the real service path from several processes -------------------


def _committed_devices(n: int, provider_id: str, rng: random.Random) -> list[dict[str, object]]:
    """Rows for ``devices``: the synthetic pool's mix, every device online and verified."""
    rows: list[dict[str, object]] = []
    for d in synthetic_pool(n, rng):
        rows.append(
            {
                "id": uuid.uuid4(),
                "provider_id": uuid.UUID(provider_id),
                "name": d.id,
                "status": "online",
                "hardware": {},
                "gpu_model": d.gpu_model,
                "gpu_count": d.gpu_count,
                "vram_bytes_per_gpu": d.vram_mb * 1024 * 1024,
                "cpu_cores": 16,
                "ram_bytes": 64 * 2**30,
                "region": d.region,
                "country": d.country,
                "connectivity_tier": f"t{d.connectivity_tier}" if d.connectivity_tier else None,
                "price_per_gpu_hour_micro": d.price_per_gpu_hour_micro,
                "reliability": d.reliability,
                "verified_score": 1000.0 * d.verified_score / (1.0 - min(d.verified_score, 0.99)),
                "version": 1,
            }
        )
    return rows


def _committed_requests(n: int, rng: random.Random) -> list[dict[str, object]]:
    """``ClusterRequest`` bodies of 1–8 GPUs (the same mix as the pure benchmark)."""
    out: list[dict[str, object]] = []
    for r in synthetic_requests(n, rng):
        out.append(
            {
                "gpu_model": r.gpu_model,
                "gpus": r.gpu_count,
                "gpus_per_node": r.gpus_per_node,
                "duration_s": 3600,
                "max_price_per_gpu_hour_micro": r.max_price_per_gpu_hour_micro,
                "regions": sorted(r.regions),
                "min_reliability": r.min_reliability,
                "min_connectivity_tier": r.min_connectivity_tier,
                "allow_cross_region": r.allow_cross_region,
            }
        )
    return out


def _settings(url: str, home: str) -> Settings:
    from tesai.settings import Settings

    return Settings(
        database_url=url,
        redis_url=REDIS_URL,
        redis_prefix=f"bench-placement-{os.getpid()}:",
        home=Path(home),
    )


async def _seed(url: str, home: str, n_devices: int, n_customers: int, seed: int) -> list[str]:
    """A provider with ``n_devices`` online devices and customers with plenty of credit."""
    from sqlalchemy import insert

    from tesai.accounts.models import User
    from tesai.billing import service as billing
    from tesai.devices.models import Device
    from tesai.runtime import open_runtime

    runtime = await open_runtime(_settings(url, home), run_periodic=False)
    try:
        provider = uuid.uuid4()
        customers = [uuid.uuid4() for _ in range(n_customers)]
        async with runtime.sessionmaker.begin() as s:
            await s.execute(
                insert(User),
                [{"id": provider, "email": "provider@bench.invalid", "is_provider": True}]
                + [{"id": c, "email": f"c{i}@bench.invalid"} for i, c in enumerate(customers)],
            )
            rows = _committed_devices(n_devices, str(provider), random.Random(seed))
            for i in range(0, len(rows), 2_000):
                await s.execute(insert(Device), rows[i : i + 2_000])
        async with runtime.sessionmaker.begin() as s:
            for c in customers:
                await billing.admin_grant_credit(
                    s,
                    admin_user_id=None,
                    user_id=c,
                    amount_micro=10**13,
                    reason="bench",
                    idempotency_key=f"bench-credit:{c}",
                )
        async with runtime.engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")
    finally:
        await runtime.close()
    return [str(c) for c in customers]


@dataclass
class WorkerResult:
    committed: int = 0
    shortfalls: int = 0
    conflicts: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""
    first_conflict: str = ""
    elapsed: float = 0.0
    """From the start signal until the last request of the window finished."""
    warm_s: float = 0.0
    """The process's first full read of the pool into its index."""
    stale_picks: int = 0
    """Placements whose locked rows disagreed with the index (retried on other devices)."""
    deltas: int = 0
    delta_rows: int = 0
    full_loads: int = 0


def _committed_worker(
    url: str,
    home: str,
    customers: list[str],
    requests: list[dict[str, object]],
    concurrency: int,
    batched: bool,
    start: Any,
    seconds: float,
    out: Any,
) -> None:
    """One "API process": create clusters through the service, one transaction each."""
    try:
        out.put(
            asyncio.run(
                _worker_loop(url, home, customers, requests, concurrency, batched, start, seconds)
            )
        )
    except BaseException as exc:  # the parent waits for one result per process
        out.put(WorkerResult(errors=1, first_error=f"worker crashed: {exc!r}"))
        raise


async def _worker_loop(
    url: str,
    home: str,
    customers: list[str],
    requests: list[dict[str, object]],
    concurrency: int,
    batched: bool,
    start: Any,
    seconds: float,
) -> WorkerResult:
    from tesai.clusters import service
    from tesai.clusters.batching import create_batcher
    from tesai.clusters.errors import NoCapacity
    from tesai.clusters.pool import pool_cache
    from tesai.clusters.schemas import CreateCluster
    from tesai.db import run_after_commit
    from tesai.errors import AppError
    from tesai.runtime import open_runtime

    runtime = await open_runtime(_settings(url, home), run_periodic=False)
    result = WorkerResult()
    bodies = [CreateCluster(name="bench", request=r) for r in requests]  # type: ignore[arg-type]
    counter = iter(range(10**9))
    cache = pool_cache(runtime.state)
    t = time.perf_counter()
    async with runtime.sessionmaker() as session:
        await cache.current(session)
    result.warm_s = time.perf_counter() - t
    gc.freeze()  # the index is long-lived data (see the pure benchmark)
    start.wait()
    t_start = time.monotonic()
    deadline = t_start + seconds

    batcher = create_batcher(runtime)

    async def one_by_one(customer: uuid.UUID, body: CreateCluster) -> None:
        # The API's unit of work before group commit (tesai.db.get_session): one
        # transaction per cluster, committed or rolled back.
        async with runtime.sessionmaker() as session:
            try:
                await service.create_cluster(session, runtime, customer, body)
            except BaseException:
                await session.rollback()
                raise
            await session.commit()
            await run_after_commit(session)

    async def loop(slot: int) -> None:
        customer = uuid.UUID(customers[slot % len(customers)])
        while time.monotonic() < deadline:
            body = bodies[next(counter) % len(bodies)]
            t = time.perf_counter()
            try:
                if batched:
                    await batcher.create(customer, body)  # what POST /clusters calls
                else:
                    await one_by_one(customer, body)
            except NoCapacity as exc:
                if "booked by someone else" in str(exc) or "changed" in str(exc):
                    result.conflicts += 1
                    cause = exc.__cause__
                    result.first_conflict = result.first_conflict or f"{exc} ({cause!r:.300})"
                else:
                    result.shortfalls += 1
                continue
            except AppError as exc:
                result.errors += 1
                result.first_error = result.first_error or f"{exc.code}: {exc}"
                continue
            result.latencies.append(time.perf_counter() - t)
            result.committed += 1

    try:
        await asyncio.gather(*(loop(i) for i in range(concurrency)))
        result.elapsed = time.monotonic() - t_start
    finally:
        await runtime.close()
    result.stale_picks = cache.stats.conflicts
    result.deltas = cache.stats.deltas
    result.delta_rows = cache.stats.delta_rows
    result.full_loads = cache.stats.full_loads
    return result


CHECKS = {
    "double-booked devices (a device in two live cluster_nodes rows)": """
        SELECT count(*) FROM (
            SELECT device_id FROM cluster_nodes WHERE released_at IS NULL
            GROUP BY device_id HAVING count(*) > 1) x""",
    "live nodes whose device is not busy": """
        SELECT count(*) FROM cluster_nodes n JOIN devices d ON d.id = n.device_id
        WHERE n.released_at IS NULL AND d.status <> 'busy'""",
    "busy devices without a live node": """
        SELECT count(*) FROM devices d WHERE d.status = 'busy' AND NOT EXISTS (
            SELECT 1 FROM cluster_nodes n WHERE n.device_id = d.id AND n.released_at IS NULL)""",
    "clusters whose hold account differs from hold_micro": """
        SELECT count(*) FROM clusters c LEFT JOIN ledger_accounts a
            ON a.owner_user_id = c.customer_id AND a.kind = 'customer_held'
           AND a.ref = 'cluster:' || c.id::text
        WHERE a.balance IS DISTINCT FROM c.hold_micro""",
    "customers whose available + held differs from the credit granted": """
        SELECT count(*) FROM (
            SELECT a.owner_user_id, sum(a.balance) AS total FROM ledger_accounts a
            WHERE a.kind IN ('customer_available', 'customer_held')
            GROUP BY a.owner_user_id) x WHERE x.total <> 10000000000000""",
}


def _pgbench(url: str, clients: int, seconds: int) -> str:
    """Commit floor: pgbench, ``clients`` connections, one single-row INSERT per transaction
    (synchronous commit as configured), in the scratch database."""
    import subprocess
    from urllib.parse import urlsplit

    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://"))
    env = dict(os.environ, PGPASSWORD=parts.password or "")
    conn = [
        "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
        "-U", parts.username or "postgres",
    ]  # fmt: skip
    db = parts.path.lstrip("/")
    script = Path(tempfile.mkdtemp(prefix="tesai-pgbench-")) / "insert.sql"
    script.write_text("INSERT INTO bench_commit (at) VALUES (now());\n")
    setup = "CREATE TABLE IF NOT EXISTS bench_commit (id bigserial PRIMARY KEY, at timestamptz)"
    subprocess.run(["psql", *conn, "-d", db, "-qc", setup], env=env, check=True)
    out = subprocess.run(
        ["pgbench", *conn, "-n", "-c", str(clients), "-j", "2", "-T", str(seconds),
         "-f", str(script), db],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    shutil.rmtree(script.parent, ignore_errors=True)
    tps = [line for line in out.splitlines() if line.startswith(("tps", "latency average"))]
    return "; ".join(tps)


async def _check(url: str) -> tuple[int, int, dict[str, int]]:
    from sqlalchemy import text

    from tesai.db import create_engine
    from tesai.settings import Settings

    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.connect() as conn:

            async def count(sql: str) -> int:
                return int((await conn.execute(text(sql))).scalar_one())

            clusters = await count("SELECT count(*) FROM clusters")
            nodes = await count("SELECT count(*) FROM cluster_nodes")
            found = {name: await count(sql) for name, sql in CHECKS.items()}
    finally:
        await engine.dispose()
    return clusters, nodes, found


def bench_committed(
    n_devices: int,
    workers: int,
    concurrency: int,
    seconds: float,
    customers: int,
    seed: int,
    pgbench: bool = False,
    batched: bool = True,
) -> int:
    """Place + commit clusters to PostgreSQL from ``workers`` concurrent processes.

    Each process opens its own runtime (engine, pool, ``PoolCache``) like an API worker and
    creates clusters as ``POST /clusters`` does (its ``CreateBatcher``; with ``batched``
    false, ``create_cluster`` in a transaction of its own per cluster). Afterwards checker
    queries confirm no device is booked twice and every cluster's hold is in the ledger.
    Goal ≥ 1,000 clusters/s.
    """
    print(machine())
    rng = random.Random(seed)
    requests = _committed_requests(2_000, rng)
    home = tempfile.mkdtemp(prefix="tesai-bench-home-")
    try:
        with scratch_database("tesai_bench_place") as url:
            t = time.perf_counter()
            ids = asyncio.run(_seed(url, home, n_devices, customers, seed))
            # One key for every process (each would otherwise race to create it).
            from tesai.clusters.service import secret_box

            secret_box(_settings(url, home))
            print(
                f"seeded {n_devices:,} online devices, {customers} customers with credit "
                f"in {time.perf_counter() - t:.1f} s"
            )
            ctx = mp.get_context("spawn")
            start = ctx.Barrier(workers + 1)  # passed once every process has warmed its index
            out = ctx.Queue()
            procs = [
                ctx.Process(
                    target=_committed_worker,
                    args=(
                        url,
                        home,
                        ids[w::workers],
                        requests[w::workers],
                        concurrency,
                        batched,
                        start,
                        seconds,
                        out,
                    ),
                )
                for w in range(workers)
            ]
            for p in procs:
                p.start()
            start.wait(timeout=600)
            results: list[WorkerResult] = [out.get(timeout=seconds + 300) for _ in procs]
            wall = max([r.elapsed for r in results] + [0.01])
            for p in procs:
                p.join()
            committed = sum(r.committed for r in results)
            lat = [x for r in results for x in r.latencies]
            clusters, nodes, found = asyncio.run(_check(url))
            mode = "group commit" if batched else "one transaction per cluster"
            print(
                f"{workers} processes × {concurrency} in flight ({mode}), {seconds:g} s: "
                f"{committed} clusters committed ({nodes} nodes) in {wall:.1f} s "
                f"→ {committed / wall:,.1f} clusters/s"
            )
            print(
                f"  shortfalls {sum(r.shortfalls for r in results)}, lost races "
                f"{sum(r.conflicts for r in results)}, other errors "
                f"{sum(r.errors for r in results)} "
                f"{next((r.first_error for r in results if r.first_error), '')}"
            )
            first_conflict = next((r.first_conflict for r in results if r.first_conflict), "")
            if first_conflict:
                print(f"  first lost race: {first_conflict}")
            if lat:
                print(
                    f"  create_cluster latency p50 {percentile(lat, 50) * 1e3:.1f} ms, "
                    f"p99 {percentile(lat, 99) * 1e3:.1f} ms"
                )
            print(
                f"  index per process: warm-up (full read) "
                f"{statistics.median(r.warm_s for r in results):.1f} s; "
                f"{sum(r.deltas for r in results)} delta reads of "
                f"{sum(r.delta_rows for r in results)} changed rows; "
                f"{sum(r.full_loads for r in results) - len(results)} later full reads; "
                f"{sum(r.stale_picks for r in results)} stale picks retried"
            )
            print(f"load average after the run: {os.getloadavg()[0]:.1f}")
            if pgbench:
                print(f"  pgbench commit floor, {workers} clients: {_pgbench(url, workers, 10)}")
            ok = clusters == committed
            print(f"checker: {clusters} clusters in the database (committed {committed})")
            for name, count in found.items():
                print(f"  {name}: {count}")
                ok = ok and count == 0
            print("checker:", "OK" if ok else "FAILED")
            print("goal (>= 1,000 clusters/s):", "met" if committed / wall >= 1000 else "NOT met")
            return 0 if ok else 1
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--reference", type=int, default=200, help="requests for the reference")
    parser.add_argument("--live", type=int, default=3_000, help="bookings kept before releasing")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--committed",
        action="store_true",
        help="instead: create clusters in PostgreSQL through the service from several processes",
    )
    parser.add_argument("--workers", type=int, default=4, help="--committed: processes")
    parser.add_argument(
        "--concurrency", type=int, default=128, help="--committed: requests in flight per process"
    )
    parser.add_argument(
        "--one-by-one",
        action="store_true",
        help="--committed: one transaction per cluster (create_cluster), not the API's batches",
    )
    parser.add_argument("--seconds", type=float, default=20, help="--committed: how long")
    parser.add_argument("--customers", type=int, default=64, help="--committed: customers")
    parser.add_argument("--pgbench", action="store_true", help="--committed: commit floor too")
    args = parser.parse_args()
    if args.committed:
        return bench_committed(
            args.devices,
            args.workers,
            args.concurrency,
            args.seconds,
            args.customers,
            args.seed,
            args.pgbench,
            not args.one_by_one,
        )
    return run(args.devices, args.requests, args.reference, args.live, args.seed)


if __name__ == "__main__":
    sys.exit(main())
