"""Machines for the console's pages without a real agent: joined through the agent API with
the hardware they declare, listed only after the honest prover passes their proof of compute,
and kept online by heartbeats.

A "GPU" host here proves on the CPU: the web tests' server sizes a GPU proof small
(``tests/web/conftest.py``), so a declared H100 passes with the CPU doing the products. It
lets the console be read with GPU offers in the pool on a machine that has no GPU; clusters
are never placed on it (the browser tests book CPU nodes, which a real agent runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx

from tesai.analytics.rollup import rollup
from tesai.devices.models import DeviceUptimeMinute
from tesai.kit.time import utcnow
from tesai.protocol.v1 import JoinRequest
from tesai.runtime import Runtime
from tests.devices.conftest import beat, hardware
from tests.devices.proofs import H100, prove

HEARTBEAT = "/api/v1/agent/heartbeat"


@dataclass
class Host:
    device_id: uuid.UUID
    headers: dict[str, str]
    gpus: int
    acked: list[str] = field(default_factory=list)

    def telemetry(self) -> dict[str, Any]:
        gpus = [{"index": i, "uuid": f"GPU-{i}", "utilization_pct": 35.0} for i in range(self.gpus)]
        return {
            "cpu_percent": 12.5,
            "mem_used_bytes": 1 << 30,
            "mem_total_bytes": 16 << 30,
            "gpus": gpus,
        }


class Hosts:
    """Hosts of one provider on a running server, beating while the test reads the pages."""

    def __init__(self, client: httpx.AsyncClient, provider: dict[str, str]) -> None:
        self.client = client
        self.provider = provider
        self.hosts: list[Host] = []
        self.seq = 1
        self.task: asyncio.Task[None] | None = None

    async def join(
        self,
        name: str,
        *,
        gpus: int = 0,
        gpu_model: str = H100,
        region: str = "us-east",
        country: str = "US",
        price_micro: int = 2_500_000,
    ) -> Host:
        """Create the device as its provider, join it as its agent and pass its proof."""
        body = {
            "name": name,
            "region": region,
            "country": country,
            "price_per_gpu_hour_micro": price_micro,
        }
        created = await self.client.post(
            "/api/v1/provider/devices", json=body, headers=self.provider
        )
        assert created.status_code == 201, created.text
        join = JoinRequest(
            join_token=created.json()["join_token"],
            hardware=hardware(gpus=gpus, gpu_model=gpu_model, cores=4),
            agent_version="0.1.0",
        )
        r = await self.client.post("/api/v1/agent/join", json=join.model_dump(mode="json"))
        assert r.status_code == 200, r.text
        host = Host(
            uuid.UUID(r.json()["device_id"]),
            {"Authorization": f"Bearer {r.json()['device_token']}"},
            gpus,
        )
        # The join queued the proof; the first beat delivers it.
        hb = await self._beat(host)
        [verify] = [c for c in hb.json()["commands"] if c["kind"] == "verify"]
        done = await prove(self.client, host.headers, verify["args"])
        assert done.outcome == {"status": "online", "reason": None}, done.outcome
        self.hosts.append(host)
        return host

    async def _beat(self, host: Host) -> httpx.Response:
        self.seq += 1
        body = beat(self.seq, telemetry=host.telemetry(), acked_commands=host.acked)
        r = await self.client.post(HEARTBEAT, json=body, headers=host.headers)
        assert r.status_code == 200, r.text
        host.acked = [c["id"] for c in r.json()["commands"]]
        return r

    def start_beating(self, interval_s: float) -> None:
        """Every host beats every ``interval_s`` until ``stop_beating``."""

        async def loop() -> None:
            while True:
                for host in self.hosts:
                    await self._beat(host)
                await asyncio.sleep(interval_s)

        self.task = asyncio.create_task(loop())

    async def stop_beating(self) -> None:
        """Stop the beats; a beat the server refused fails the test here."""
        if self.task is None:
            return
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.task = None


async def seed_history(runtime: Runtime, device_id: uuid.UUID, minutes: int = 15) -> None:
    """``minutes`` of uptime at noon on each of the two days before today, rolled up into the
    pool's history: a day then averages a fraction of the device's GPUs (15 minutes: 0.01)."""
    noon = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    async with runtime.sessionmaker.begin() as s:
        s.add_all(
            DeviceUptimeMinute(
                device_id=device_id,
                minute=noon - timedelta(days=days) + timedelta(minutes=m),
                seconds_up=60,
            )
            for days in (1, 2)
            for m in range(minutes)
        )
    # Every row written so far is taken as final, the minutes the hosts are beating in too.
    later = utcnow() + timedelta(hours=1)
    while "uptime" in (await rollup(runtime.sessionmaker, now=later, sources=("uptime",))).skipped:
        await asyncio.sleep(0.5)  # the server's own rollup holds the source's lock
