"""A restart of `tesai up` bills nothing of the time it was down.

`tesai up --no-agent` on an embedded database; this test is the agent of one CPU device,
over the agent API (join, proof of compute, heartbeats reporting its Ray node running), and
its head's Ray state API (``tests.fixtures.ray_state``: the control plane bills a node only
once it has seen it alive there itself). The
device is rented as a one-node cluster; `tesai up` is stopped for longer than the metering
tick's stall cap and started again on the same data. The node's billed seconds must not
exceed the seconds its heartbeats were heard (plus the healthy window after the last beat
and whole-second rounding), and the device must not be marked offline for the outage.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tesai.protocol.v1 import JoinRequest
from tests.devices.conftest import beat, hardware
from tests.devices.proofs import prove_sync
from tests.embedded.helpers import clean_env, free_port, interrupt, start, wait_ready
from tests.fixtures.ray_state import fake_ray_head

pytestmark = pytest.mark.slow

INTERVAL_S = 2.0
OUTAGE_S = 40.0  # longer than the tick's stall cap (3 × 10 s + 1)


class Agent:
    """Heartbeats every ``INTERVAL_S`` while ``beating``; keeps when it was heard."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.nodes: list[dict[str, Any]] = []
        self.heard: list[tuple[float, float]] = []
        """(first, last) time of each run of answered beats."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat_once(self, seq: int = 1) -> httpx.Response:
        r = httpx.post(
            f"{self.base}/api/v1/agent/heartbeat",
            json=beat(seq, nodes=self.nodes),
            headers=self.headers,
            timeout=10,
        )
        r.raise_for_status()
        return r

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        first = last = None
        seq = 100
        while not self._stop.is_set():
            seq += 1
            sent = time.time()
            self.beat_once(seq)
            first = sent if first is None else first
            last = time.time()
            self._stop.wait(INTERVAL_S)
        if first is not None and last is not None:
            self.heard.append((first, last))


def _until(fetch: Any, check: Any, timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if check(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out; last: {last}\n{log.read_text()[-4000:]}")


def test_a_restart_of_tesai_up_bills_nothing_of_the_outage(home: Path, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        _restart_bills_nothing_of_the_outage(home, tmp_path, stack)


def _restart_bills_nothing_of_the_outage(
    home: Path, tmp_path: Path, stack: contextlib.ExitStack
) -> None:
    log = tmp_path / "up.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(
        TESAI_HOME=str(home),
        TESAI_HEARTBEAT_INTERVAL_S=str(INTERVAL_S),
        TESAI_PUBLIC_URL=base,
    )
    up = ["up", "--no-agent", "--port", str(port)]
    proc = start(up, env, log, tmp_path)
    head = stack.enter_context(fake_ray_head())
    try:
        wait_ready(proc, f"{base}/readyz", log, timeout=90)
        password = (home / "admin-password").read_text().strip()
        api = httpx.Client(base_url=base, timeout=60)
        tokens = api.post(
            "/api/v1/auth/login", json={"email": "admin@example.com", "password": password}
        ).json()
        api.headers["Authorization"] = f"Bearer {tokens['access_token']}"
        me = api.get("/api/v1/auth/me").json()
        r = api.post(
            "/api/v1/internal/credits",
            json={"user_id": me["id"], "amount_micro": 50_000_000, "reason": "restart test"},
            headers={"Idempotency-Key": "restart-credit"},
        )
        assert r.status_code == 201, r.text

        device = api.post("/api/v1/provider/devices", json={"name": "cpu-box"}).json()
        req = JoinRequest(
            join_token=device["join_token"], hardware=hardware(), agent_version="0.1.0"
        )
        joined = httpx.post(f"{base}/api/v1/agent/join", json=req.model_dump(mode="json"))
        assert joined.status_code == 200, joined.text
        agent = Agent(base, joined.json()["device_token"])
        device_id = joined.json()["device_id"]
        [verify] = [c for c in agent.beat_once().json()["commands"] if c["kind"] == "verify"]
        with httpx.Client(base_url=base, timeout=60) as proving:
            outcome = prove_sync(proving, agent.headers, verify["args"])
        assert outcome["status"] == "online", outcome

        r = api.post(
            "/api/v1/clusters",
            json={"request": {"nodes": 1, "duration_s": 3600}},
            headers={"Idempotency-Key": "restart-cluster"},
        )
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        [node] = api.get(f"/api/v1/clusters/{cid}").json()["nodes"]
        head.alive = {f"tesai_node_{uuid.UUID(node['id']).hex[:12]}"}
        agent.nodes = [
            {
                "cluster_id": cid,
                "role": "head",
                "state": "running",
                "ray_address": "127.0.0.1:6379",
                "dashboard_port": head.port,
                "alive_nodes": 1,
            }
        ]
        agent.start()
        _until(
            lambda: api.get(f"/api/v1/clusters/{cid}").json(),
            lambda d: d["status"] == "running",
            60,
            log,
        )
        time.sleep(15)  # the tick bills the heard seconds
        agent.stop()
        assert interrupt(proc, signal.SIGINT) == 0, log.read_text()[-3000:]

        time.sleep(OUTAGE_S)  # nobody observes anything

        proc = start(up, env, log, tmp_path)
        wait_ready(proc, f"{base}/readyz", log, timeout=90)
        api.headers["Authorization"] = (
            "Bearer "
            + (
                api.post(
                    "/api/v1/auth/login", json={"email": "admin@example.com", "password": password}
                ).json()["access_token"]
            )
        )
        time.sleep(INTERVAL_S)  # the first tick runs before any heartbeat is heard
        agent.start()
        time.sleep(15)
        agent.stop()
        time.sleep(1.5)  # a reconcile pass shows the billed seconds (and no grace runs out)

        detail = api.get(f"/api/v1/clusters/{cid}").json()
        events = api.get(f"/api/v1/provider/devices/{device_id}/events").json()
        assert detail["status"] == "running", (detail, events)
        billed = detail["nodes"][0]["healthy_seconds"]
        heard = sum(last - first for first, last in agent.heard)
        # Each run of beats may be billed up to 1.5 intervals past its last beat and a
        # second of rounding; the outage (40 s) would be up to 31 s more.
        allowed = heard + len(agent.heard) * (1.5 * INTERVAL_S + 1)
        assert 0 < billed <= allowed, (billed, agent.heard, log.read_text()[-3000:])
        events = api.get(f"/api/v1/provider/devices/{device_id}/events").json()
        assert "missed_heartbeats" not in [e["reason"] for e in events], events
    finally:
        code = interrupt(proc, signal.SIGINT)
    assert code == 0, log.read_text()[-3000:]
