"""Failure detection: 10,000 devices at a 2 s interval, 100 silenced at once.

Measures the time from each silenced device's last heartbeat to its ``offline`` status, and
counts false ``offline`` among the devices that kept beating.

- Devices: ``--devices`` rows inserted directly in a scratch PostgreSQL database, already
  ``online`` and verified (joining 10,000 through the API would take minutes and is not what
  is measured; `bench/heartbeats.py` covers the join and HTTP path).
- Sweeper as in production: `tesai server --workers 1` with no broker, so the ``devices.sweep``
  periodic task (and every other periodic task) runs in the server process's in-process
  runner on its normal schedule (``TESAI_SWEEP_INTERVAL_S``, default 1 s);
  ``TESAI_HEARTBEAT_INTERVAL_S=2``, grace 3 intervals (6 s), storm protection at its
  production settings (hold when > 50 % of ≥ 10 devices go silent at once).
- Heartbeats: 5,000/s are beyond HTTP on this 2-core machine (see `bench/heartbeats.py`), and
  beyond the heartbeat service function too (≈ 500 µs of CPU per call in the caller, i.e.
  2.5 cores for 5,000/s). So ``--beaters`` separate processes beat every device on its own
  phase of the 2 s cycle, and by default (``--mode liveness``):
  the silenced devices beat through ``tesai.devices.agents.heartbeat`` (the function the
  endpoint calls, credential already resolved, the same telemetry body), and the other
  devices' beats are written as what a heartbeat does to liveness — the device's score in
  the liveness sorted set, the only thing the sweeper reads — batched into one ZADD per
  10 ms tick. ``--mode service`` sends every beat through the service function (for a
  machine with the cores for it, or fewer devices).
- After ``--warmup`` seconds of steady beats, ``--silenced`` devices chosen at random stop at
  once. Offline times are the ``device_events`` rows the sweeper writes.

Goals (issue 3, acceptance 3): p99 ≤ 10 s from last heartbeat to ``offline``; 0 false
``offline``.

    python bench/failure_detection.py [--devices 10000] [--silenced 100] [--interval 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as EventT
from pathlib import Path
from typing import Any

from _util import (
    REDIS_URL,
    delete_redis_prefix,
    free_port,
    machine,
    scratch_database,
    server_process,
)

GiB = 1 << 30
GOAL_P99_S = 10.0


def beat_body() -> dict[str, Any]:
    gpu = {
        "utilization_pct": 87.0,
        "memory_used_bytes": 60 * GiB,
        "memory_total_bytes": 80 * GiB,
        "temperature_c": 64.0,
        "power_w": 310.5,
    }
    return {
        "seq": 1,
        "sent_at": "2026-11-28T12:00:00Z",
        "status": "ready",
        "telemetry": {
            "cpu_percent": 23.5,
            "mem_used_bytes": 40 * GiB,
            "mem_total_bytes": 128 * GiB,
            "gpus": [{"index": g, "uuid": f"GPU-{g}", **gpu} for g in range(2)],
            "net": {"rtt_ms": 0.4, "bandwidth_mbps": 1300.0, "tier": "t2"},
        },
    }


async def insert_devices(database_url: str, n: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A provider and ``n`` online, verified devices, written straight to the database."""
    from sqlalchemy import insert

    from tesai.accounts.models import User
    from tesai.db import create_engine
    from tesai.devices.models import Device, DeviceStatus
    from tesai.settings import Settings

    engine = create_engine(Settings(database_url=database_url))
    provider = uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(n)]
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(User).values(id=provider, email="bench-fd@example.com", is_provider=True)
        )
        for start in range(0, n, 2000):
            await conn.execute(
                insert(Device),
                [
                    {
                        "id": d,
                        "provider_id": provider,
                        "name": f"sim-{start + i}",
                        "status": DeviceStatus.online,
                        "hardware": {},
                        "gpu_model": "NVIDIA A100",
                        "gpu_count": 2,
                        "vram_bytes_per_gpu": 80 * GiB,
                        "cpu_cores": 16,
                        "ram_bytes": 128 * GiB,
                        "price_per_gpu_hour_micro": 1_000_000,
                        "verified_score": 1000.0,
                        "verified_at": now,
                        "agent_version": "0.1.0",
                    }
                    for i, d in enumerate(ids[start : start + 2000])
                ],
            )
    await engine.dispose()
    return provider, ids


def beater(
    database_url: str,
    prefix: str,
    interval_s: float,
    provider: str,
    devices: list[str],
    silenced: list[str],
    clock: Any,
    ready: EventT,
    stop: EventT,
    out: str,
    mode: str,
) -> None:
    """One process of simulated agents: every device beats every ``interval_s`` on its phase."""
    import uvloop

    uvloop.run(
        _beat(database_url, prefix, interval_s, provider, devices, set(silenced), clock,
              ready, stop, out, mode)
    )  # fmt: skip


async def _beat(
    database_url: str,
    prefix: str,
    interval_s: float,
    provider: str,
    devices: list[str],
    silenced: set[str],
    clock: Any,
    ready: EventT,
    stop: EventT,
    out: str,
    mode: str,
) -> None:
    """``clock[0]``: when to start (set once every beater is ready); ``clock[1]``: when the
    silenced devices stop (0 until the main process sets it)."""
    from tesai.db import create_engine, create_sessionmaker
    from tesai.devices import keys
    from tesai.devices.agents import heartbeat
    from tesai.devices.deps import DeviceAuth
    from tesai.kit.cache import create_cache
    from tesai.protocol.v1 import Heartbeat
    from tesai.settings import Settings

    settings = Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        heartbeat_interval_s=interval_s,
    )
    cache = create_cache(REDIS_URL, prefix)
    engine = create_engine(settings)  # for pending commands only; none in this run
    sessionmaker = create_sessionmaker(engine)
    body = Heartbeat.model_validate(beat_body())
    auths = [
        DeviceAuth(
            device_id=uuid.UUID(d),
            provider_id=uuid.UUID(provider),
            credential_id=uuid.uuid4(),
            expires_at=time.time() + 86400,
            token_hash="bench",
        )
        for d in devices
    ]
    n = len(auths)
    last_beat: dict[str, float] = {}
    lates: list[float] = []
    beats = 0
    errors = 0
    queue: asyncio.Queue[tuple[DeviceAuth, float]] = asyncio.Queue()
    ready.set()
    while clock[0] == 0.0:
        await asyncio.sleep(0.01)
    start_at = clock[0]
    settle_at = start_at + 5.0  # lateness counts after the start-up catch-up

    async def full_beat(auth: DeviceAuth, due: float) -> None:
        nonlocal beats, errors
        sent = time.time()
        if due >= settle_at:
            lates.append(sent - due)
        try:
            await heartbeat(sessionmaker, cache, settings, auth, body)
        except Exception:  # counted and reported
            errors += 1
            return
        beats += 1
        key = str(auth.device_id)
        if key in silenced:
            last_beat[key] = sent

    async def worker() -> None:
        while True:
            auth, due = await queue.get()
            await full_beat(auth, due)
            queue.task_done()

    workers = [asyncio.create_task(worker()) for _ in range(64)]
    await asyncio.sleep(max(0.0, start_at - time.time()))
    silence_at = float("inf")
    cycle = 0
    i = 0  # next device (in phase order) whose beat is due
    while not stop.is_set():
        now = time.time()
        if clock[1] != 0.0:
            silence_at = clock[1]
        light: dict[str, float] = {}
        while True:
            due = start_at + cycle * interval_s + interval_s * i / n
            if due > now:
                break
            auth = auths[i]
            key = str(auth.device_id)
            if key in silenced:
                if due < silence_at:
                    queue.put_nowait((auth, due))
            elif mode == "service":
                queue.put_nowait((auth, due))
            else:
                light[key] = now
                if due >= settle_at:
                    lates.append(now - due)
            i += 1
            if i == n:
                i, cycle = 0, cycle + 1
        if light:
            # What a heartbeat does to liveness (the only thing the sweeper reads), batched.
            await cache.zadd(keys.LIVENESS, light)
            beats += len(light)
        await asyncio.sleep(0.01)
    for w in workers:
        w.cancel()
    lates.sort()
    Path(out).write_text(
        json.dumps(
            {
                "beats": beats,
                "errors": errors,
                "late_p99_s": lates[int(0.99 * (len(lates) - 1))] if lates else 0.0,
                "late_max_s": lates[-1] if lates else 0.0,
                "last_beat": last_beat,
                "elapsed_s": time.time() - start_at,
            }
        )
    )
    await cache.close()
    await engine.dispose()


async def offline_events(database_url: str) -> tuple[list[tuple[str, float, str]], list[str]]:
    """(device id, time, reason) of every ``offline`` transition so far; fleet event kinds."""
    import asyncpg
    from _util import _plain

    conn = await asyncpg.connect(_plain(database_url))
    try:
        rows = await conn.fetch(
            "SELECT device_id, at, reason FROM device_events WHERE to_status = 'offline'"
        )
        storm = await conn.fetch("SELECT kind, message FROM fleet_events ORDER BY id")
    finally:
        await conn.close()
    return [(str(r["device_id"]), r["at"].timestamp(), r["reason"]) for r in rows], [
        f"{kind}: {message}" for kind, message in storm
    ]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--silenced", type=int, default=100)
    parser.add_argument("--interval", type=float, default=2.0, help="heartbeat interval, s")
    parser.add_argument("--warmup", type=float, default=20.0, help="steady beats before silence")
    parser.add_argument("--observe", type=float, default=30.0, help="max wait after silence")
    parser.add_argument("--beaters", type=int, default=2, help="heartbeat processes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--mode",
        choices=["liveness", "service"],
        default="liveness",
        help="liveness: the silenced devices beat through agents.heartbeat, the others as "
        "batched liveness writes; service: every beat through agents.heartbeat",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    where = machine()
    print(f"machine: {where}", file=sys.stderr)
    port = free_port()
    prefix = f"tesai-bench-fd-{os.getpid()}:"
    home = tempfile.mkdtemp(prefix="tesai-bench-home-")
    work = Path(tempfile.mkdtemp(prefix="tesai-bench-fd-"))
    tesai = str(Path(sys.executable).parent / "tesai")
    argv = [tesai, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs: list[Any] = []
    try:
        with scratch_database() as database_url:
            t0 = time.perf_counter()
            provider, ids = asyncio.run(insert_devices(database_url, args.devices))
            print(f"inserted {len(ids)} online devices in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)  # fmt: skip
            rng = random.Random(args.seed)
            silenced = {str(d) for d in rng.sample(ids, args.silenced)}
            env = {
                "TESAI_ENVIRONMENT": "production",
                "TESAI_HOME": home,
                "TESAI_DATABASE_URL": database_url,
                "TESAI_REDIS_URL": REDIS_URL,
                "TESAI_REDIS_PREFIX": prefix,
                "TESAI_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "TESAI_BROKER_URL": "",  # periodic tasks in-process, in the server
                "TESAI_HEARTBEAT_INTERVAL_S": str(args.interval),
            }
            # Beaters first (their imports take seconds on a loaded machine), beating before
            # the server starts, so no device is silent when the sweeper first looks.
            clock = ctx.Array("d", [0.0, 0.0])
            shards = [[str(d) for d in ids[k :: args.beaters]] for k in range(args.beaters)]
            readies = []
            for k, shard in enumerate(shards):
                ready = ctx.Event()
                p = ctx.Process(
                    target=beater,
                    args=(database_url, prefix, args.interval, str(provider), shard,
                          [d for d in shard if d in silenced], clock, ready, stop,
                          str(work / f"beater-{k}.json"), args.mode),
                )  # fmt: skip
                p.start()
                procs.append(p)
                readies.append(ready)
            for ready in readies:
                if not ready.wait(timeout=120):
                    raise RuntimeError("a beater process did not start")
            clock[0] = time.time() + 0.2
            with server_process(argv, env, port):
                silence_at = time.time() + args.warmup
                clock[1] = silence_at
                # Wait until every silenced device is offline (or the observation ends).
                time.sleep(max(0.0, silence_at - time.time()))
                deadline = silence_at + args.observe
                while time.time() < deadline:
                    time.sleep(1.0)
                    events, _ = asyncio.run(offline_events(database_url))
                    if len({d for d, _, _ in events} & silenced) >= len(silenced):
                        break
                time.sleep(2.0)  # a little longer: would anyone else go offline?
                events, fleet = asyncio.run(offline_events(database_url))
                stop.set()
                for p in procs:
                    p.join(timeout=30)
            reports = [
                json.loads((work / f"beater-{k}.json").read_text()) for k in range(len(procs))
            ]
    finally:
        stop.set()
        for p in procs:
            if p.is_alive():
                p.kill()
        delete_redis_prefix(prefix)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    last_beat: dict[str, float] = {}
    for r in reports:
        last_beat.update(r["last_beat"])
    offline_at: dict[str, float] = {}
    for d, at, _ in events:
        offline_at.setdefault(d, at)
    detect = [offline_at[d] - last_beat[d] for d in silenced if d in offline_at and d in last_beat]
    missed = [d for d in silenced if d not in offline_at]
    false_offline = [d for d in offline_at if d not in silenced]
    beats = sum(r["beats"] for r in reports)
    elapsed = max(r["elapsed_s"] for r in reports)
    figures = {
        "machine": where,
        "devices": args.devices,
        "silenced": args.silenced,
        "interval_s": args.interval,
        "grace_s": 3 * args.interval,
        "beats": beats,
        "beats_per_s": beats / elapsed,
        "beat_errors": sum(r["errors"] for r in reports),
        "beat_late_p99_s": max(r["late_p99_s"] for r in reports),
        "beat_late_max_s": max(r["late_max_s"] for r in reports),
        "detected": len(detect),
        "not_detected": len(missed),
        "detect_p50_s": pct(detect, 0.50),
        "detect_p99_s": pct(detect, 0.99),
        "detect_max_s": max(detect) if detect else float("nan"),
        "detect_min_s": min(detect) if detect else float("nan"),
        "false_offline": len(false_offline),
        "fleet_events": fleet,
    }
    goals = {
        "p99": figures["detect_p99_s"] <= GOAL_P99_S and not missed,
        "false_offline": not false_offline,
    }
    if args.json:
        print(json.dumps({**figures, "goals_met": goals}, indent=2))
    else:
        print(f"machine: {where}")
        print(
            f"{args.devices:,} devices at a {args.interval:g} s interval (grace "
            f"{3 * args.interval:g} s), {args.beaters} beater processes, mode {args.mode} "
            f"(silenced devices through tesai.devices.agents.heartbeat"
            f"{'' if args.mode == 'service' else ', the others as batched liveness writes'}); "
            "sweeper: devices.sweep in `tesai server --workers 1`"
        )
        print(
            f"heartbeats: {beats:,} in {elapsed:.0f} s = {figures['beats_per_s']:,.0f}/s, "
            f"{figures['beat_errors']} errors, lateness p99 {figures['beat_late_p99_s']:.2f} s "
            f"max {figures['beat_late_max_s']:.2f} s"
        )
        print(
            f"silenced {args.silenced}: offline {len(detect)}, not detected {len(missed)}; "
            f"last heartbeat → offline: min {figures['detect_min_s']:.2f} s, "
            f"p50 {figures['detect_p50_s']:.2f} s, p99 {figures['detect_p99_s']:.2f} s, "
            f"max {figures['detect_max_s']:.2f} s"
        )
        print(f"storm holds / fleet events: {'; '.join(fleet) or 'none'}")
        print(
            f"false offline among the other {args.devices - args.silenced:,}: {len(false_offline)}"
        )
        print(
            f"goals: p99 ≤ {GOAL_P99_S:g} s {'met' if goals['p99'] else 'MISSED'}, "
            f"0 false offline {'met' if goals['false_offline'] else 'MISSED'}"
        )
    if detect:
        print(f"(mean {statistics.mean(detect):.2f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
