"""Uptime and reliability as providers and customers see them, on the real database: over
the time a device has existed (at most 30 days), and a clean stop is no failure."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert

from tesai.devices.models import Device, DeviceStatus, DeviceUptimeMinute
from tesai.devices.rollups import update_reliability
from tesai.devices.service import record_transition
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tesai.tasks import TaskContext
from tests.devices.conftest import Joined, Pool
from tests.devices.proofs import prove


async def _online(pool: Pool, client: httpx.AsyncClient) -> Joined:
    joined = await pool.joined()
    assert joined.verify_args is not None
    done = await prove(client, joined.headers, joined.verify_args)
    assert done.outcome["status"] == "online"
    return joined


async def _up_since(runtime: Runtime, device_id: uuid.UUID, age: timedelta) -> None:
    """The device was created ``age`` ago and has been up ever since, as far as the flush has
    written: every minute but the one in progress and the one before it (closed at the
    device's first beat after it, written by the next flush, up to a minute later)."""
    now = utcnow()
    created = now - age
    async with runtime.sessionmaker.begin() as s:
        await s.execute(update(Device).where(Device.id == device_id).values(created_at=created))
        minute = created.replace(second=0, microsecond=0)
        written = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
        rows = []
        while minute < written:
            rows.append({"device_id": device_id, "minute": minute, "seconds_up": 60})
            minute += timedelta(minutes=1)
        await s.execute(insert(DeviceUptimeMinute).values(rows).on_conflict_do_nothing())


async def _reliability(runtime: Runtime, device_id: uuid.UUID) -> float:
    async with runtime.sessionmaker() as s:
        device = await s.get(Device, device_id)
        assert device is not None
        return device.reliability


async def test_a_device_up_since_it_was_created_six_minutes_ago_shows_100_percent(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    joined = await pool.joined()
    await _up_since(runtime, joined.device_id, timedelta(minutes=6))
    detail = await client.get(f"/api/v1/provider/devices/{joined.device_id}", headers=pool.provider)
    assert detail.json()["uptime_30d_pct"] == 100.0
    public = (await client.get(f"/api/v1/public/devices/{joined.device_id}")).json()
    assert public["uptime_30d_pct"] == 100.0
    assert [day["uptime_pct"] for day in public["uptime_by_day"]][-1] == 100.0
    await update_reliability(ctx)
    assert await _reliability(runtime, joined.device_id) == 1.0


async def test_a_device_created_a_moment_ago_has_no_uptime_yet_rather_than_0_percent(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined()
    detail = await client.get(f"/api/v1/provider/devices/{joined.device_id}", headers=pool.provider)
    assert detail.json()["uptime_30d_pct"] is None
    public = (await client.get(f"/api/v1/public/devices/{joined.device_id}")).json()
    assert public["uptime_30d_pct"] is None


async def test_ctrl_c_while_rented_keeps_reliability_a_silent_death_does_not(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    clean, crashed = await _online(pool, client), await _online(pool, client)
    for joined in (clean, crashed):
        await _up_since(runtime, joined.device_id, timedelta(hours=1))
        async with runtime.sessionmaker.begin() as s:
            device = await s.get(Device, joined.device_id)
            assert device is not None
            record_transition(s, device, DeviceStatus.busy, "rented")
    # The agent stops cleanly: its goodbye reaches the control plane.
    r = await client.post(
        "/api/v1/agent/leave", json={"reason": "agent_stopped"}, headers=clean.headers
    )
    assert r.status_code == 204, r.text
    # The other one just goes silent (the sweeper's decision).
    async with runtime.sessionmaker.begin() as s:
        device = await s.get(Device, crashed.device_id)
        assert device is not None
        record_transition(s, device, DeviceStatus.offline, "missed_heartbeats")
    await update_reliability(ctx)
    assert await _reliability(runtime, clean.device_id) == 1.0
    assert await _reliability(runtime, crashed.device_id) == pytest.approx(0.8333, abs=1e-4)
