"""Fixtures of the end-to-end tests: a real `tesai server` process and real agents (CPU
devices) on this host, joined and verified, each with its own Ray port range and temp root.

A module tunes the server with its own ``server_env`` fixture (environment overrides).
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tesai.agent.local import start_local_agent
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.fixtures.auth import MakeUser
from tests.fixtures.cluster import Pool, device_status, until
from tests.fixtures.processes import ServerProcess

MakePool = Callable[..., Awaitable[Pool]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"heartbeat_interval_s": 2.0, "proof_matrix_n_cpu": 128, "proof_iterations": 2}
    )


@pytest.fixture
def server_env() -> dict[str, str]:
    return {"TESAI_PROVISIONING_DEADLINE_S": "600"}


@pytest.fixture
def server(
    settings: Settings, runtime: Runtime, tmp_path: Path, server_env: dict[str, str]
) -> Iterator[ServerProcess]:
    srv = ServerProcess(settings, tmp_path / "server.log", **server_env)
    srv.env["TESAI_PUBLIC_URL"] = srv.url
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def make_pool(
    server: ServerProcess, client: httpx.AsyncClient, make_user: MakeUser, tmp_path: Path
) -> AsyncIterator[MakePool]:
    """``await make_pool(n, first_port=21000)``: n CPU devices of one provider, online.

    Device i gets Ray ports ``first_port + 1000 i …`` and its own Ray temp root; at the end
    every agent is stopped and whatever Ray process is left under those roots is killed.
    """
    pools: list[Pool] = []

    async def make(n: int, first_port: int = 21000) -> Pool:
        _, provider = await make_user(roles=("provider",))
        p = Pool()
        pools.append(p)
        for i in range(n):
            r = await client.post(
                "/api/v1/provider/devices",
                json={"name": f"box{i}", "region": "eu-west", "country": "DE"},
                headers=provider,
            )
            assert r.status_code == 201, r.text
            device_id = r.json()["device"]["id"]
            p.logs[device_id] = tmp_path / f"agent{i}.log"
            # Short: Ray's unix socket paths live below it (~107 bytes at most).
            p.temp_roots[device_id] = Path(tempfile.mkdtemp(prefix=f"tr{i}-", dir="/tmp"))
            low = first_port + i * 1000
            p.agents[device_id] = start_local_agent(
                server.url,
                tmp_path / f"agent{i}",
                r.json()["join_token"],
                log_file=p.logs[device_id],
                extra_env={
                    "TESAI_RAY_PORT_RANGE": f"{low}-{low + 999}",
                    "TESAI_RAY_NODE_IP": "127.0.0.1",
                    "TESAI_RAY_TEMP_ROOT": str(p.temp_roots[device_id]),
                },
            )
        for device_id in p.agents:
            await until(
                lambda d=device_id: device_status(client, provider, d),
                lambda s: s == "online",
                90,
                p.tail,
            )
        return p

    try:
        yield make
    finally:
        for p in pools:
            for agent in p.agents.values():
                if agent.poll() is None:
                    agent.stop()
            p.cleanup()


@pytest.fixture
async def pool(make_pool: MakePool) -> Pool:
    """Four CPU devices, joined and verified."""
    return await make_pool(4)
