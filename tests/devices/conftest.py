"""Fixtures for the devices tests: a provider, devices joined through the real agent API.

``TESAI_TEST_MEMORY_CACHE=1`` runs the same tests on the in-process cache (embedded mode)
instead of Redis.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tesai.protocol.v1 import GpuSpec, HardwareSpec, JoinRequest
from tesai.runtime import Runtime
from tesai.settings import Settings
from tesai.tasks import TaskContext
from tests.fixtures.auth import MakeUser

GiB = 1 << 30


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small proofs (the GPU "proof" in these tests runs on the CPU) and a small storm floor."""
    return settings.model_copy(
        update={
            "proof_matrix_n_gpu": 256,
            "proof_matrix_n_cpu": 256,
            "proof_iterations": 2,
            "storm_min_devices": 3,
            "storm_fraction": 0.5,
            "storm_grace_s": 60.0,
            "heartbeat_interval_s": 5.0,
            **({"redis_url": None} if os.environ.get("TESAI_TEST_MEMORY_CACHE") else {}),
        }
    )


@pytest.fixture
def ctx(runtime: Runtime) -> TaskContext:
    return runtime.task_context


def hardware(
    *, gpus: int = 0, gpu_model: str = "NVIDIA H100 80GB HBM3", cores: int = 2
) -> HardwareSpec:
    return HardwareSpec(
        hostname="host-1",
        os="Linux 6.8",
        arch="x86_64",
        cpu_model="Test CPU",
        cpu_cores=cores,
        cpu_threads=cores * 2,
        ram_bytes=16 * GiB,
        disk_total_bytes=100 * GiB,
        disk_free_bytes=50 * GiB,
        gpus=[
            GpuSpec(index=i, uuid=f"GPU-{i}", model=gpu_model, memory_total_bytes=80 * GiB)
            for i in range(gpus)
        ],
    )


def beat(seq: int = 1, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "seq": seq,
        "sent_at": "2026-01-01T00:00:00Z",
        "status": "ready",
        "telemetry": {"cpu_percent": 12.5, "mem_used_bytes": 1000, "mem_total_bytes": 4000},
    }
    body.update(extra)
    return body


@dataclass
class Joined:
    device_id: uuid.UUID
    token: str
    headers: dict[str, str]
    join: dict[str, Any]
    verify_args: dict[str, Any] | None


class Pool:
    """Creates devices as a provider and joins them as their agents, over HTTP."""

    def __init__(self, client: httpx.AsyncClient, provider_headers: dict[str, str]) -> None:
        self.client = client
        self.provider = provider_headers

    async def create(self, name: str = "box", **body: Any) -> dict[str, Any]:
        r = await self.client.post(
            "/api/v1/provider/devices", json={"name": name, **body}, headers=self.provider
        )
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()
        return data

    async def join(
        self, join_token: str, hw: HardwareSpec | None = None, instance: str | None = None
    ) -> httpx.Response:
        req = JoinRequest(
            join_token=join_token,
            hardware=hw or hardware(),
            agent_version="0.1.0",
            ray_version="2.60.0",
            agent_instance_id=instance,
        )
        return await self.client.post("/api/v1/agent/join", json=req.model_dump(mode="json"))

    async def joined(self, hw: HardwareSpec | None = None, name: str = "box") -> Joined:
        created = await self.create(name)
        r = await self.join(created["join_token"], hw)
        assert r.status_code == 200, r.text
        data = r.json()
        headers = {"Authorization": f"Bearer {data['device_token']}"}
        # The join queued a verify command; the first heartbeat delivers it.
        hb = await self.client.post("/api/v1/agent/heartbeat", json=beat(), headers=headers)
        assert hb.status_code == 200, hb.text
        verify = [c for c in hb.json()["commands"] if c["kind"] == "verify"]
        return Joined(
            uuid.UUID(data["device_id"]),
            data["device_token"],
            headers,
            data,
            verify[0]["args"] if verify else None,
        )

    async def status(self, device_id: uuid.UUID) -> str:
        r = await self.client.get(f"/api/v1/provider/devices/{device_id}", headers=self.provider)
        assert r.status_code == 200, r.text
        status: str = r.json()["device"]["status"]
        return status


@pytest.fixture
async def provider(make_user: MakeUser) -> dict[str, str]:
    _, headers = await make_user(roles=("provider",))
    return headers


@pytest.fixture
def pool(client: httpx.AsyncClient, provider: dict[str, str]) -> Pool:
    return Pool(client, provider)
