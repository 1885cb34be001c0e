"""A lost head re-forms the cluster on a new head, end to end, with real agents and Ray.

Three CPU devices: a 2-node cluster (head + worker) and a spare. Two jobs run on the head
when its machine dies (agent and Ray processes SIGKILLed): the one without retries is marked
failed, the one allowed a retry is resubmitted to the re-formed cluster and succeeds there.
The control plane marks the device offline, places a new head on the spare, the surviving
worker rejoins it, and the cluster is `running` again with every step stored as an event.
"""

from __future__ import annotations

import contextlib
import signal
import textwrap
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tesai.agent.ray_node import find_processes, node_marker
from tesai.runtime import Runtime
from tests.e2e.conftest import MakePool
from tests.fixtures.auth import MakeUser
from tests.fixtures.cluster import funded_customer, no_cluster_processes, until
from tests.fixtures.processes import ServerProcess

# Ray starts in seconds on an idle host, in minutes on a loaded 2-core CI runner.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# First attempt: leaves a mark and runs "forever"; the retry finds the mark and finishes.
RETRIED = textwrap.dedent(
    """
    import pathlib, time
    mark = pathlib.Path({mark!r})
    if mark.exists():
        print("RESUMED after", mark.read_text(), flush=True)
    else:
        mark.write_text("attempt 1")
        print("FIRST attempt", flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def server_env() -> dict[str, str]:
    # Heartbeats every 2 s (see conftest): a device silent for 4 s is offline.
    return {"TESAI_PROVISIONING_DEADLINE_S": "600", "TESAI_HEARTBEAT_GRACE_INTERVALS": "2"}


async def test_a_lost_head_reforms_the_cluster_and_its_jobs_fail_or_resubmit(
    server: ServerProcess,
    make_pool: MakePool,
    runtime: Runtime,
    make_user: MakeUser,
    tmp_path: Path,
) -> None:
    pool = await make_pool(3, first_port=31000)
    headers = await funded_customer(runtime, make_user)
    api = httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60)

    def explain() -> str:
        return pool.tail() + "\n--- server\n" + server.log.read_text()[-4000:]

    r = await api.post(
        "/api/v1/clusters", json={"name": "e2e", "request": {"nodes": 2, "duration_s": 3600}}
    )
    assert r.status_code == 201, r.text
    cluster_id = r.json()["id"]

    async def detail() -> dict[str, Any]:
        r = await api.get(f"/api/v1/clusters/{cluster_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    running = await until(detail, lambda d: d["status"] == "running", 300, explain)
    head = next(n for n in running["nodes"] if n["role"] == "head")
    worker = next(n for n in running["nodes"] if n["role"] == "worker")
    spare = next(d for d in pool.agents if d not in (head["device_id"], worker["device_id"]))

    # Two jobs running on the head: one without retries, one allowed one retry.
    mark = tmp_path / "retried.mark"
    (tmp_path / "retried.py").write_text(RETRIED.format(mark=str(mark)))
    jobs = {}
    for name, body in {
        "once": {"entrypoint": "python -c \"import time; print('ONCE'); time.sleep(600)\""},
        "retried": {"entrypoint": f"python {tmp_path / 'retried.py'}", "max_retries": 1},
    }.items():
        r = await api.post(f"/api/v1/clusters/{cluster_id}/jobs", json=body)
        assert r.status_code == 201, r.text
        jobs[name] = r.json()["id"]

    async def job(name: str) -> dict[str, Any]:
        r = await api.get(f"/api/v1/clusters/{cluster_id}/jobs/{jobs[name]}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    for name in jobs:
        await until(lambda n=name: job(n), lambda j: j["status"] == "RUNNING", 90, explain)
    await until(_async(mark.exists), bool, 30, explain)

    # The head's machine dies: its agent and every Ray process it started, at once.
    head_device = head["device_id"]
    pool.agents[head_device].send_signal(signal.SIGKILL)
    pool.agents[head_device].wait()
    victims = find_processes(node_marker(cluster_id, int(head["index"])))
    victims += pool.ray_processes(head_device)
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    pool.kill_ray(head_device)
    assert not pool.ray_processes(head_device)

    degraded = await until(detail, lambda d: d["status"] == "degraded", 60, explain)
    assert degraded["status_reason"] == "head_lost"

    # A new head on the spare device; the surviving worker rejoins it.
    healed = await until(
        detail,
        lambda d: (
            d["status"] == "running"
            and any(
                n["device_id"] == spare and n["role"] == "head" and n["state"] == "running"
                for n in d["nodes"]
            )
        ),
        240,
        explain,
    )
    by_id = {n["id"]: n for n in healed["nodes"]}
    assert by_id[head["id"]]["state"] == "lost"
    assert by_id[worker["id"]]["state"] == "running"
    assert by_id[worker["id"]]["device_id"] == worker["device_id"]
    reasons = [e["reason"] for e in healed["events"]]
    for reason in ("head_lost", "job_failed", "job_resubmitted", "node_replaced"):
        assert reason in reasons, reasons
    assert reasons.index("head_lost") < reasons.index("node_replaced")

    # The job without retries failed, saying why; the other ran again on the new head.
    once = await job("once")
    assert once["status"] == "FAILED"
    assert "head node was lost" in once["message"]
    assert once["attempts"] == 1
    retried = await until(
        lambda: job("retried"), lambda j: j["status"] in ("SUCCEEDED", "FAILED"), 90, explain
    )
    assert retried["status"] == "SUCCEEDED", retried
    assert retried["attempts"] == 2
    logs = (await api.get(f"/api/v1/clusters/{cluster_id}/jobs/{jobs['retried']}/logs")).text
    assert "RESUMED after attempt 1" in logs

    # Terminate: no Ray process of the cluster is left on any machine.
    r = await api.post(f"/api/v1/clusters/{cluster_id}/terminate")
    assert r.status_code == 200, r.text
    await until(detail, lambda d: d["status"] == "terminated", 60, explain)
    await no_cluster_processes(lambda: find_processes(f"{cluster_id}/"), 60)
    await api.aclose()


def _async(fn: Any) -> Any:
    async def call() -> Any:
        return fn()

    return call
