"""A real Prometheus scrapes a real `tesai server` and a real agent, with our alert rules loaded.

What an operator does on day one: point Prometheus at the API and the agents, then query.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tesai.agent.local import start_local_agent
from tesai.settings import Settings
from tests.fixtures.auth import MakeUser
from tests.fixtures.processes import ServerProcess, free_port, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="prometheus not installed (Debian package `prometheus`; `make test` installs it)",
    ),
]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"heartbeat_interval_s": 1.0, "proof_matrix_n_cpu": 128, "proof_iterations": 2}
    )


@pytest.fixture
def server(settings: Settings, runtime: Any, tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(settings, tmp_path / "server.log", TESAI_BUSINESS_METRICS_INTERVAL_S="1")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


class Prometheus:
    """`prometheus` on a free port with the shipped config, retargeted at our processes."""

    def __init__(self, tmp: Path, api: str, agent: str) -> None:
        config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(DEPLOY / f) for f in config["rule_files"]]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        jobs["tesai-api"]["static_configs"] = [{"targets": [api]}]
        agent_job = jobs["tesai-agent"]
        agent_job.pop("file_sd_configs")
        agent_job |= {"scrape_interval": "1s", "static_configs": [{"targets": [agent]}]}
        path = tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={path}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: httpx.get(self.url + "/-/ready", timeout=2).status_code == 200,
            30,
            lambda: self.log.read_text()[-3000:],
            self.proc,
        )

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=5)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def test_prometheus_scrapes_the_api_and_an_agent(
    server: ServerProcess,
    client: httpx.AsyncClient,
    make_user: MakeUser,
    tmp_path: Path,
) -> None:
    _, provider = await make_user(roles=("provider",))
    created = await client.post("/api/v1/provider/devices", json={"name": "box"}, headers=provider)
    assert created.status_code == 201, created.text
    device_id = created.json()["device"]["id"]
    agent_log = tmp_path / "agent.log"
    agent_port = free_port()
    agent = start_local_agent(
        server.url,
        tmp_path / "agent-state",
        created.json()["join_token"],
        metrics_port=agent_port,
        log_file=agent_log,
    )
    prom: Prometheus | None = None
    try:
        prom = Prometheus(tmp_path, f"127.0.0.1:{server.port}", f"127.0.0.1:{agent_port}")
        p = prom

        def explain() -> str:
            targets = httpx.get(p.url + "/api/v1/targets", timeout=5).text[:3000]
            routes = [r["metric"] for r in p.query("tesai_http_request_duration_seconds_count")]
            return (
                f"targets: {targets}\nroutes: {routes}\n"
                f"agent log: {agent_log.read_text()[-2000:]}\n"
                f"prometheus: {p.log.read_text()[-2000:]}"
            )

        # Both targets are up.
        wait_until(lambda: p.value('sum(up{job=~"tesai-api|tesai-agent"})') == 2, 60, explain)

        # The device joins and goes online: the API's business gauge says so, by GPU model.
        wait_until(
            lambda: p.value('sum(tesai_devices{state="online",gpu_model="cpu"})') == 1,
            90,
            explain,
        )
        detail = await client.get(f"/api/v1/provider/devices/{device_id}", headers=provider)
        assert detail.json()["device"]["status"] == "online"
        assert p.value('sum(tesai_devices{state="pending"})') == 0

        # Heartbeats are counted, and their HTTP latency is in the route-template histogram.
        wait_until(lambda: (p.value("sum(tesai_heartbeats_total)") or 0) > 0, 30, explain)
        wait_until(
            lambda: (
                (
                    p.value(
                        "sum(tesai_http_request_duration_seconds_count"
                        '{route=~"(/api/v1)?/agent/heartbeat",method="POST",status="2xx"})'
                    )
                    or 0
                )
                > 0
            ),
            30,
            explain,
        )
        went_online = p.value('sum(tesai_device_transitions_total{to_state="online"})')
        assert went_online == 1

        # The agent's own gauges, labelled by the target Prometheus scraped.
        cpu = wait_until(lambda: p.query("tesai_agent_cpu_percent"), 30, explain)
        assert cpu[0]["metric"]["instance"] == f"127.0.0.1:{agent_port}"
        assert (p.value("tesai_agent_memory_total_bytes") or 0) > 0

        # The shipped alert rules loaded and evaluate; nothing is firing on a healthy setup.
        rules = httpx.get(prom.url + "/api/v1/rules", timeout=5).json()["data"]["groups"]
        names = {r["name"] for g in rules for r in g["rules"]}
        assert {"TesaiSettlementLagging", "TesaiDevicesGoingOfflineFast"} <= names
        wait_until(
            lambda: all(
                r.get("health") == "ok"
                for g in httpx.get(p.url + "/api/v1/rules", timeout=5).json()["data"]["groups"]
                for r in g["rules"]
            ),
            20,
            explain,
        )
        firing = httpx.get(prom.url + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        assert [a for a in firing if a["state"] == "firing"] == []
    finally:
        if prom is not None:
            prom.stop()
        code = agent.stop()
    assert code == 0, agent_log.read_text()[-3000:]
