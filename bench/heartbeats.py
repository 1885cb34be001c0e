"""Heartbeat throughput: simulated agents against `tesai server`, next to an empty endpoint.

Starts `tesai server` (production settings, 2 uvicorn workers, Redis, a scratch PostgreSQL
database, RabbitMQ as broker when it is up, so no periodic work runs inside the API workers)
with rate limiting OFF: every simulated agent comes from 127.0.0.1, and the per-IP bucket
would throttle thousands of agents behind one address (real agents each have their own).

Set-up goes through the real API: a provider signs up and logs in, creates ``--devices``
devices (`POST /api/v1/provider/devices`) and joins each one with its one-time join token
(`POST /api/v1/agent/join`); each device's first heartbeat receives the proof-of-compute
command and the second acknowledges it, so the timed beats take the cache-only hot path.

Load: ``--connections`` simulated agents (asyncio + aiohttp, keep-alive connections, in this
process — a separate process from the server) send heartbeats back to back, each cycling
through its share of the joined devices' credentials, with realistic telemetry (2 GPUs, a
network probe). Alternating rounds of the same client against

    (a) POST /api/v1/agent/heartbeat   device token, telemetry body (~0.9 KB)
    (b) GET  /healthz                  no credentials, the same middleware stack

and medians over the rounds. Also printed: the server workers' CPU time per request.

Goal (issue 3, acceptance 2): (a) ≥ 10,000 heartbeats/s with p99 ≤ 20 ms. Misses are
reported, not fatal; the script fails when the run itself is broken (non-2xx answers).

    python bench/heartbeats.py [--devices 300] [--connections 64] [--rounds 3] [--duration 8]
                               [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
from _util import (
    REDIS_URL,
    delete_redis_prefix,
    free_port,
    machine,
    port_open,
    scratch_database,
    server_process,
)

from tesai.protocol.v1 import GpuSpec, HardwareSpec, JoinRequest, NetworkProbe

HEARTBEAT = "POST /api/v1/agent/heartbeat"
EMPTY = "GET /healthz (no auth)"
GOAL_RPS = 10_000.0
GOAL_P99_MS = 20.0
GiB = 1 << 30


@dataclass(frozen=True)
class Round:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    cpu_us: float


def hardware(i: int) -> HardwareSpec:
    return HardwareSpec(
        hostname=f"sim-{i}",
        os="Linux 6.8",
        arch="x86_64",
        cpu_model="Simulated CPU",
        cpu_cores=16,
        cpu_threads=32,
        ram_bytes=128 * GiB,
        disk_total_bytes=1000 * GiB,
        disk_free_bytes=500 * GiB,
        gpus=[
            GpuSpec(index=g, uuid=f"GPU-{i}-{g}", model="NVIDIA A100", memory_total_bytes=80 * GiB)
            for g in range(2)
        ],
        net=NetworkProbe(rtt_ms=0.3),
    )


def beat_body(seq: int, acked: list[str] | None = None) -> dict[str, Any]:
    """What the agent sends: host numbers, 2 GPUs, its latest network probe."""
    gpu = {
        "utilization_pct": 87.0,
        "memory_used_bytes": 60 * GiB,
        "memory_total_bytes": 80 * GiB,
        "temperature_c": 64.0,
        "power_w": 310.5,
        "ecc_errors": 0,
        "xid_errors": 0,
    }
    return {
        "seq": seq,
        "sent_at": "2026-11-28T12:00:00Z",
        "status": "ready",
        "telemetry": {
            "cpu_percent": 23.5,
            "mem_used_bytes": 40 * GiB,
            "mem_total_bytes": 128 * GiB,
            "gpus": [{"index": g, "uuid": f"GPU-{g}", **gpu} for g in range(2)],
            "net": {"rtt_ms": 0.4, "bandwidth_mbps": 1300.0, "tier": "t2"},
        },
        "acked_commands": acked or [],
    }


async def join_devices(base_url: str, n: int, concurrency: int = 8) -> list[str]:
    """Create and join ``n`` devices through the real API; returns their device tokens."""
    email, password = "bench-provider@example.com", "bench-password-123"
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        r = await http.post(
            "/api/v1/auth/signup",
            json={"email": email, "password": password, "roles": ["provider"]},
        )
        if r.status_code != 201:
            raise RuntimeError(f"signup failed: {r.status_code} {r.text}")
        r = await http.post("/api/v1/auth/login", json={"email": email, "password": password})
        r.raise_for_status()
        provider = {"Authorization": f"Bearer {r.json()['access_token']}"}
        gate = asyncio.Semaphore(concurrency)
        retries = [0]

        async def post(
            path: str, body: dict[str, Any], headers: dict[str, str], code: str
        ) -> httpx.Response:
            """POST; on a 401 with ``code``, try again: the server commits a request's
            transaction after sending its response, so the next call can outrun it."""
            for _ in range(200):  # a cached miss lives 5 s (NEGATIVE_TTL_S)
                r = await http.post(path, json=body, headers=headers)
                if not code or r.status_code != 401 or code not in r.text:
                    return r
                retries[0] += 1
                await asyncio.sleep(0.05)
            return r

        async def one(i: int) -> str:
            async with gate:
                r = await http.post(
                    "/api/v1/provider/devices", json={"name": f"sim-{i}"}, headers=provider
                )
                if r.status_code != 201:
                    raise RuntimeError(f"create device: {r.status_code} {r.text}")
                req = JoinRequest(
                    join_token=r.json()["join_token"],
                    hardware=hardware(i),
                    agent_version="0.1.0",
                    ray_version="2.60.0",
                )
                r = await post(
                    "/api/v1/agent/join", req.model_dump(mode="json"), {}, "join_token_invalid"
                )
                if r.status_code != 200:
                    raise RuntimeError(f"join: {r.status_code} {r.text}")
                token: str = r.json()["device_token"]
                headers = {"Authorization": f"Bearer {token}"}
                # First beat delivers the verify command, the second acknowledges it: from
                # then on the device has nothing pending and beats stay off the database.
                r = await post(
                    "/api/v1/agent/heartbeat", beat_body(1), headers, "device_token_invalid"
                )
                r.raise_for_status()
                ids = [c["id"] for c in r.json()["commands"]]
                r = await post(
                    "/api/v1/agent/heartbeat", beat_body(2, ids), headers, "device_token_invalid"
                )
                r.raise_for_status()
                return token

        tokens = list(await asyncio.gather(*(one(i) for i in range(n))))
        if retries[0]:
            print(
                f"{retries[0]} calls retried after a 401 (the previous commit had not landed)",
                file=sys.stderr,
            )
        return tokens


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the server's workers have used so far."""
    import psutil

    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    *,
    tokens: list[str] | None,
    connections: int,
    duration_s: float,
) -> tuple[list[float], int, float]:
    """``connections`` agents sending back to back for ``duration_s``; latencies in ms."""
    body = orjson.dumps(beat_body(3))
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration_s

    async def agent(k: int) -> None:
        nonlocal errors
        share = (tokens[k::connections] or [tokens[k % len(tokens)]]) if tokens else []
        mine = [
            {"Authorization": f"Bearer {t}", "Content-Type": "application/json"} for t in share
        ] or [{}]
        i = 0
        while time.perf_counter() < stop:
            headers = mine[i % len(mine)]
            i += 1
            t0 = time.perf_counter()
            if tokens:
                resp = await session.post(url, data=body, headers=headers)
            else:
                resp = await session.get(url)
            data = await resp.read()
            latencies.append((time.perf_counter() - t0) * 1000)
            if resp.status != 200:
                if not errors:
                    print(f"first error: {resp.status} {data[:300]!r}", file=sys.stderr)
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(agent(k) for k in range(connections)))
    return latencies, errors, time.perf_counter() - t0


async def measure(
    base_url: str, tokens: list[str], pids: list[int], args: argparse.Namespace
) -> dict[str, list[Round]]:
    targets = {
        HEARTBEAT: (base_url + "/api/v1/agent/heartbeat", tokens),
        EMPTY: (base_url + "/healthz", None),
    }
    rounds: dict[str, list[Round]] = {name: [] for name in targets}
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url, toks in targets.values():  # warm-up: connections, caches, pools
            await drive(session, url, tokens=toks, connections=args.connections, duration_s=2)
        for i in range(args.rounds):
            for name, (url, toks) in targets.items():
                before = cpu_seconds(pids)
                lat, errors, elapsed = await drive(
                    session, url, tokens=toks, connections=args.connections,
                    duration_s=args.duration,
                )  # fmt: skip
                cpu = cpu_seconds(pids) - before
                lat.sort()
                r = Round(
                    requests=len(lat),
                    rps=len(lat) / elapsed,
                    p50_ms=percentile(lat, 0.50),
                    p99_ms=percentile(lat, 0.99),
                    max_ms=lat[-1],
                    errors=errors,
                    cpu_us=1e6 * cpu / max(1, len(lat)),
                )
                if errors:
                    raise RuntimeError(f"{name}: {errors} non-200 answers")
                rounds[name].append(r)
                print(f"round {i + 1}: {fmt(name, r)}", file=sys.stderr)
    return rounds


def profile_worker(pid: int, base_url: str, tokens: list[str], args: argparse.Namespace) -> str:
    """Sample one worker with py-spy while the heartbeat load runs; summarise."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return "py-spy not installed; skipped"
    out = Path(tempfile.mkdtemp()) / "profile.txt"
    seconds = max(5, int(args.duration))
    spy = subprocess.Popen(
        [py_spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "-f", "raw",
         "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip

    async def load() -> None:
        connector = aiohttp.TCPConnector(limit=args.connections)
        async with aiohttp.ClientSession(connector=connector) as session:
            await drive(
                session, base_url + "/api/v1/agent/heartbeat", tokens=tokens,
                connections=args.connections, duration_s=seconds + 1,
            )  # fmt: skip

    time.sleep(0.5)
    asyncio.run(load())
    _, err = spy.communicate(timeout=60)
    if not out.exists():
        return f"py-spy failed: {err.decode(errors='replace')[-500:]}"
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        count = int(count_s)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += count
        leaf[frames[-1]] += count
    shutil.rmtree(out.parent, ignore_errors=True)
    lines = [f"py-spy: {total} samples of worker {pid}", "", "Inclusive (top 30):"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(30)]
    lines += ["", "Self (top 15):"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in leaf.most_common(15)]
    return "\n".join(lines)


def fmt(name: str, r: Round) -> str:
    return (
        f"{name:<30} {r.rps:>8,.0f} req/s   p50 {r.p50_ms:6.2f} ms   p99 {r.p99_ms:6.2f} ms   "
        f"max {r.max_ms:7.1f} ms   worker CPU {r.cpu_us:5,.0f} µs/req"
    )


def median_round(rs: list[Round]) -> Round:
    return Round(
        requests=int(statistics.median(r.requests for r in rs)),
        rps=statistics.median(r.rps for r in rs),
        p50_ms=statistics.median(r.p50_ms for r in rs),
        p99_ms=statistics.median(r.p99_ms for r in rs),
        max_ms=statistics.median(r.max_ms for r in rs),
        errors=sum(r.errors for r in rs),
        cpu_us=statistics.median(r.cpu_us for r in rs),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=300, help="devices joined for real")
    parser.add_argument("--connections", type=int, default=64, help="concurrent agents")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8, help="seconds per round")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="py-spy one worker")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    where = machine()  # before the run, so the load average shows what else was running
    print(f"machine: {where}", file=sys.stderr)
    port = free_port()
    prefix = f"tesai-bench-hb-{os.getpid()}:"
    home = tempfile.mkdtemp(prefix="tesai-bench-home-")
    broker = "amqp://guest:guest@127.0.0.1:5672//" if port_open("127.0.0.1", 5672) else None
    tesai = str(Path(sys.executable).parent / "tesai")
    argv = [tesai, "server", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", str(args.workers)]
    profile = None
    try:
        with scratch_database() as database_url:
            env = {
                "TESAI_ENVIRONMENT": "production",
                "TESAI_HOME": home,
                "TESAI_DATABASE_URL": database_url,
                "TESAI_REDIS_URL": REDIS_URL,
                "TESAI_REDIS_PREFIX": prefix,
                "TESAI_PUBLIC_URL": f"http://127.0.0.1:{port}",
                # Off: every simulated agent shares 127.0.0.1, one per-IP bucket for all.
                "TESAI_RATE_LIMIT_ENABLED": "false",
            }
            if broker:
                env["TESAI_BROKER_URL"] = broker
                env["TESAI_TASK_QUEUE_PREFIX"] = f"tesai-bench-hb-{os.getpid()}"
            with server_process(argv, env, port) as server:
                t0 = time.perf_counter()
                tokens = asyncio.run(join_devices(server.base_url, args.devices))
                join_s = time.perf_counter() - t0
                print(
                    f"created and joined {len(tokens)} devices in {join_s:.1f} s", file=sys.stderr
                )
                pids = server.worker_pids()
                rounds = asyncio.run(measure(server.base_url, tokens, pids, args))
                if args.profile:
                    profile = profile_worker(pids[0], server.base_url, tokens, args)
    finally:
        delete_redis_prefix(prefix)
        shutil.rmtree(home, ignore_errors=True)

    hb, empty = median_round(rounds[HEARTBEAT]), median_round(rounds[EMPTY])
    verdict = {"throughput": hb.rps >= GOAL_RPS, "p99": hb.p99_ms <= GOAL_P99_MS}
    if args.json:
        print(
            json.dumps(
                {
                    "machine": where,
                    "workers": args.workers,
                    "devices": args.devices,
                    "connections": args.connections,
                    "rounds": args.rounds,
                    "duration_s": args.duration,
                    "heartbeat": hb.__dict__,
                    "empty": empty.__dict__,
                    "ratio": hb.rps / empty.rps,
                    "goals_met": verdict,
                },
                indent=2,
            )
        )
    else:
        print(f"machine: {where}")
        print(
            f"tesai server --workers {args.workers} (rate limiting off); {args.devices} devices "
            f"joined through the API; {args.connections} simulated agents (aiohttp keep-alive), "
            f"{args.duration:g} s rounds, median of {args.rounds} alternating rounds"
        )
        print(fmt(HEARTBEAT, hb))
        print(fmt(EMPTY, empty))
        print(f"ratio heartbeat/empty: {hb.rps / empty.rps:.2f}")
        print(
            f"CPU ceilings with {args.workers} busy cores: heartbeat "
            f"{args.workers * 1e6 / hb.cpu_us:,.0f}, empty {args.workers * 1e6 / empty.cpu_us:,.0f}"
            " req/s"
        )
        print(
            f"goals: ≥ {GOAL_RPS:,.0f} heartbeats/s {'met' if verdict['throughput'] else 'MISSED'}"
            f", p99 ≤ {GOAL_P99_MS:g} ms {'met' if verdict['p99'] else 'MISSED'}"
        )
    if profile:
        print()
        print(profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
