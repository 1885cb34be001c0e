"""Random ledger operations with injected crashes; counts imbalances (must be 0).

    .venv/bin/python bench/ledger_chaos.py --ops 100000 --workers 4 [--kill-every 20]

Worker processes each run random money operations (deposits with replayed signatures,
grants, holds, extensions, settlements, releases, payouts paid or reversed) through the
real service functions on a scratch database. Inside each operation a crash is injected at
a random checkpoint (between flush and commit, or after the commit before the caller
hears of it) and the operation is retried with the same idempotency key. Each worker
checks its exact model every ``--check-every`` operations.

With ``--kill-every N`` the parent also SIGKILLs a random worker every N seconds; the
operation it was in is read from its journal and run again with the same key by a
replacement process (it must either replay or apply once), and a fresh worker continues.
At the end the database-wide invariants are checked: postings sum to zero overall and
per transaction, no account that must stay ≥ 0 is negative, every balance equals its
postings, no chain signature credited twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from _util import machine, scratch_database  # noqa: E402
from tests.billing.chaos import Chaos, service_call  # noqa: E402

from tesai.db import create_engine, create_sessionmaker  # noqa: E402
from tesai.settings import Settings  # noqa: E402

UUID_ARGS = {"user_id", "provider_user_id", "payout_id", "admin_user_id"}


def _encode(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in kwargs.items()}


def _decode(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        k: uuid.UUID(v) if k in UUID_ARGS and isinstance(v, str) else v for k, v in kwargs.items()
    }


async def _work(url: str, seed: int, ops: int, check_every: int, journal: str, out: str) -> None:
    engine = create_engine(Settings(database_url=url, database_pool_size=2))
    chaos = Chaos(create_sessionmaker(engine), random.Random(seed), crash_rate=0.5)
    await chaos.setup()
    fh = open(journal, "a", buffering=1)  # noqa: SIM115 - line-buffered, lives with the worker

    def write(name: str, kwargs: dict[str, Any]) -> None:
        fh.write(json.dumps({"name": name, "kwargs": _encode(kwargs)}) + "\n")

    chaos.journal = write
    imbalances = 0
    # Per-worker exact checks compare this worker's own users; fees are shared between
    # workers, so the conservation check is the database-wide one at the end.
    chaos.base_fees = 0
    while chaos.operations < ops:
        await chaos.random_step()
        if chaos.operations % check_every == 0:
            problems = [
                p for p in await chaos.check() if not p.startswith(("fees", "conservation"))
            ]
            imbalances += len(problems)
            for p in problems:
                print(f"[seed {seed}] {p}", flush=True)
            Path(out).write_text(
                json.dumps(
                    {
                        "operations": chaos.operations,
                        "crashes": chaos.crashes,
                        "imbalances": imbalances,
                    }
                )
            )
    Path(out).write_text(
        json.dumps(
            {"operations": chaos.operations, "crashes": chaos.crashes, "imbalances": imbalances}
        )
    )
    await engine.dispose()


def worker(url: str, seed: int, ops: int, check_every: int, journal: str, out: str) -> None:
    asyncio.run(_work(url, seed, ops, check_every, journal, out))


async def _replay_last(url: str, journal: str) -> str:
    """Run the killed worker's last journaled call again with the same key."""
    path = Path(journal)
    lines = path.read_text().splitlines() if path.exists() else []
    if not lines:
        return "nothing"
    try:
        last = json.loads(lines[-1])
    except json.JSONDecodeError:  # killed mid-line: the call never started
        return "torn"
    engine = create_engine(Settings(database_url=url, database_pool_size=1))
    sm = create_sessionmaker(engine)
    try:
        async with sm() as s, s.begin():
            movement = await service_call(last["name"], _decode(last["kwargs"]))(s)
        return "replayed" if movement.replayed else "applied"
    except Exception as exc:  # a refusal (insufficient funds) is a valid outcome too
        return type(exc).__name__
    finally:
        await engine.dispose()


async def _global_check(url: str) -> list[str]:
    engine = create_engine(Settings(database_url=url, database_pool_size=1))
    chaos = Chaos(create_sessionmaker(engine), random.Random(0))
    try:
        return await chaos.check(exact=False)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=100_000, help="operations in all")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "1")))
    parser.add_argument("--check-every", type=int, default=200)
    parser.add_argument("--kill-every", type=float, default=0.0, help="seconds; 0 = no SIGKILL")
    parser.add_argument("--max-kills", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"seed: {args.seed} (replay with --seed {args.seed})")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds: workers stopped, scratch database dropped

    signal.signal(signal.SIGTERM, stop)
    ctx = mp.get_context("spawn")
    with scratch_database("tesai_bench_chaos") as url, tempfile.TemporaryDirectory() as tmp:
        per = args.ops // args.workers
        started = time.perf_counter()
        procs: dict[int, tuple[Any, str, str, int]] = {}
        next_seed = args.seed * 1000
        done_ops = done_crashes = done_imbalances = kills = 0
        replays: dict[str, int] = {}

        def spawn(ops: int) -> None:
            nonlocal next_seed
            next_seed += 1
            journal, out = f"{tmp}/j{next_seed}", f"{tmp}/o{next_seed}"
            p = ctx.Process(
                target=worker, args=(url, next_seed, ops, args.check_every, journal, out)
            )
            p.start()
            procs[next_seed] = (p, journal, out, ops)

        def collect(out: str) -> tuple[int, int, int]:
            try:
                data = json.loads(Path(out).read_text())
            except (OSError, json.JSONDecodeError):
                return 0, 0, 0
            return data["operations"], data["crashes"], data["imbalances"]

        for _ in range(args.workers):
            spawn(per)

        rng = random.Random(args.seed)
        last_kill = last_report = time.monotonic()
        try:
            while procs:
                time.sleep(0.2)
                if time.monotonic() - last_report > 60:
                    last_report = time.monotonic()
                    running = [collect(out) for _, _, out, _ in procs.values()]
                    print(
                        f"progress after {time.perf_counter() - started:.0f} s:"
                        f" {done_ops + sum(r[0] for r in running):,} operations,"
                        f" {done_crashes + sum(r[1] for r in running):,} crashes,"
                        f" {done_imbalances + sum(r[2] for r in running)} imbalances",
                        flush=True,
                    )
                for seed, (p, _journal, out, _ops) in list(procs.items()):
                    if not p.is_alive():
                        p.join()
                        o, c, i = collect(out)
                        done_ops, done_crashes, done_imbalances = (
                            done_ops + o,
                            done_crashes + c,
                            done_imbalances + i,
                        )
                        if p.exitcode != 0:
                            done_imbalances += 1
                            print(f"worker {seed} failed with exit code {p.exitcode}")
                        del procs[seed]
                if (
                    args.kill_every
                    and procs
                    and kills < args.max_kills
                    and time.monotonic() - last_kill > args.kill_every
                ):
                    last_kill = time.monotonic()
                    seed = rng.choice(list(procs))
                    p, journal, out, ops = procs.pop(seed)
                    os.kill(p.pid, signal.SIGKILL)
                    p.join()
                    kills += 1
                    o, c, i = collect(out)
                    done_ops, done_crashes, done_imbalances = (
                        done_ops + o,
                        done_crashes + c,
                        done_imbalances + i,
                    )
                    outcome = asyncio.run(_replay_last(url, journal))
                    replays[outcome] = replays.get(outcome, 0) + 1
                    if ops - o > 50:
                        spawn(ops - o)
        finally:
            for p, _, _, _ in procs.values():  # interrupted: stop the workers
                p.kill()
                p.join()
        problems = asyncio.run(_global_check(url))
        for p in problems:
            print(f"database-wide: {p}")
        elapsed = time.perf_counter() - started
        print(f"operations run: {done_ops:,} ({done_ops / elapsed:,.0f}/s over {elapsed:.0f} s)")
        print(f"crashes injected: {done_crashes:,} in-process, {kills} SIGKILLs")
        if kills:
            print(f"killed calls run again with the same key: {replays}")
        print(f"imbalances found: {done_imbalances + len(problems)}")
        if done_imbalances + len(problems):
            sys.exit(1)


if __name__ == "__main__":
    main()
