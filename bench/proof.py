"""Proof of compute, the server's side: what one verification costs, and how many one API
process sustains.

(a) In process: ``tesai.devices.verification.check_openings``, the CPU work of
    ``POST /verification/reveal`` (sha256 of each opened block and of its Merkle path, then
    the O(n) recomputation of each checked entry), for the plans the default settings give a
    CPU device, an L4 and an H100 SXM; median of ``--repeat`` runs.

(b) Through ``tesai server --workers 1`` (one API process; production settings, Redis, a
    scratch PostgreSQL database, RabbitMQ as broker when it is up so no periodic work runs in
    the API process; rate limiting off: every simulated agent comes from 127.0.0.1). Devices
    are created and joined through the real API; each one's first heartbeat brings its
    ``verify`` command. Then ``--concurrency`` simulated agents run whole proofs back to back,
    one per device (``start`` → commit → reveal):

    - ``cpu``: CPU devices, the server's CPU plan; the agent's own numpy prover computes the
      products in this process between ``start`` and the commitment (honest, they pass);
    - ``h100``: devices declaring an H100 SXM, the server's H100 plan (32768 × 32768, 8
      rounds). Nobody here can compute that, so the simulated agents commit to one tree built
      in advance (arbitrary block contents, valid paths): the server checks every path and
      every chosen entry, exactly the work of a pass, and answers ``proof_sample_mismatch``
      (its bookkeeping for a failure is one more query than for a pass).

    Printed: verifications/s, median and p99 of a whole proof (start to verdict), and the API
    worker's CPU time per verification (rusage), the figure to trust on a shared machine.

    python bench/proof.py [--cpu-proofs 120] [--h100-proofs 40] [--concurrency 8] [--repeat 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
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

from tesai.agent.proof import HonestProver
from tesai.devices.verification import (
    ChallengePlan,
    ProofPolicy,
    check_openings,
    pick_blocks,
    pick_checks,
    plan_challenge,
)
from tesai.protocol import proof
from tesai.protocol.v1 import (
    BlockOpening,
    BlockRef,
    GpuSpec,
    HardwareSpec,
    JoinRequest,
    ProofChallenge,
    ProofCommitment,
    ProofReport,
    ProofReveal,
    ProofStart,
    ProofTimings,
    VerifyArgs,
)
from tesai.settings import Settings

GiB = 1 << 30
H100 = "NVIDIA H100 80GB HBM3"


# --- a commitment to arbitrary blocks, with valid paths --------------------------------------


class SyntheticTree:
    """A Merkle tree over every block of a plan whose contents are cheap to regenerate."""

    def __init__(self, n: int, rounds: int) -> None:
        self.n, self.rounds = n, rounds
        self.size = proof.leaf_rows(n) * n // 8
        count = proof.leaf_count(n, rounds)
        self.levels = proof.tree_levels([proof.leaf_hash(self.block(i)) for i in range(count)])
        self.root = self.levels[-1][0].hex()

    def block(self, index: int) -> bytes:
        return index.to_bytes(8, "little") + bytes(self.size - 8)

    def open(self, blocks: list[tuple[int, int]]) -> list[BlockOpening]:
        out = []
        for t, b in blocks:
            i = proof.leaf_index(self.n, t, b)
            out.append(
                BlockOpening(
                    round=t,
                    block=b,
                    data=proof.encode_block(self.block(i)),
                    path=[h.hex() for h in proof.merkle_path(self.levels, i)],
                )
            )
        return out


# --- (a) the check, in process ---------------------------------------------------------------


def check_cost(plan: ChallengePlan, policy: ProofPolicy, repeat: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    tree = SyntheticTree(plan.n, plan.rounds)
    built = time.perf_counter() - t0
    rng = random.Random(1)
    times = []
    for _ in range(repeat):
        blocks = pick_blocks(plan, policy.sample_blocks, rng)
        checks = pick_checks(plan, blocks, policy.checked_entries, rng)
        openings = tree.open(blocks)
        start = time.perf_counter()
        verdict = check_openings(12345, plan, tree.root, 1.0, openings, checks)
        times.append(time.perf_counter() - start)
        assert verdict.reason == "proof_sample_mismatch", verdict  # every entry was checked
    body = ProofReveal(challenge_id=uuid.uuid4(), openings=tree.open(blocks))
    return {
        "n": plan.n,
        "rounds": plan.rounds,
        "blocks_opened": len(blocks),
        "entries_checked": sum(len(c) for c in checks.values()),
        "check_ms_median": 1000 * statistics.median(times),
        "check_ms_max": 1000 * max(times),
        "reveal_body_kib": len(body.model_dump_json()) / 1024,
        "tree_build_s": built,
    }


# --- (b) one API process ------------------------------------------------------------------------


def hardware(i: int, gpu: bool) -> HardwareSpec:
    gpus = [GpuSpec(index=0, uuid=f"GPU-{i}", model=H100, memory_total_bytes=80 * GiB)]
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
        gpus=gpus if gpu else [],
    )


BEAT = {
    "seq": 1,
    "sent_at": "2026-12-01T12:00:00Z",
    "status": "ready",
    "telemetry": {"cpu_percent": 5.0, "mem_used_bytes": GiB, "mem_total_bytes": 128 * GiB},
}


async def join_devices(
    http: httpx.AsyncClient, provider: dict[str, str], n: int, gpu: bool, tag: str
) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """``n`` devices created and joined; each one's headers and ``verify`` arguments."""
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> tuple[dict[str, str], dict[str, Any]]:
        async with gate:
            r = await http.post(
                "/api/v1/provider/devices", json={"name": f"{tag}-{i}"}, headers=provider
            )
            r.raise_for_status()
            req = JoinRequest(
                join_token=r.json()["join_token"], hardware=hardware(i, gpu), agent_version="0.1"
            )
            r = await http.post("/api/v1/agent/join", json=req.model_dump(mode="json"))
            r.raise_for_status()
            headers = {"Authorization": f"Bearer {r.json()['device_token']}"}
            for _ in range(100):  # the join's commit can trail its answer by a moment
                r = await http.post("/api/v1/agent/heartbeat", json=BEAT, headers=headers)
                if r.status_code != 401:
                    break
                await asyncio.sleep(0.05)
            r.raise_for_status()
            [args] = [c["args"] for c in r.json()["commands"] if c["kind"] == "verify"]
            return headers, args

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


async def run_proofs(
    http: httpx.AsyncClient,
    devices: list[tuple[dict[str, str], dict[str, Any]]],
    concurrency: int,
    tree: SyntheticTree | None,
    pids: list[int],
) -> dict[str, Any]:
    """Whole proofs, ``concurrency`` at a time; honest CPU proofs when ``tree`` is None."""
    queue = list(devices)
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    report = ProofReport(
        kind="gpu", device_model=H100, engine="torch", timings=ProofTimings(gemm_s=1, gflops=1)
    )

    async def post(path: str, body: Any, headers: dict[str, str]) -> Any:
        r = await http.post(
            path,
            content=body.model_dump_json(),
            headers=headers | {"content-type": "application/json"},
        )
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
        return r.json()

    async def agent() -> None:
        prover = HonestProver(use_gpu=False)
        while queue:
            headers, args = queue.pop()
            t0 = time.perf_counter()
            cid = args["challenge_id"]
            challenge = ProofChallenge.model_validate(
                await post(
                    "/api/v1/agent/verification/start", ProofStart(challenge_id=cid), headers
                )
            )
            if tree is None:
                prover.prepare(VerifyArgs.model_validate(args))
                work = await asyncio.to_thread(prover.compute, challenge)
                root, rep = work.root, work.report
            else:
                root, rep = tree.root, report
            reply = await post(
                "/api/v1/agent/verification/commit",
                ProofCommitment(challenge_id=cid, root=root, report=rep),
                headers,
            )
            outcome = reply["outcome"]
            if outcome is None:
                refs = [BlockRef.model_validate(b) for b in reply["blocks"]]
                openings = (
                    prover.open(work, refs)
                    if tree is None
                    else tree.open([(b.round, b.block) for b in refs])
                )
                outcome = await post(
                    "/api/v1/agent/verification/reveal",
                    ProofReveal(challenge_id=cid, openings=openings),
                    headers,
                )
            latencies.append(time.perf_counter() - t0)
            key = outcome["reason"] or outcome["status"]
            outcomes[key] = outcomes.get(key, 0) + 1

    before = cpu_seconds(pids)
    t0 = time.perf_counter()
    await asyncio.gather(*(agent() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pids) - before
    latencies.sort()
    return {
        "proofs": len(latencies),
        "outcomes": outcomes,
        "per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "worker_cpu_ms_per_proof": 1000 * cpu / max(1, len(latencies)),
    }


async def api_process(base_url: str, pids: list[int], args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        email, password = "bench-proof@example.com", "bench-password-123"
        r = await http.post(
            "/api/v1/auth/signup",
            json={"email": email, "password": password, "roles": ["provider"]},
        )
        r.raise_for_status()
        r = await http.post("/api/v1/auth/login", json={"email": email, "password": password})
        r.raise_for_status()
        provider = {"Authorization": f"Bearer {r.json()['access_token']}"}
        cpu = await join_devices(http, provider, args.cpu_proofs, False, "cpu")
        gpu = await join_devices(http, provider, args.h100_proofs, True, "h100")
        print(f"joined {len(cpu)} CPU and {len(gpu)} H100 devices", file=sys.stderr)
        t0 = time.perf_counter()
        tree = SyntheticTree(gpu[0][1]["matrix_n"], gpu[0][1]["iterations"])
        print(f"built the H100 tree in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return {
            "cpu": await run_proofs(http, cpu, args.concurrency, None, pids),
            "h100": await run_proofs(http, gpu, args.concurrency, tree, pids),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-proofs", type=int, default=120)
    parser.add_argument("--h100-proofs", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=20, help="runs of (a) per plan")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    where = machine()
    print(f"machine: {where}", file=sys.stderr)

    policy = ProofPolicy.from_settings(Settings())
    plans = {
        "cpu (2 cores)": plan_challenge(
            policy, gpu_model=None, gpu_count=0, vram_bytes=0, cpu_cores=2
        ),
        "L4": plan_challenge(
            policy, gpu_model="NVIDIA L4", gpu_count=1, vram_bytes=24 * GiB, cpu_cores=16
        ),
        "H100 SXM": plan_challenge(
            policy, gpu_model=H100, gpu_count=1, vram_bytes=80 * GiB, cpu_cores=16
        ),
    }
    checks = {name: check_cost(p, policy, args.repeat) for name, p in plans.items()}
    for name, c in checks.items():
        print(
            f"(a) {name:<14} n={c['n']:>5} rounds={c['rounds']:>2} blocks={c['blocks_opened']:>2} "
            f"entries={c['entries_checked']:>2}: check {c['check_ms_median']:7.2f} ms median "
            f"({c['check_ms_max']:.2f} max), reveal body {c['reveal_body_kib']:.0f} KiB",
            file=sys.stderr,
        )

    port = free_port()
    prefix = f"tesai-bench-proof-{os.getpid()}:"
    home = tempfile.mkdtemp(prefix="tesai-bench-home-")
    broker = "amqp://guest:guest@127.0.0.1:5672//" if port_open("127.0.0.1", 5672) else None
    argv = [str(Path(sys.executable).parent / "tesai"), "server", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", "1"]
    try:
        with scratch_database() as database_url:
            env = {
                "TESAI_ENVIRONMENT": "production",
                "TESAI_HOME": home,
                "TESAI_DATABASE_URL": database_url,
                "TESAI_REDIS_URL": REDIS_URL,
                "TESAI_REDIS_PREFIX": prefix,
                "TESAI_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "TESAI_RATE_LIMIT_ENABLED": "false",
            }
            if broker:
                env["TESAI_BROKER_URL"] = broker
                env["TESAI_TASK_QUEUE_PREFIX"] = f"tesai-bench-proof-{os.getpid()}"
            with server_process(argv, env, port) as server:
                pids = server.worker_pids() or [server.process.pid]
                api = asyncio.run(api_process(server.base_url, pids, args))
    finally:
        delete_redis_prefix(prefix)
        shutil.rmtree(home, ignore_errors=True)
    for kind, r in api.items():
        print(
            f"(b) {kind:<5} {r['proofs']} proofs: {r['per_s']:6.1f} verifications/s, "
            f"p50 {r['p50_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms, "
            f"worker CPU {r['worker_cpu_ms_per_proof']:6.1f} ms/verification → at most "
            f"{1000 / max(r['worker_cpu_ms_per_proof'], 1e-9):.0f}/s per busy core; "
            f"{r['outcomes']}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps({"machine": where, "check": checks, "api": api}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
