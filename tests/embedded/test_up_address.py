"""`tesai up --port P` advertises P: every URL of this server it hands out (the agent's join
command, a cluster's Ray address, the console's public URL, the dashboard origin) follows
the chosen host and port, unless TESAI_PUBLIC_URL says how users reach it."""

from __future__ import annotations

import secrets
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import select

from tesai.devices.models import Device, DeviceStatus
from tesai.devices.service import record_transition
from tesai.embedded.up import UpOptions, serving_settings
from tesai.runtime import open_runtime
from tesai.settings import Settings
from tests.conftest import TEST_DATABASE_URL
from tests.embedded.helpers import clean_env, free_port, interrupt, start, wait_printed

PASSWORD = "an admin password"


def test_the_chosen_port_is_advertised_unless_a_public_url_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TESAI_PUBLIC_URL", raising=False)
    served = serving_settings(Settings(), UpOptions(host="0.0.0.0", port=18400))
    assert served.public_url == "http://127.0.0.1:18400"
    assert served.dashboard_origin == "http://localhost:18400"
    assert (served.port, served.broker_url, served.workers) == (18400, None, 1)

    monkeypatch.setenv("TESAI_PUBLIC_URL", "https://tesai.example")
    served = serving_settings(Settings(), UpOptions(host="0.0.0.0", port=18400))
    assert served.public_url == "https://tesai.example"


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    """A database with nothing in it, for `tesai up` to migrate."""
    name = f"tesai_up_{secrets.token_hex(4)}"
    base = TEST_DATABASE_URL.rpartition("/")[0]
    admin = await asyncpg.connect(TEST_DATABASE_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(TEST_DATABASE_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _list_device(database_url: str, device_id: str) -> None:
    """Make the device listed, as its agent joining and passing its proof would."""
    runtime = await open_runtime(Settings(database_url=database_url), run_periodic=False)
    try:
        async with runtime.sessionmaker.begin() as s:
            device = (
                await s.execute(select(Device).where(Device.id == uuid.UUID(device_id)))
            ).scalar_one()
            device.gpu_model, device.gpu_count, device.vram_bytes_per_gpu = None, 0, 0
            device.cpu_cores, device.reliability, device.verified_score = 8, 0.99, 500.0
            device.connectivity_tier = "t2"
            record_transition(s, device, DeviceStatus.verifying, "agent_joined")
            record_transition(s, device, DeviceStatus.online, "verification_passed")
    finally:
        await runtime.close()


@pytest.mark.slow
async def test_up_on_another_port_advertises_that_port(
    empty_database: str, home: Path, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(TESAI_HOME=str(home), TESAI_DATABASE_URL=empty_database)
    log = tmp_path / "up.log"
    proc = start(
        ["up", "--port", str(port), "--no-agent", "--admin-password", PASSWORD], env, log, tmp_path
    )
    try:
        wait_printed(proc, "Press Ctrl-C to stop.", log, timeout=180)
        assert f"TES AI is running at {base}" in log.read_text()
        async with httpx.AsyncClient(base_url=base, timeout=30) as api:
            config = (await api.get("/api/v1/public/console")).json()
            assert config["public_url"] == base

            r = await api.post(
                "/api/v1/auth/login", json={"email": "admin@example.com", "password": PASSWORD}
            )
            assert r.status_code == 200, r.text
            api.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
            r = await api.post("/api/v1/provider/devices", json={"name": "this machine"})
            assert r.status_code == 201, r.text
            created = r.json()
            assert f"tesai agent --server {base} --token " in created["join_command"]

            await _list_device(empty_database, created["device"]["id"])
            me = (await api.get("/api/v1/auth/me")).json()
            r = await api.post(
                "/api/v1/internal/credits",
                json={"user_id": me["id"], "amount_micro": 10_000_000, "reason": "test"},
                headers={"Idempotency-Key": "up-address"},
            )
            assert r.status_code == 201, r.text
            r = await api.post(
                "/api/v1/clusters", json={"request": {"nodes": 1, "duration_s": 600}}
            )
            assert r.status_code == 201, r.text
            cluster = r.json()
            assert cluster["ray_address"] == f"{base}/api/v1/clusters/{cluster['id']}/ray"
            r = await api.post(f"/api/v1/clusters/{cluster['id']}/terminate")
            assert r.status_code == 200, r.text
    finally:
        code = interrupt(proc, signal.SIGINT)
    assert code == 0, log.read_text()[-3000:]
