"""Adversarial agents against a real control plane: each attack on proof of compute is a real
agent process (``tests.devices.adversary_agent``) talking HTTP to a real ``tesai server``, with
the server measuring time on its own clock. Each ends ``rejected`` with its reason code and is
never offered; an honest CPU device still passes.

The server is sized so that this host's CPU cannot do an H100's work in time: a GPU proof here
is 2048 × 2048 products, as many rounds as this CPU needs 3 s for (at least 8), allowed about
1 s (the latency allowance: an H100 would need milliseconds).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.fixtures.auth import MakeUser
from tests.fixtures.processes import ServerProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"heartbeat_interval_s": 1.0, "proof_matrix_n_cpu": 128, "proof_iterations": 2}
    )


def _rounds_this_cpu_needs(seconds: float, n: int = 2048) -> int:
    """Rounds of ``n × n`` float32 products this host's CPU needs at least ``seconds`` for."""
    a = np.ones((n, n), dtype=np.float32)
    a @ a  # warm-up: BLAS threads
    start = time.perf_counter()
    a @ a
    took = time.perf_counter() - start
    return max(8, min(128, math.ceil(seconds / took)))


@pytest.fixture
def server(settings: Settings, runtime: Runtime, tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        settings,
        tmp_path / "server.log",
        TESAI_PROOF_MATRIX_N_GPU="2048",
        TESAI_PROOF_MAX_ROUNDS=str(_rounds_this_cpu_needs(3.0)),
        TESAI_PROOF_LATENCY_ALLOWANCE_S="1.0",
        TESAI_PROOF_CPU_MIN_DEADLINE_S="2.0",
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


class Adversary:
    """One device of a provider, run by an adversary agent process."""

    def __init__(
        self, client: httpx.AsyncClient, provider: dict[str, str], tmp: Path, server: str
    ) -> None:
        self.client, self.provider, self.tmp, self.server = client, provider, tmp, server
        self.proc: subprocess.Popen[bytes] | None = None
        self.device_id = ""
        self.log = tmp / "agent.log"

    async def start(self, attack: str, *extra: str) -> None:
        r = await self.client.post(
            "/api/v1/provider/devices",
            json={"name": attack, "region": "eu-west", "country": "DE"},
            headers=self.provider,
        )
        assert r.status_code == 201, r.text
        self.device_id = r.json()["device"]["id"]
        env = dict(os.environ) | {"TESAI_AGENT_TOKEN": r.json()["join_token"]}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        state = str(self.tmp / "state")
        cmd = [sys.executable, "-m", "tests.devices.adversary_agent", attack]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*cmd, "--server", self.server, "--state-dir", state, *extra],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def device(self) -> dict[str, Any]:
        r = await self.client.get(
            f"/api/v1/provider/devices/{self.device_id}", headers=self.provider
        )
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def until(self, status: str, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        detail: dict[str, Any] = {}
        while time.monotonic() < deadline:
            detail = await self.device()
            if detail["device"]["status"] == status:
                return detail
            assert self.proc is not None
            assert self.proc.poll() is None, self.log.read_text()[-4000:]
            time.sleep(0.3)
        raise AssertionError(f"{detail}\nagent log:\n{self.log.read_text()[-4000:]}")

    async def offered(self) -> bool:
        r = await self.client.get("/api/v1/offers", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return any(o["device_id"] == self.device_id for o in r.json()["offers"])

    async def events(self) -> list[dict[str, Any]]:
        r = await self.client.get(
            f"/api/v1/provider/devices/{self.device_id}/events", headers=self.provider
        )
        events: list[dict[str, Any]] = r.json()
        return events

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
async def adversary(
    server: ServerProcess, client: httpx.AsyncClient, make_user: MakeUser, tmp_path: Path
) -> Any:
    _, provider = await make_user(roles=("provider",))
    a = Adversary(client, provider, tmp_path, server.url)
    try:
        yield a
    finally:
        a.stop()


async def _rejected_with(a: Adversary, reason: str) -> dict[str, Any]:
    detail = await a.until("rejected")
    assert detail["device"]["status_reason"] == reason, detail
    assert detail["last_verification"]["reason"] == reason
    assert (await a.events())[0]["reason"] == reason
    assert not await a.offered()
    return detail


async def test_honest_cpu_device_passes_and_is_offered(adversary: Adversary) -> None:
    await adversary.start("honest")
    detail = await adversary.until("online")
    assert detail["last_verification"]["outcome"] == "passed"
    assert await adversary.offered()


async def test_cpu_host_claiming_h100_that_computes_only_the_checked_entries_is_rejected(
    adversary: Adversary,
) -> None:
    await adversary.start("sampled-entries")
    detail = await _rejected_with(adversary, "proof_commitment_mismatch")
    # It answered in time: the commitment, not the clock, caught it.
    v = detail["last_verification"]
    assert v["measured_s"] < v["deadline_s"]


async def test_cpu_host_claiming_h100_with_fabricated_fast_timings_is_rejected(
    adversary: Adversary,
) -> None:
    await adversary.start("fabricated-timings")
    detail = await _rejected_with(adversary, "proof_deadline_missed")
    v = detail["last_verification"]
    assert v["measured_s"] > v["deadline_s"]
    assert v["reported"]["timings"]["gflops"] == 40_000.0  # shown, not believed
    assert detail["device"]["verified_score"] is None


async def test_device_forwarding_the_challenge_to_a_second_machine_is_rejected(
    adversary: Adversary,
) -> None:
    """The helper computes correctly; its answer comes back 4 s later, past the 3 s a CPU
    device is allowed here."""
    await adversary.start("forward-to-helper", "--delay", "4")
    detail = await _rejected_with(adversary, "proof_deadline_missed")
    assert detail["last_verification"]["measured_s"] >= 4


async def test_device_replaying_an_earlier_proof_is_rejected(adversary: Adversary) -> None:
    await adversary.start("replay")
    await adversary.until("online")
    r = await adversary.client.post(
        f"/api/v1/provider/devices/{adversary.device_id}/verify", headers=adversary.provider
    )
    assert r.status_code == 202, r.text
    await _rejected_with(adversary, "proof_replayed")


async def test_device_claiming_80_gb_with_less_is_rejected(adversary: Adversary) -> None:
    """What is provable: the claim against what NVML reports on the host (and against the
    largest memory the model ships with). The proof's working set does not measure memory."""
    await adversary.start("vram-liar")
    detail = await _rejected_with(adversary, "vram_mismatch")
    assert "NVML on the device reports 24 GiB" in detail["last_verification"]["detail"]
