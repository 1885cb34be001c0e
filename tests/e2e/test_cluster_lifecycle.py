"""The core product end to end: real agents (CPU devices) run a real Ray cluster.

A provider's four machines are four agent processes on this host, each with its own state dir
and Ray port range, talking HTTP to a real `tesai server` process. A customer rents a 3-node
cluster, runs a job on every node (plain `ray job submit` through our proxy, and our own jobs
API), sees every node pass the control plane's canary rounds and a worker whose Ray is frozen
fail them (not billed, the cluster degraded, an offence of its device) until it thaws, loses a
worker to SIGKILL, gets the fourth machine as a replacement, and terminates.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from sqlalchemy import select

from tesai.agent.ray_node import find_processes, node_marker
from tesai.clusters import canary
from tesai.devices.models import DeviceEvent
from tesai.runtime import Runtime
from tests.fixtures.auth import MakeUser
from tests.fixtures.cluster import Pool, funded_customer, job_done, until
from tests.fixtures.processes import ServerProcess

pytestmark = pytest.mark.slow

JOB = textwrap.dedent(
    """
    import ray

    ray.init()
    names = sorted(k for k in ray.cluster_resources() if k.startswith("tesai_node_"))

    @ray.remote(num_cpus=0)
    def where():
        return ray.get_runtime_context().get_node_id()

    ids = ray.get([where.options(resources={n: 0.001}).remote() for n in names])
    print("DISTINCT_NODES", len(set(ids)))
    """
)


@pytest.fixture
def server_env() -> dict[str, str]:
    return {
        "TESAI_PROVISIONING_DEADLINE_S": "240",
        "TESAI_AUTOSCALE_UP_AFTER_S": "2",
        "TESAI_AUTOSCALE_IDLE_TIMEOUT_S": "5",
        # Canary rounds every few seconds (production: 10 minutes on average).
        "TESAI_CANARY_INTERVAL_S": "4",
        "TESAI_CANARY_TIMEOUT_S": "15",
        "TESAI_METERING_INTERVAL_S": "2",
    }


@pytest.mark.timeout(420)  # the canary's part adds about a minute to the bring-up's
async def test_rent_run_heal_and_terminate_a_three_node_cluster(
    server: ServerProcess,
    pool: Pool,
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    tmp_path: Path,
) -> None:
    headers = await funded_customer(runtime, make_user)
    api = httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60)

    async def detail() -> dict[str, Any]:
        r = await api.get(f"/api/v1/clusters/{cluster_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def explain() -> str:
        return pool.tail() + "\n--- server\n" + server.log.read_text()[-3000:]

    r = await api.post(
        "/api/v1/clusters", json={"name": "e2e", "request": {"nodes": 3, "duration_s": 3600}}
    )
    assert r.status_code == 201, r.text
    cluster_id = r.json()["id"]
    ray_address = r.json()["ray_address"]
    assert ray_address == f"{server.url}/api/v1/clusters/{cluster_id}/ray"
    running = await until(detail, lambda d: d["status"] == "running", 240, explain)
    nodes = [n for n in running["nodes"] if n["state"] == "running"]
    assert len(nodes) == 3
    used = {n["device_id"] for n in nodes}
    spare = next(d for d in pool.agents if d not in used)

    # Plain Ray tooling through our proxy, with our token: a job that runs on every node.
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "spread.py").write_text(JOB)
    ray_client = JobSubmissionClient(ray_address, headers=headers)
    sub = ray_client.submit_job(
        entrypoint="python spread.py", runtime_env={"working_dir": str(tmp_path / "job")}
    )
    status = await job_done(ray_client, sub, 120, explain)
    logs = ray_client.get_job_logs(sub)
    assert status == JobStatus.SUCCEEDED, logs
    assert "DISTINCT_NODES 3" in logs

    # Without our token the proxy answers 401; with another customer's, 404.
    assert httpx.get(f"{ray_address}/api/version").status_code == 401
    _, stranger = await make_user()
    assert httpx.get(f"{ray_address}/api/version", headers=stranger).status_code == 404
    version = httpx.get(f"{ray_address}/api/version", headers=headers)
    assert version.status_code == 200
    assert version.json()["ray_version"] == running["ray_version"]

    # Our own jobs API: submit, status, logs.
    r = await api.post(
        f"/api/v1/clusters/{cluster_id}/jobs",
        json={"entrypoint": "python -c \"print('hello from tesai')\""},
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    await until(
        lambda: api.get(f"/api/v1/clusters/{cluster_id}/jobs/{job_id}"),
        lambda resp: resp.json()["status"] in ("SUCCEEDED", "FAILED"),
        120,
        explain,
    )
    assert (await api.get(f"/api/v1/clusters/{cluster_id}/jobs/{job_id}")).json()[
        "status"
    ] == "SUCCEEDED"
    logs_r = await api.get(f"/api/v1/clusters/{cluster_id}/jobs/{job_id}/logs")
    assert "hello from tesai" in logs_r.text
    await canary_catches_a_frozen_worker(api, runtime, pool, cluster_id, nodes, explain)

    # A worker's machine dies: its agent and its Ray processes are SIGKILLed.
    victim = next(n for n in nodes if n["role"] == "worker")
    pool.agents[victim["device_id"]].send_signal(signal.SIGKILL)
    pool.agents[victim["device_id"]].wait()
    for proc in find_processes(node_marker(cluster_id, int(victim["index"]))):
        proc.send_signal(signal.SIGKILL)
    degraded = await until(detail, lambda d: d["status"] == "degraded", 60, explain)
    assert any(e["reason"] == "node_lost" for e in degraded["events"])
    healed = await until(
        detail,
        lambda d: (
            d["status"] == "running"
            and any(n["device_id"] == spare and n["state"] == "running" for n in d["nodes"])
        ),
        180,
        explain,
    )
    reasons = [e["reason"] for e in healed["events"]]
    assert "node_replaced" in reasons
    lost = next(n for n in healed["nodes"] if n["id"] == victim["id"])
    assert lost["state"] == "lost"

    # Terminate: every Ray process of the cluster is gone from every machine.
    r = await api.post(f"/api/v1/clusters/{cluster_id}/terminate")
    assert r.status_code == 200, r.text
    done = await until(detail, lambda d: d["status"] == "terminated", 60, explain)
    assert {n["state"] for n in done["nodes"]} <= {"released", "lost"}
    deadline = time.monotonic() + 60
    while find_processes(f"{cluster_id}/"):
        left = [p.pid for p in find_processes(f"{cluster_id}/")]
        assert time.monotonic() < deadline, f"Ray processes left: {left}"
        await asyncio.sleep(1)
    await api.aclose()


async def canary_catches_a_frozen_worker(
    api: httpx.AsyncClient,
    runtime: Runtime,
    pool: Pool,
    cluster_id: str,
    nodes: list[dict[str, Any]],
    explain: Callable[[], str],
) -> None:
    """Every node passes the canary rounds; a worker whose Ray processes are frozen (SIGSTOP:
    its head's Ray state lists it ALIVE until Ray's health checks give up, about a minute
    for a node that does not answer) fails them: not billed, the cluster degraded, an
    offence of its device; thawed, it passes and the cluster runs again."""

    async def detail() -> dict[str, Any]:
        body: dict[str, Any] = (await api.get(f"/api/v1/clusters/{cluster_id}")).json()
        return body

    def billed(d: dict[str, Any]) -> dict[str, int]:
        return {n["id"]: n["healthy_seconds"] for n in d["nodes"] if n["state"] == "running"}

    ids = [n["id"] for n in nodes]
    since = time.time()
    await until(
        lambda: runtime.cache.zscores(canary.PASSED, ids),
        lambda at: all(a is not None and a > since for a in at),
        90,
        explain,
    )
    assert (await detail())["status"] == "running"
    # The round's job is the control plane's, not the customer's.
    listed = (await api.get(f"/api/v1/clusters/{cluster_id}/jobs")).json()
    assert not [j for j in listed if j["submission_id"].startswith(canary.SUBMISSION_PREFIX)]

    frozen = next(n for n in nodes if n["role"] == "worker")
    procs = pool.ray_processes(frozen["device_id"])
    assert procs
    for p in procs:
        p.suspend()
    try:
        degraded = await until(detail, lambda d: d["status"] == "degraded", 60, explain)
        assert "canary_failed" in [e["reason"] for e in degraded["events"]], degraded
        await asyncio.sleep(3)  # the metering tick's interval in progress
        before = billed(await detail())
        await asyncio.sleep(6)
        after = billed(await detail())
    finally:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.resume()
    assert after[frozen["id"]] == before[frozen["id"]], (before, after)
    assert all(after[i] > before[i] for i in ids if i != frozen["id"]), (before, after)
    async with runtime.sessionmaker() as s:
        offences = list(
            await s.scalars(select(DeviceEvent).where(DeviceEvent.reason == "canary_failed"))
        )
    assert [str(e.device_id) for e in offences] == [frozen["device_id"]]

    back = await until(detail, lambda d: d["status"] == "running", 90, explain)
    assert [e["reason"] for e in back["events"]][-2:] == ["canary_failed", "canary_passed"]


DEMAND_JOB = textwrap.dedent(
    """
    import time
    import ray

    ray.init()

    @ray.remote(num_cpus=1)
    def busy():
        time.sleep(15)
        return ray.get_runtime_context().get_node_id()

    cpus = int(ray.cluster_resources()["CPU"])
    # Twice what one node has: half of it waits until the autoscaler adds a node.
    nodes = ray.get([busy.remote() for _ in range(2 * cpus)])
    print("RAN_ON", len(set(nodes)))
    """
)


async def test_an_autoscaled_cluster_grows_under_demand_and_shrinks_when_idle(
    server: ServerProcess,
    pool: Pool,
    runtime: Runtime,
    make_user: MakeUser,
    tmp_path: Path,
) -> None:
    headers = await funded_customer(runtime, make_user)
    api = httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60)

    def explain() -> str:
        return pool.tail() + "\n--- server\n" + server.log.read_text()[-3000:]

    body = {"request": {"nodes": 1, "min_gpus": 1, "max_gpus": 2, "duration_s": 3600}}
    r = await api.post("/api/v1/clusters", json=body)
    assert r.status_code == 201, r.text
    cluster_id = r.json()["id"]

    async def detail() -> dict[str, Any]:
        body: dict[str, Any] = (await api.get(f"/api/v1/clusters/{cluster_id}")).json()
        return body

    def live(d: dict[str, Any]) -> list[dict[str, Any]]:
        return [n for n in d["nodes"] if n["released_at"] is None]

    await until(detail, lambda d: d["status"] == "running", 240, explain)
    (tmp_path / "demand").mkdir()
    (tmp_path / "demand" / "demand.py").write_text(DEMAND_JOB)
    ray_client = JobSubmissionClient(r.json()["ray_address"], headers=headers)
    sub = ray_client.submit_job(
        entrypoint="python demand.py", runtime_env={"working_dir": str(tmp_path / "demand")}
    )
    grown = await until(
        detail,
        lambda d: len([n for n in live(d) if n["state"] == "running"]) == 2,
        180,
        explain,
    )
    assert grown["gpus"] == 2
    assert any(e["reason"] == "scaled_up" for e in grown["events"])
    status = await job_done(ray_client, sub, 180, explain)
    assert status == JobStatus.SUCCEEDED, ray_client.get_job_logs(sub)
    # Idle past the timeout: back to min, never below.
    shrunk = await until(detail, lambda d: len(live(d)) == 1, 120, explain)
    assert live(shrunk)[0]["role"] == "head"
    assert [e["reason"] for e in shrunk["events"] if e["reason"].startswith("scale")] == [
        "scaled_up",
        "scaled_down",
    ]
    await api.post(f"/api/v1/clusters/{cluster_id}/terminate")
    await until(detail, lambda d: d["status"] == "terminated", 60, explain)
    await api.aclose()
