"""A real agent process against a real control plane process (CPU device, real PostgreSQL/Redis).

The provider side goes through the in-process app on the same database and Redis prefix; the
agent only ever talks HTTP to the server subprocess, like on a provider's host.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tesai.agent.local import LocalAgentProcess, start_local_agent
from tesai.settings import Settings
from tests.fixtures.auth import MakeUser
from tests.fixtures.processes import ServerProcess, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"heartbeat_interval_s": 1.0, "proof_matrix_n_cpu": 128, "proof_iterations": 2}
    )


@pytest.fixture
def server_env() -> dict[str, str]:
    return {}


@pytest.fixture
def server(
    settings: Settings, runtime: Any, tmp_path: Path, server_env: dict[str, str]
) -> Iterator[ServerProcess]:
    srv = ServerProcess(settings, tmp_path / "server.log", **server_env)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


async def test_agent_joins_heartbeats_survives_a_server_restart_and_leaves_on_sigterm(
    server: ServerProcess,
    client: httpx.AsyncClient,
    make_user: MakeUser,
    tmp_path: Path,
) -> None:
    _, provider = await make_user(roles=("provider",))
    created = await client.post(
        "/api/v1/provider/devices", json={"name": "my-box"}, headers=provider
    )
    assert created.status_code == 201, created.text
    device_id = created.json()["device"]["id"]
    state_dir = tmp_path / "agent-state"
    agent_log = tmp_path / "agent.log"

    async def detail() -> dict[str, Any]:
        r = await client.get(f"/api/v1/provider/devices/{device_id}", headers=provider)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def wait_for(check: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = await detail()
            if check(last):
                return last
            time.sleep(0.3)
        raise AssertionError(f"device: {last}\nagent log:\n{agent_log.read_text()[-4000:]}")

    agent: LocalAgentProcess = start_local_agent(
        server.url, state_dir, created.json()["join_token"], log_file=agent_log
    )
    try:
        # Join, the proof of compute on this CPU, then listed.
        online = await wait_for(lambda d: d["device"]["status"] == "online", 60)
        assert online["device"]["cpu_cores"] >= 1
        assert online["device"]["gpu_count"] == 0
        cred = state_dir / "credential.json"
        assert stat.S_IMODE(cred.stat().st_mode) == 0o600
        # Heartbeats keep arriving.
        first = online["last_heartbeat_at"]
        await wait_for(lambda d: d["last_heartbeat_at"] not in (None, first), 10)

        # The network probe measured RTT and bandwidth to the server and named a tier.
        wait_until(lambda: "tier t" in agent_log.read_text(), 10, agent_log.read_text)

        # A re-verification requested by the provider rides on a heartbeat and is answered.
        verified_at = online["device"]["verified_at"]
        r = await client.post(f"/api/v1/provider/devices/{device_id}/verify", headers=provider)
        assert r.status_code == 202, r.text
        await wait_for(
            lambda d: (
                d["device"]["verified_at"] != verified_at and d["device"]["status"] == "online"
            ),
            30,
        )

        # The doctor, on the provider's host, sees the server and a private state dir.
        doc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tesai.agent",
                "doctor",
                "--server",
                server.url,
                "--state-dir",
                str(state_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "OK   Control plane" in doc.stdout, doc.stdout
        assert "OK   Clock skew" in doc.stdout, doc.stdout
        assert "OK   State dir" in doc.stdout, doc.stdout
        assert "credential present, 0600" in doc.stdout, doc.stdout

        # The control plane restarts; the agent carries on without a new join token.
        server.stop()
        time.sleep(2)
        assert agent.poll() is None
        server.start()
        restarted_at = (await detail())["last_heartbeat_at"]
        await wait_for(
            lambda d: d["last_heartbeat_at"] != restarted_at and d["device"]["status"] == "online",
            40,
        )
    finally:
        code = agent.stop()
    assert code == 0, agent_log.read_text()[-4000:]
    gone = await detail()
    assert gone["device"]["status"] == "offline"
    assert gone["device"]["status_reason"] == "agent_left"


@pytest.mark.parametrize(
    "server_env",
    # Tokens live just over the 1 h rotation margin, so the agent rotates every few seconds.
    [{"TESAI_DEVICE_TOKEN_TTL_S": "3604"}],
)
async def test_agent_rotates_its_credential_and_stops_clearly_when_revoked(
    server: ServerProcess,
    client: httpx.AsyncClient,
    make_user: MakeUser,
    tmp_path: Path,
) -> None:
    _, provider = await make_user(roles=("provider",))
    created = await client.post("/api/v1/provider/devices", json={"name": "b"}, headers=provider)
    assert created.status_code == 201, created.text
    device_id = created.json()["device"]["id"]
    state_dir = tmp_path / "agent-state"
    agent_log = tmp_path / "agent.log"
    cred = state_dir / "credential.json"

    agent = start_local_agent(
        server.url, state_dir, created.json()["join_token"], log_file=agent_log
    )
    try:
        wait_until(cred.exists, 60, agent_log.read_text, agent)
        first = cred.read_text()
        wait_until(lambda: cred.read_text() != first, 30, agent_log.read_text, agent)
        assert stat.S_IMODE(cred.stat().st_mode) == 0o600

        # The provider revokes the credential (it leaked): the agent says so and exits 4.
        r = await client.post(
            f"/api/v1/provider/devices/{device_id}/credential/rotate", headers=provider
        )
        assert r.status_code == 200, r.text
        code = agent.wait(timeout=30)
    finally:
        agent.stop()
    log = agent_log.read_text()
    assert code == 4, log[-4000:]
    assert "revoked" in log
    assert "--token" in log
    assert not cred.exists()

    # The new join command brings the same device back.
    again = start_local_agent(server.url, state_dir, r.json()["join_token"], log_file=agent_log)
    try:
        wait_until(cred.exists, 60, agent_log.read_text, again)
    finally:
        assert again.stop() == 0
