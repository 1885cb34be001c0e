"""A restart of the control plane bills nothing of the time nobody observed.

Both shapes: embedded (`tesai up`, the in-process cache is lost with the process) and
production (Redis keeps the liveness set while the control plane is down). The restart is a
second runtime opened on the same database (and, in production shape, the same Redis); the
outage is wall time moved forward, so nothing sleeps through it.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import update

from tesai.billing.models import NodeMeter
from tesai.clusters import evidence
from tesai.clusters.usage import meter_all
from tesai.devices import agents
from tesai.devices.deps import DeviceAuth
from tesai.devices.models import Device
from tesai.devices.sweeper import sweep
from tesai.protocol.v1 import Heartbeat, Telemetry
from tesai.runtime import Runtime, open_runtime
from tesai.settings import Settings
from tests.clusters.conftest import AddDevice, Grant
from tests.clusters.test_reconcile import bring_up
from tests.fixtures.auth import MakeUser
from tests.fixtures.clock import Clock


@pytest.fixture(params=["production", "embedded"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Production: Redis. Embedded: the in-process cache, as `tesai up` runs it."""
    return (
        settings
        if request.param == "production"
        else settings.model_copy(update={"redis_url": None})
    )


async def billed(runtime: Runtime, node_id: uuid.UUID) -> int:
    async with runtime.sessionmaker() as s:
        meter = await s.get(NodeMeter, node_id)
        assert meter is not None
        return meter.billed_seconds


async def test_restart_of_the_control_plane_bills_nothing_for_the_outage(
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    add_device: AddDevice,
    grant: Grant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device = await add_device(gpu_model=None, gpus=0, price=3_600_000)
    async with runtime.sessionmaker.begin() as s:
        await s.execute(update(Device).where(Device.id == device.id).values(agent_version="0.1"))
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    r = await client.post(
        "/api/v1/clusters", json={"request": {"nodes": 1, "duration_s": 3600}}, headers=headers
    )
    assert r.status_code == 201, r.text
    [node] = await bring_up(runtime, uuid.UUID(r.json()["id"]))
    clock = Clock(monkeypatch)
    agent = DeviceAuth(device.id, device.provider_id, uuid.uuid4(), time.time() + 86_400, "-")

    async def beat(rt: Runtime) -> None:
        """A heartbeat, and the control plane seeing the node in its head's Ray state."""
        telemetry = Telemetry(cpu_percent=1.0, mem_used_bytes=1, mem_total_bytes=2)
        hb = Heartbeat(seq=1, sent_at=datetime.now(UTC), telemetry=telemetry)
        await agents.heartbeat(rt.sessionmaker, rt.cache, rt.settings, agent, hb)
        window_s = rt.settings.ray_evidence_window_s
        await evidence.record(rt.cache, [node.id], now=time.time(), window_s=window_s)

    # Before: the device heartbeats every 5 s, the sweeper watches, the tick bills.
    for _ in range(3):
        clock.advance(5)
        await beat(runtime)
        await sweep(runtime.task_context)
        await meter_all(runtime.task_context, now=clock.now())
    before = await billed(runtime, node.id)
    assert before > 0

    # The control plane is down for two minutes, then starts again on the same database.
    clock.advance(120)
    restarted = await open_runtime(runtime.settings, run_periodic=False)
    try:
        ctx = restarted.task_context
        # Nobody observed the outage: no device is marked offline for it ...
        assert (await sweep(ctx)).offline == []
        # ... and nothing of it is billed, before the device is heard again ...
        await meter_all(ctx, now=clock.now())
        clock.advance(3)
        await sweep(ctx)
        await meter_all(ctx, now=clock.now())
        assert await billed(restarted, node.id) == before

        # ... nor after: billing starts at the first heartbeat the new process hears.
        clock.advance(2)
        await beat(restarted)
        heard = time.time()
        for _ in range(2):
            clock.advance(5)
            await beat(restarted)
            assert (await sweep(ctx)).offline == []
            await meter_all(ctx, now=clock.now())
        observed = time.time() - heard
        # Whole seconds: from the first beat's second rounded up to the tick's rounded down.
        assert observed - 2 <= await billed(restarted, node.id) - before <= observed
    finally:
        await restarted.close()
