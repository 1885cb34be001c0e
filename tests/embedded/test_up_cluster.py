"""`tesai up` alone is a pool of one: its local device is rented as a one-node cluster and a
Ray job runs on it, start to finish, with no other service installed."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.embedded.helpers import clean_env, free_port, interrupt, start, wait_ready

pytestmark = pytest.mark.slow

JOB = (
    "import ray; ray.init(); "
    "print('sum', sum(ray.get([ray.remote(lambda x: x * x).remote(i) for i in range(10)])))"
)


def _until(fetch: Any, check: Any, timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if check(last):
            return last
        time.sleep(1)
    raise AssertionError(f"timed out; last: {last}\n{log.read_text()[-4000:]}")


def test_the_local_device_runs_a_one_node_cluster_and_a_job(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(
        TESAI_HOME=str(home),
        TESAI_HEARTBEAT_INTERVAL_S="2",
        TESAI_PUBLIC_URL=base,
        TESAI_RAY_NODE_IP="127.0.0.1",
        TESAI_RAY_PORT_RANGE="26000-26999",
    )
    proc = start(["up", "--port", str(port)], env, log, tmp_path)
    try:
        wait_ready(proc, f"{base}/readyz", log, timeout=60)
        password = (home / "admin-password").read_text().strip()
        api = httpx.Client(base_url=base, timeout=60)
        tokens = api.post(
            "/api/v1/auth/login", json={"email": "admin@example.com", "password": password}
        ).json()
        api.headers["Authorization"] = f"Bearer {tokens['access_token']}"
        me = api.get("/api/v1/auth/me").json()
        r = api.post(
            "/api/v1/internal/credits",
            json={"user_id": me["id"], "amount_micro": 50_000_000, "reason": "local pool"},
            headers={"Idempotency-Key": "up-cluster-credit"},
        )
        assert r.status_code == 201, r.text

        # The local agent joined and passed its proof of compute: the device is listed.
        offers = _until(
            lambda: api.get("/api/v1/offers").json(),
            lambda o: len(o["offers"]) == 1,
            90,
            log,
        )
        assert offers["offers"][0]["gpu_count"] >= 0

        r = api.post("/api/v1/clusters", json={"request": {"nodes": 1, "duration_s": 600}})
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        _until(
            lambda: api.get(f"/api/v1/clusters/{cid}").json(),
            lambda d: d["status"] == "running",
            180,
            log,
        )
        job = api.post(
            f"/api/v1/clusters/{cid}/jobs",
            json={"entrypoint": f'python -c "{JOB}"'},
        )
        assert job.status_code == 201, job.text
        jid = job.json()["id"]
        done = _until(
            lambda: api.get(f"/api/v1/clusters/{cid}/jobs/{jid}").json(),
            lambda j: j["status"] in ("SUCCEEDED", "FAILED"),
            180,
            log,
        )
        logs = api.get(f"/api/v1/clusters/{cid}/jobs/{jid}/logs").text
        assert done["status"] == "SUCCEEDED", logs
        assert "sum 285" in logs
        assert api.post(f"/api/v1/clusters/{cid}/terminate").status_code == 200
        _until(
            lambda: api.get(f"/api/v1/clusters/{cid}").json(),
            lambda d: d["status"] == "terminated",
            60,
            log,
        )
    finally:
        code = interrupt(proc, signal.SIGINT)
    assert code == 0, log.read_text()[-3000:]
