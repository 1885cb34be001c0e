"""Cluster readiness: create → `running` for a 3-node CPU cluster, next to raw `ray start`.

    .venv/bin/python bench/cluster_ready.py [--rounds 2] [--no-heal]

Starts a real `tesai server` (heartbeat interval 1 s) on a scratch database and four real agents
on this machine (CPU devices, each with its own Ray port range and a short Ray temp root), then
alternates, ``--rounds`` times each:

* raw: ``tesai.agent.ray_node.start_head`` and, once it is up, two ``start_worker`` at once
  (what the control plane asks the agents to do), token auth, same port / temp-dir hygiene,
  until the head's state API reports 3 alive nodes; then exactly those processes are stopped;
* product: ``POST /api/v1/clusters`` (3 nodes) until ``GET /api/v1/clusters/{id}`` says
  ``running``; then terminate and wait until every Ray process of the cluster is gone.

On the last product round, before terminating, one worker's agent and its Ray processes are
SIGKILLed and the time until the cluster is ``running`` again on the spare 4th device is taken.
Prints medians, the ratio (goal ≤ 1.3) and each product round's event timeline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from _util import REDIS_URL, delete_redis_prefix, free_port, machine, scratch_database

from tesai.agent.local import LocalAgentProcess, start_local_agent
from tesai.agent.ray_node import (
    PortAllocator,
    PortRange,
    alive_node_count,
    cluster_resource,
    find_processes,
    node_marker,
    node_resource,
    start_head,
    start_worker,
    stop_node,
)

NODES = 3
AGENTS = 4
RAW_PORTS = PortRange(26000, 26999)


@dataclass
class RawRound:
    head_s: float
    workers_s: float
    alive_s: float
    total_s: float
    attempts: list[int]


@dataclass
class ProductRound:
    cluster_id: str
    total_s: float
    timeline: list[str] = field(default_factory=list)


@dataclass
class Heal:
    degraded_s: float
    running_s: float
    ray_alive_s: float
    """Until Ray's own state API (through our proxy) lists the spare's node as ALIVE."""
    timeline: list[str]


def _server_env(url: str, home: str, prefix: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESAI_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        TESAI_ENVIRONMENT="test",
        TESAI_HOME=home,
        TESAI_DATABASE_URL=url,
        TESAI_REDIS_URL=REDIS_URL,
        TESAI_REDIS_PREFIX=prefix,
        TESAI_RATE_LIMIT_ENABLED="false",
        TESAI_LOG_JSON="false",
        TESAI_HEARTBEAT_INTERVAL_S="1.0",
        TESAI_PROOF_MATRIX_N_CPU="128",
        TESAI_PROOF_ITERATIONS="2",
        TESAI_PROVISIONING_DEADLINE_S="300",
        # The agents' Ray heads run on this machine: the control plane reads their Ray state
        # there (its evidence that the nodes are alive), as `tesai up` allows.
        TESAI_RAY_PROXY_ALLOW_INTERNAL_HEADS="true",
        TESAI_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    return env


async def _users(url: str, home: str, prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """A provider and a customer with credit (through the account, auth and billing services)."""
    from tesai.accounts import service as accounts
    from tesai.auth.service import start_session
    from tesai.auth.tokens import runtime_signing_key
    from tesai.billing import service as billing
    from tesai.runtime import open_runtime
    from tesai.settings import Settings

    settings = Settings(
        environment="test",
        database_url=url,
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        home=Path(home),
    )
    runtime = await open_runtime(settings, run_periodic=False)
    out = []
    try:
        key = runtime_signing_key(runtime.state, runtime.settings)
        for role in ("provider", "customer"):
            async with runtime.sessionmaker.begin() as s:
                user = await accounts.create_user(
                    s, email=f"{role}-{secrets.token_hex(3)}@bench.invalid", roles=(role,)
                )
                pair = await start_session(s, key, runtime.settings, user)
                if role == "customer":
                    await billing.admin_grant_credit(
                        s,
                        admin_user_id=None,
                        user_id=user.id,
                        amount_micro=10**12,
                        reason="bench",
                        idempotency_key=f"bench:{user.id}",
                    )
            out.append({"Authorization": f"Bearer {pair.access_token}"})
    finally:
        await runtime.close()
    return out[0], out[1]


def _wait(fetch: Any, check: Any, timeout: float, what: str, poll: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fetch()
        except httpx.HTTPError:
            last = None
        if last is not None and check(last):
            return last
        time.sleep(poll)
    raise RuntimeError(f"timed out waiting for {what}; last: {str(last)[:2000]}")


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _timeline(detail: dict[str, Any], t0_wall: float) -> list[str]:
    """Events and node running times relative to the POST (same host clock)."""
    rows: list[tuple[float, str]] = []
    for e in detail["events"]:
        move = f"{e['from_status'] or ''}→{e['to_status']}" if e["to_status"] else ""
        rows.append((_ts(e["at"]) - t0_wall, f"{e['reason']} {move} {e['message']}".strip()))
    for n in detail["nodes"]:
        if n["running_at"]:
            rows.append(
                (_ts(n["running_at"]) - t0_wall, f"node {n['index']} ({n['role']}) running")
            )
        if n["lost_at"]:
            rows.append((_ts(n["lost_at"]) - t0_wall, f"node {n['index']} ({n['role']}) lost"))
    return [f"{t:+7.2f} s  {text}" for t, text in sorted(rows)]


def raw_round(temp_base: Path) -> RawRound:
    """Head, then both workers at once, until the head reports 3 alive nodes; stop exactly them."""
    cluster_id = str(uuid.uuid4())
    token = secrets.token_urlsafe(32)
    allocator = PortAllocator(RAW_PORTS)
    # Directly below the short base: one more level and Ray's unix socket paths get too long
    # (the head then fails with "Module MetricsHead failed to start").
    temp_root = temp_base

    def common(index: int) -> dict[str, Any]:
        return {
            "allocator": allocator,
            "node_index": index,
            "resources": {cluster_resource(cluster_id): 1, node_resource(index): 1},
            "labels": {"tesai.cluster": cluster_id, "tesai.gpu_model": "cpu"},
            "node_ip": "127.0.0.1",
            "temp_root": temp_root,
        }

    try:
        t0 = time.perf_counter()
        head = start_head(cluster_id, token, dashboard_host="0.0.0.0", **common(0))
        t_head = time.perf_counter()
        with ThreadPoolExecutor(NODES - 1) as ex:
            workers = list(
                ex.map(
                    lambda i: start_worker(cluster_id, token, head.gcs_address, **common(i)),
                    range(1, NODES),
                )
            )
        t_workers = time.perf_counter()
        assert head.dashboard_url is not None
        with httpx.Client(
            base_url=head.dashboard_url, headers=head.auth_headers(), timeout=5
        ) as client:
            _wait(lambda: alive_node_count(client), lambda n: n >= NODES, 120, "3 alive nodes")
        t_alive = time.perf_counter()
        return RawRound(
            head_s=t_head - t0,
            workers_s=t_workers - t_head,
            alive_s=t_alive - t_workers,
            total_s=t_alive - t0,
            attempts=[head.attempts, *(w.attempts for w in workers)],
        )
    finally:
        stop_node(marker=f"{cluster_id}/")
        for d in temp_root.glob(f"{cluster_id.replace('-', '')[:12]}-*"):
            shutil.rmtree(d, ignore_errors=True)


def _short_dir(path: Path) -> str:
    path.mkdir(mode=0o700)
    return str(path)


class Bench:
    def __init__(self, base_url: str, provider: dict[str, str], customer: dict[str, str]) -> None:
        self.api = httpx.Client(base_url=base_url, headers=customer, timeout=30)
        self.prov = httpx.Client(base_url=base_url, headers=provider, timeout=30)
        self.agents: dict[str, LocalAgentProcess] = {}
        self.logs: dict[str, Path] = {}
        self.clusters: list[str] = []

    def tail(self) -> str:
        return "\n".join(f"--- {d}\n{p.read_text()[-1500:]}" for d, p in self.logs.items())

    def start_agents(self, server_url: str, work: Path, temp_base: Path) -> None:
        for i in range(AGENTS):
            r = self.prov.post(
                "/api/v1/provider/devices",
                json={"name": f"box{i}", "region": "eu-west", "country": "DE"},
            )
            r.raise_for_status()
            device_id = r.json()["device"]["id"]
            self.logs[device_id] = work / f"agent{i}.log"
            self.agents[device_id] = start_local_agent(
                server_url,
                work / f"agent{i}",
                r.json()["join_token"],
                log_file=self.logs[device_id],
                extra_env={
                    "TESAI_RAY_PORT_RANGE": f"{21000 + i * 1000}-{21999 + i * 1000}",
                    "TESAI_RAY_NODE_IP": "127.0.0.1",
                    # Short: Ray's unix socket paths live below it (107 bytes at most); a
                    # mkdtemp() level more (/tmp/tbXXXXXXXX/a0-XXXXXXXX) is refused by the
                    # agent (ray_temp_dir_too_long) where PIDs have 5 digits or more.
                    "TESAI_RAY_TEMP_ROOT": _short_dir(temp_base / f"a{i}"),
                },
            )
        self.wait_devices_online(set(self.agents), 180)

    def device_status(self, device_id: str) -> str:
        r = self.prov.get(f"/api/v1/provider/devices/{device_id}")
        return str(r.json()["device"]["status"])

    def wait_devices_online(self, ids: set[str], timeout: float) -> None:
        for d in ids:
            _wait(lambda d=d: self.device_status(d), lambda s: s == "online", timeout, f"{d}")

    def detail(self, cluster_id: str) -> dict[str, Any]:
        r = self.api.get(f"/api/v1/clusters/{cluster_id}")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        if body["status"] == "failed":
            raise RuntimeError(f"cluster failed: {body}\n{self.tail()}")
        return body

    def create_until_running(self, name: str) -> tuple[ProductRound, dict[str, Any]]:
        t0_wall = time.time()
        t0 = time.perf_counter()
        r = self.api.post(
            "/api/v1/clusters",
            json={"name": name, "request": {"nodes": NODES, "duration_s": 3600}},
        )
        r.raise_for_status()
        cluster_id = r.json()["id"]
        self.clusters.append(cluster_id)
        detail = _wait(
            lambda: self.detail(cluster_id), lambda d: d["status"] == "running", 300, "running"
        )
        total = time.perf_counter() - t0
        return ProductRound(cluster_id, total, _timeline(detail, t0_wall)), detail

    def terminate(self, cluster_id: str) -> None:
        self.api.post(f"/api/v1/clusters/{cluster_id}/terminate").raise_for_status()
        _wait(lambda: self.detail(cluster_id), lambda d: d["status"] == "terminated", 120, "end")
        _wait(lambda: find_processes(f"{cluster_id}/"), lambda p: not p, 120, "no Ray left", 0.5)
        alive = {d for d, a in self.agents.items() if a.poll() is None}
        self.wait_devices_online(alive, 120)

    def heal(self, cluster_id: str, detail: dict[str, Any]) -> Heal:
        nodes = [n for n in detail["nodes"] if n["state"] == "running"]
        used = {n["device_id"] for n in nodes}
        spare = next(d for d in self.agents if d not in used)
        victim = next(n for n in nodes if n["role"] == "worker")
        t0_wall = time.time()
        t0 = time.perf_counter()
        agent = self.agents[victim["device_id"]]
        agent.send_signal(signal.SIGKILL)
        for proc in find_processes(node_marker(cluster_id, int(victim["index"]))):
            proc.send_signal(signal.SIGKILL)
        agent.wait()
        _wait(lambda: self.detail(cluster_id), lambda d: d["status"] == "degraded", 120, "degr")
        t_degraded = time.perf_counter()
        healed = _wait(
            lambda: self.detail(cluster_id),
            lambda d: (
                d["status"] == "running"
                and any(n["device_id"] == spare and n["state"] == "running" for n in d["nodes"])
            ),
            300,
            "running again",
        )
        t_running = time.perf_counter()
        index = next(n["index"] for n in healed["nodes"] if n["device_id"] == spare)
        _wait(
            lambda: self.ray_nodes(detail["ray_address"]),
            lambda rows: any(
                r.get("state") == "ALIVE" and f"tesai_node_{index}" in str(r) for r in rows
            ),
            300,
            "the spare's Ray node alive",
        )
        t_ray = time.perf_counter()
        timeline = [
            line for line in _timeline(healed, t0_wall) if not line.lstrip().startswith("-")
        ]
        return Heal(t_degraded - t0, t_running - t0, t_ray - t0, timeline)

    def ray_nodes(self, ray_address: str) -> list[dict[str, Any]]:
        """Ray's node list from the head's state API, through the control plane's proxy."""
        r = self.api.get(f"{ray_address}/api/v0/nodes", params={"limit": 1000})
        r.raise_for_status()
        rows: list[dict[str, Any]] = r.json()["data"]["result"]["result"]
        return rows

    def close(self) -> None:
        for agent in self.agents.values():
            if agent.poll() is None:
                agent.stop()
        for cluster_id in self.clusters:
            if find_processes(f"{cluster_id}/"):
                stop_node(marker=f"{cluster_id}/")
        self.api.close()
        self.prov.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each kind")
    parser.add_argument("--no-heal", action="store_true", help="skip the SIGKILL / replace part")
    args = parser.parse_args()
    print(machine())
    started = time.perf_counter()
    prefix = f"bench-ready-{secrets.token_hex(3)}:"
    work = Path(tempfile.mkdtemp(prefix="tesai-bench-ready-"))
    temp_base = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp"))  # short: AF_UNIX path limit
    raw: list[RawRound] = []
    product: list[ProductRound] = []
    heal: Heal | None = None
    try:
        with scratch_database("tesai_bench_ready") as url:
            from _util import server_process

            home = str(work / "home")
            provider, customer = asyncio.run(_users(url, home, prefix))
            port = free_port()
            tesai = str(Path(sys.executable).with_name("tesai"))
            argv = [tesai, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            env = _server_env(url, home, prefix, port)
            with server_process(argv, env, port, ready_path="/healthz") as server:
                bench = Bench(server.base_url, provider, customer)
                try:
                    t = time.perf_counter()
                    bench.start_agents(server.base_url, work, temp_base)
                    print(f"{AGENTS} agents online in {time.perf_counter() - t:.1f} s")
                    for i in range(args.rounds):
                        r = raw_round(temp_base)
                        raw.append(r)
                        print(
                            f"raw {i + 1}:     {r.total_s:6.1f} s  (head {r.head_s:.1f} s, "
                            f"2 workers {r.workers_s:.1f} s, 3 alive +{r.alive_s:.1f} s; "
                            f"ray start tries {r.attempts}); load {os.getloadavg()[0]:.1f}"
                        )
                        p, detail = bench.create_until_running(f"bench{i}")
                        product.append(p)
                        print(
                            f"product {i + 1}: {p.total_s:6.1f} s  create → running; "
                            f"load {os.getloadavg()[0]:.1f}"
                        )
                        for line in p.timeline:
                            print("             ", line)
                        if i == args.rounds - 1 and not args.no_heal:
                            heal = bench.heal(p.cluster_id, detail)
                            print(
                                f"heal:      SIGKILL → degraded {heal.degraded_s:.1f} s, → "
                                f"API says running {heal.running_s:.1f} s, → Ray lists the "
                                f"spare's node ALIVE {heal.ray_alive_s:.1f} s"
                            )
                            for line in heal.timeline:
                                print("             ", line)
                        bench.terminate(p.cluster_id)
                except Exception:
                    print(bench.tail(), file=sys.stderr)
                    print("--- server\n" + server.log_tail(15), file=sys.stderr)
                    raise
                finally:
                    bench.close()
    finally:
        delete_redis_prefix(prefix)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(temp_base, ignore_errors=True)
    raw_med = statistics.median(r.total_s for r in raw)
    prod_med = statistics.median(p.total_s for p in product)
    print(
        f"median over {len(raw)} rounds each: raw {raw_med:.1f} s, product {prod_med:.1f} s, "
        f"ratio {prod_med / raw_med:.2f} (goal <= 1.3: "
        f"{'met' if prod_med / raw_med <= 1.3 else 'NOT met'})"
    )
    if heal is not None:
        print(
            f"SIGKILL of a worker → `running` again: {heal.running_s:.1f} s (API); the spare's "
            f"Ray node ALIVE after {heal.ray_alive_s:.1f} s"
        )
    print(f"whole run {time.perf_counter() - started:.0f} s; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
