"""Failed sign-ins next to normal traffic: no 500, normal requests' p99 within 2×.

Starts `tesai server` in the production shape (production settings, 2 uvicorn workers,
PostgreSQL scratch database, Redis, RabbitMQ as broker when it is up, rate limits and the
sign-in throttle ON with their default values) and signs up the customers through the API.
Then, on loopback only, ``--rounds`` times in a row:

1. *alone*: every customer sends authenticated requests at a fixed rate, each from its own
   loopback address (127.0.1.x), alternating ``GET /api/v1/auth/me`` and ``GET
   /api/v1/clusters`` (a database read), for ``--duration`` seconds;
2. *attacked*: the same traffic, while ``--attackers`` parallel clients (127.0.2.x, a
   separate process at nice 10) send wrong passwords as fast as the server answers, capped at
   ``--attack-rate`` tries per second each, at the customers' emails and at unknown ones.

Latency is measured from when each request was due (open loop), so a stall is counted in
full. Alternating rounds keep drifting load from elsewhere on the machine out of the
comparison. Prints the answers by status, the number of 500s (goal 0) and the ratio of the
normal requests' p99 under attack to alone, per round and its median (goal ≤ 2). Bounded:
``2 × rounds × duration`` seconds of load, at most ``--max-attempts`` wrong passwords a round.

    python bench/login_abuse.py [--rounds 3] [--duration 10] [--customers 8] [--rate 10]
                                [--attackers 50] [--attack-rate 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _util import (
    REDIS_URL,
    delete_redis_prefix,
    free_port,
    machine,
    port_open,
    scratch_database,
    server_process,
)

PASSWORD = "bench-password-123"
GOAL_RATIO = 2.0


@dataclass
class Phase:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    """Error answers by status and problem code."""

    def p(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sign_up(base_url: str, n: int) -> list[tuple[str, str, str]]:
    """``n`` customers through the API: (email, access token, loopback address)."""
    out = []
    for i in range(n):
        address = f"127.0.1.{i + 1}"
        transport = httpx.HTTPTransport(local_address=address)
        with httpx.Client(base_url=base_url, timeout=60, transport=transport) as http:
            email = f"customer-{i}-{secrets.token_hex(3)}@example.com"
            r = http.post(
                "/api/v1/auth/signup",
                json={"email": email, "password": PASSWORD, "roles": ["customer"]},
            )
            if r.status_code != 201:
                raise RuntimeError(f"signup failed: {r.status_code} {r.text}")
            r = http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
            if r.status_code != 200:
                raise RuntimeError(f"login failed: {r.status_code} {r.text}")
            out.append((email, r.json()["access_token"], address))
    return out


async def _customer(
    base_url: str, token: str, address: str, rate: float, duration: float, phase: Phase
) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=address, retries=0)
    paths = ("/api/v1/auth/me", "/api/v1/clusters")
    async with httpx.AsyncClient(
        base_url=base_url,
        transport=transport,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
    ) as http:
        start = time.perf_counter()
        pending: set[asyncio.Task[None]] = set()

        async def one(due: float, path: str) -> None:
            try:
                r = await http.get(path)
                phase.statuses[r.status_code] += 1
                if r.status_code >= 400:
                    phase.problems[f"{r.status_code} {r.json().get('code')}"] += 1
            except httpx.HTTPError as exc:
                phase.statuses[-1] += 1
                print(f"normal request failed: {type(exc).__name__}", file=sys.stderr)
            phase.latencies_ms.append((time.perf_counter() - due) * 1000)

        n = 0
        while True:
            due = start + n / rate
            if due - start >= duration:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            task = asyncio.create_task(one(due, paths[n % 2]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        if pending:
            await asyncio.wait(pending)


async def normal_traffic(
    base_url: str, customers: list[tuple[str, str, str]], rate: float, duration: float
) -> Phase:
    phase = Phase()
    await asyncio.gather(
        *(_customer(base_url, t, a, rate, duration, phase) for _, t, a in customers)
    )
    return phase


async def _attack(
    base_url: str,
    targets: list[str],
    attackers: int,
    rate: float,
    duration: float,
    max_attempts: int,
) -> dict[str, int]:
    statuses: Counter[int] = Counter()
    attempts = 0
    deadline = time.perf_counter() + duration

    async def attacker(i: int) -> None:
        nonlocal attempts
        transport = httpx.AsyncHTTPTransport(local_address=f"127.0.2.{i + 1}", retries=0)
        async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http:
            n = 0
            while time.perf_counter() < deadline and attempts < max_attempts:
                attempts += 1
                email = targets[n % len(targets)] if n % 2 == 0 else f"nobody-{i}-{n}@example.com"
                sent = time.perf_counter()
                try:
                    r = await http.post(
                        "/api/v1/auth/login", json={"email": email, "password": f"guess-{n}"}
                    )
                    statuses[r.status_code] += 1
                except httpx.HTTPError:
                    statuses[-1] += 1
                n += 1
                await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - sent)))

    await asyncio.gather(*(attacker(i) for i in range(attackers)))
    return {str(k): v for k, v in sorted(statuses.items())}


def attack_process(
    base_url: str,
    targets: list[str],
    args: argparse.Namespace,
    out: Any,
) -> None:
    """The attackers run in their own process, so their client work does not delay the
    measured customers' event loop, at a lower CPU priority: a real attacker's client work
    is done on its own machines, not on the server's cores."""
    os.nice(10)
    out.put(
        asyncio.run(
            _attack(
                base_url,
                targets,
                args.attackers,
                args.attack_rate,
                args.duration,
                args.max_attempts,
            )
        )
    )


def summary(phase: Phase) -> dict[str, object]:
    return {
        "requests": len(phase.latencies_ms),
        "p50_ms": round(phase.p(0.50), 1),
        "p90_ms": round(phase.p(0.90), 1),
        "p99_ms": round(phase.p(0.99), 1),
        "max_ms": round(max(phase.latencies_ms, default=float("nan")), 1),
        "mean_ms": round(statistics.fmean(phase.latencies_ms), 1) if phase.latencies_ms else None,
        "statuses": {str(k): v for k, v in sorted(phase.statuses.items())},
        "problems": dict(sorted(phase.problems.items())),
    }


def merged(phases: list[Phase]) -> Phase:
    out = Phase()
    for phase in phases:
        out.latencies_ms += phase.latencies_ms
        out.statuses.update(phase.statuses)
        out.problems.update(phase.problems)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alone/attacked pairs")
    parser.add_argument("--duration", type=float, default=10, help="seconds per phase")
    parser.add_argument("--customers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=10, help="requests/s per customer")
    parser.add_argument("--attackers", type=int, default=50)
    parser.add_argument("--attack-rate", type=float, default=5, help="tries/s per attacker")
    parser.add_argument("--max-attempts", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    where = machine()
    port = free_port()
    prefix = f"tesai-bench-{os.getpid()}:"
    home = tempfile.mkdtemp(prefix="tesai-bench-home-")
    broker = "amqp://guest:guest@127.0.0.1:5672//" if port_open("127.0.0.1", 5672) else None
    tesai = str(Path(sys.executable).parent / "tesai")
    argv = [tesai, "server", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", str(args.workers)]
    rounds: list[tuple[Phase, Phase, dict[str, int]]] = []
    try:
        with scratch_database() as database_url:
            env = {
                "TESAI_ENVIRONMENT": "production",
                "TESAI_HOME": home,
                "TESAI_DATABASE_URL": database_url,
                "TESAI_REDIS_URL": REDIS_URL,
                "TESAI_REDIS_PREFIX": prefix,
                "TESAI_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "TESAI_RATE_LIMIT_ENABLED": "true",
            }
            if broker:
                env["TESAI_BROKER_URL"] = broker
                env["TESAI_TASK_QUEUE_PREFIX"] = f"tesai-bench-{os.getpid()}"
            with server_process(argv, env, port) as server:
                customers = sign_up(server.base_url, args.customers)
                targets = [c[0] for c in customers]
                # Warm-up: connections, caches, the JWT key.
                asyncio.run(normal_traffic(server.base_url, customers, args.rate, 3))
                for i in range(args.rounds):
                    alone = asyncio.run(
                        normal_traffic(server.base_url, customers, args.rate, args.duration)
                    )
                    results: Any = multiprocessing.Queue()
                    attackers = multiprocessing.Process(
                        target=attack_process, args=(server.base_url, targets, args, results)
                    )
                    attackers.start()
                    time.sleep(1)  # the attack is under way before the measurement starts
                    attacked = asyncio.run(
                        normal_traffic(server.base_url, customers, args.rate, args.duration)
                    )
                    attack: dict[str, int] = results.get(timeout=args.duration + 120)
                    attackers.join(timeout=30)
                    rounds.append((alone, attacked, attack))
                    print(
                        f"round {i + 1}: normal p99 alone {alone.p(0.99):.1f} ms, attacked "
                        f"{attacked.p(0.99):.1f} ms; wrong-password answers {attack}",
                        file=sys.stderr,
                    )
                error_lines = [
                    line
                    for line in server.log_path.read_text(errors="replace").splitlines()
                    if '"level":"error"' in line
                ]
                errors = len(error_lines)
                for line in error_lines[:3]:
                    print(f"server error line: {line[:400]}", file=sys.stderr)
    finally:
        delete_redis_prefix(prefix)
        shutil.rmtree(home, ignore_errors=True)

    alone_all = merged([r[0] for r in rounds])
    attacked_all = merged([r[1] for r in rounds])
    answers: Counter[str] = Counter()
    for _, _, attack in rounds:
        answers.update(attack)
    five_hundreds = alone_all.statuses[500] + attacked_all.statuses[500] + answers["500"]
    ratios = [b.p(0.99) / a.p(0.99) for a, b, _ in rounds]
    ratio = statistics.median(ratios)
    figures = {
        "machine": where,
        "command": "python bench/login_abuse.py " + " ".join(sys.argv[1:]),
        "workers": args.workers,
        "customers": args.customers,
        "rate_per_customer": args.rate,
        "attackers": args.attackers,
        "attack_rate_per_attacker": args.attack_rate,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "alone": summary(alone_all),
        "attacked": summary(attacked_all),
        "attack_answers": dict(sorted(answers.items())),
        "http_500": five_hundreds,
        "server_error_lines": errors,
        "p99_ratio_per_round": [round(r, 2) for r in ratios],
        "p99_ratio_median": round(ratio, 2),
        "goals_met": {"no_500": five_hundreds == 0, "p99_ratio": ratio <= GOAL_RATIO},
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"machine: {where}")
        print(
            f"tesai server --workers {args.workers}; {args.customers} customers × "
            f"{args.rate:g} req/s; {args.attackers} attackers × ≤ {args.attack_rate:g} "
            f"wrong passwords/s; {args.rounds} rounds of {args.duration:g} s alone, then "
            f"{args.duration:g} s attacked"
        )
        for name, phase in (("alone", alone_all), ("attacked", attacked_all)):
            s = summary(phase)
            print(
                f"normal, {name:<8}: {s['requests']:>6} requests  p50 {s['p50_ms']:>7} ms  "
                f"p90 {s['p90_ms']:>7} ms  p99 {s['p99_ms']:>7} ms  max {s['max_ms']:>7} ms  "
                f"statuses {s['statuses']}" + (f" {s['problems']}" if s["problems"] else "")
            )
        print(f"wrong-password answers: {dict(sorted(answers.items()))}")
        print(f"HTTP 500s: {five_hundreds} (goal 0); error lines in the server log: {errors}")
        print(
            "normal p99 attacked / alone, per round: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f"; median {ratio:.2f} (goal ≤ {GOAL_RATIO:g})"
        )
    return 0 if five_hundreds == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
