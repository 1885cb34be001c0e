"""API throughput: an API-key-authenticated GET next to an empty endpoint, same server.

Starts `tesai server` (production settings, 2 uvicorn workers, rate limiting on with limits
too high to trigger, access log on) against a scratch PostgreSQL database and Redis, signs a
user up and creates an API key through the API, then drives the endpoints with wrk
(keep-alive connections, a separate process), alternating rounds, and prints the medians:

    (a) GET /api/v1/auth/me   with X-API-Key   (authentication, rate limit, JSON body)
    (b) GET /healthz          no credentials   (the same middleware stack, no work)
    (c) GET /healthz of a bare FastAPI app (bench/_bare_app.py), same uvicorn workers:
        what this machine gives at best, for scale; not part of the goal

Goal (issue 2, acceptance 7): (a) ≥ 6,000 req/s with p99 ≤ 30 ms, and (a)/(b) ≥ 0.6.
Misses are reported, not fatal; the script fails only when the run itself is broken
(non-2xx answers, socket errors, server not starting).

    python bench/api.py [--rounds 3] [--duration 10] [--connections 64] [--profile]

``--profile`` also samples one worker with py-spy during an extra authenticated run and
prints where its time goes (needs `py-spy` in the venv).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _util import (
    REDIS_URL,
    LoadResult,
    delete_redis_prefix,
    free_port,
    machine,
    median_result,
    port_open,
    scratch_database,
    server_process,
    wrk,
)

AUTH = "GET /api/v1/auth/me (X-API-Key)"
EMPTY = "GET /healthz (no auth)"
BARE = "GET /healthz, bare FastAPI (baseline)"
GOAL_RPS = 6000.0
GOAL_P99_MS = 30.0
GOAL_RATIO = 0.6


def create_api_key(base_url: str) -> str:
    """Sign up, log in and create a read-scoped API key, all through the public API."""
    email, password = "bench@example.com", "bench-password-123"
    with httpx.Client(base_url=base_url, timeout=30) as http:
        r = http.post(
            "/api/v1/auth/signup",
            json={"email": email, "password": password, "roles": ["customer", "provider"]},
        )
        if r.status_code != 201:
            raise RuntimeError(f"signup failed: {r.status_code} {r.text}")
        r = http.post("/api/v1/auth/login", json={"email": email, "password": password})
        if r.status_code != 200:
            raise RuntimeError(f"login failed: {r.status_code} {r.text}")
        token = r.json()["access_token"]
        r = http.post(
            "/api/v1/auth/api-keys",
            json={"name": "bench", "scopes": ["read"]},
            headers={"Authorization": f"Bearer {token}"},
        )
        r.raise_for_status()
        key: str = r.json()["key"]
        check = http.get("/api/v1/auth/me", headers={"X-API-Key": key})
        check.raise_for_status()
        return key


def profile_worker(pid: int, url: str, key: str, args: argparse.Namespace) -> str:
    """Sample ``pid`` with py-spy while wrk drives the authenticated endpoint; summarise."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return "py-spy not installed; skipped (pip install py-spy)"
    out = Path(tempfile.mkdtemp()) / "profile.txt"
    seconds = max(5, int(args.duration))
    spy = subprocess.Popen(
        [py_spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "-f", "raw",
         "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1)
    wrk(url, headers={"X-API-Key": key}, connections=args.connections, duration_s=seconds)
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
    if args.profile_out:
        shutil.copy(out, args.profile_out)
    shutil.rmtree(out.parent, ignore_errors=True)
    lines = [f"py-spy: {total} samples of worker {pid}", "", "Inclusive (top 25):"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(25)]
    lines += ["", "Self (top 15):"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in leaf.most_common(15)]
    return "\n".join(lines)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the server's workers have used so far."""
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def fmt(name: str, r: LoadResult) -> str:
    return (
        f"{name:<38} {r.rps:>9,.0f} req/s   p50 {r.p50_ms:6.2f} ms   p90 {r.p90_ms:6.2f} ms   "
        f"p99 {r.p99_ms:6.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="py-spy one worker")
    parser.add_argument("--profile-out", help="keep py-spy's raw (collapsed) stacks here")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    where = machine()  # before the run, so the load average shows what else was running
    port = free_port()
    prefix = f"tesai-bench-{os.getpid()}:"
    home = tempfile.mkdtemp(prefix="tesai-bench-home-")
    broker = "amqp://guest:guest@127.0.0.1:5672//" if port_open("127.0.0.1", 5672) else None
    tesai = str(Path(sys.executable).parent / "tesai")
    argv = [tesai, "server", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", str(args.workers)]
    try:
        with scratch_database() as database_url:
            env = {
                "TESAI_ENVIRONMENT": "production",
                "TESAI_HOME": home,
                "TESAI_DATABASE_URL": database_url,
                "TESAI_REDIS_URL": REDIS_URL,
                "TESAI_REDIS_PREFIX": prefix,
                "TESAI_PUBLIC_URL": f"http://127.0.0.1:{port}",
                # Rate limiting runs as in production (its Redis round trip is part of the
                # cost) with buckets too large to ever say 429 during the run.
                "TESAI_RATE_LIMIT_ENABLED": "true",
                "TESAI_RATE_LIMIT_PER_IP": "1000000000",
                "TESAI_RATE_LIMIT_PER_IP_BURST": "1000000000",
                "TESAI_RATE_LIMIT_PER_PRINCIPAL": "1000000000",
                "TESAI_RATE_LIMIT_PER_PRINCIPAL_BURST": "1000000000",
            }
            if broker:
                env["TESAI_BROKER_URL"] = broker
                env["TESAI_TASK_QUEUE_PREFIX"] = f"tesai-bench-{os.getpid()}"
            bare_port = free_port()
            bare_argv = [sys.executable, "-m", "uvicorn", "_bare_app:app", "--port"]
            bare_argv += [str(bare_port), "--workers", str(args.workers), "--no-access-log"]
            bare_env = {"PYTHONPATH": str(Path(__file__).resolve().parent)}
            with (
                server_process(argv, env, port) as server,
                server_process(bare_argv, bare_env, bare_port, ready_path="/healthz") as bare,
            ):
                key = create_api_key(server.base_url)
                targets = {
                    AUTH: (server.base_url + "/api/v1/auth/me", {"X-API-Key": key}, server),
                    EMPTY: (server.base_url + "/healthz", {}, server),
                    BARE: (bare.base_url + "/healthz", {}, bare),
                }
                # Warm every path (caches, pools and connections fill).
                for url, headers, _ in targets.values():
                    wrk(url, headers=headers, connections=args.connections, duration_s=2)
                rounds: dict[str, list[LoadResult]] = {name: [] for name in targets}
                cpu_us: dict[str, list[float]] = {name: [] for name in targets}
                workers = {server: server.worker_pids(), bare: bare.worker_pids()}
                for i in range(args.rounds):
                    for name, (url, headers, owner) in targets.items():
                        cpu_before = cpu_seconds(workers[owner])
                        result = wrk(
                            url,
                            headers=headers,
                            connections=args.connections,
                            duration_s=args.duration,
                        )
                        cpu_after = cpu_seconds(workers[owner])
                        cpu_us[name].append(
                            1e6 * (cpu_after - cpu_before) / max(1, result.requests)
                        )
                        if result.non_2xx or result.socket_errors:
                            print(owner.log_tail(), file=sys.stderr)
                            raise RuntimeError(
                                f"{name}: {result.non_2xx} non-2xx answers, "
                                f"{result.socket_errors} socket errors"
                            )
                        rounds[name].append(result)
                        print(f"round {i + 1}: {fmt(name, result)}", file=sys.stderr)
                profile = None
                if args.profile:
                    pids = workers[server]
                    profile = (
                        profile_worker(pids[0], targets[AUTH][0], key, args)
                        if pids
                        else "no worker process found"
                    )
    finally:
        delete_redis_prefix(prefix)
        shutil.rmtree(home, ignore_errors=True)

    auth, empty, base = (median_result(rounds[n]) for n in (AUTH, EMPTY, BARE))
    auth_cpu, empty_cpu, base_cpu = (statistics.median(cpu_us[n]) for n in (AUTH, EMPTY, BARE))
    ratio = auth.rps / empty.rps
    verdict = {
        "throughput": auth.rps >= GOAL_RPS,
        "p99": auth.p99_ms <= GOAL_P99_MS,
        "ratio": ratio >= GOAL_RATIO,
    }
    if args.json:
        print(
            json.dumps(
                {
                    "machine": where,
                    "workers": args.workers,
                    "connections": args.connections,
                    "rounds": args.rounds,
                    "duration_s": args.duration,
                    "authenticated": auth.__dict__,
                    "empty": empty.__dict__,
                    "bare_fastapi": base.__dict__,
                    "ratio": ratio,
                    "worker_cpu_us_per_request": {
                        "authenticated": auth_cpu,
                        "empty": empty_cpu,
                        "bare_fastapi": base_cpu,
                    },
                    "goals_met": verdict,
                },
                indent=2,
            )
        )
    else:
        print(f"machine: {where}")
        print(
            f"tesai server --workers {args.workers}; wrk -t1 -c{args.connections} "
            f"-d{args.duration:g}s; median of {args.rounds} alternating rounds"
        )
        for name, result, cpu in ((AUTH, auth, auth_cpu), (EMPTY, empty, empty_cpu)):
            print(f"{fmt(name, result)}   worker CPU {cpu:5,.0f} µs/req")
        print(f"{fmt(BARE, base)}   worker CPU {base_cpu:5,.0f} µs/req")
        print(f"ratio authenticated/empty: {ratio:.2f}")
        print(
            f"CPU ceilings with {args.workers} busy cores: authenticated "
            f"{args.workers * 1e6 / auth_cpu:,.0f}, empty {args.workers * 1e6 / empty_cpu:,.0f}, "
            f"bare FastAPI {args.workers * 1e6 / base_cpu:,.0f} req/s"
        )
        print(
            "goals: "
            + ", ".join(
                f"{name} {'met' if ok else 'MISSED'}"
                for name, ok in (
                    (f"≥ {GOAL_RPS:,.0f} req/s", verdict["throughput"]),
                    (f"p99 ≤ {GOAL_P99_MS:g} ms", verdict["p99"]),
                    (f"ratio ≥ {GOAL_RATIO}", verdict["ratio"]),
                )
            )
        )
    if profile:
        print()
        print(profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
