"""The liveness sweeper against the real cache and database (silence simulated by age)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime

import httpx
import orjson
from sqlalchemy import func, select

from tesai.devices import keys
from tesai.devices.models import DeviceEvent, DeviceTelemetryRollup, DeviceUptimeMinute, FleetEvent
from tesai.devices.rollups import flush
from tesai.devices.sweeper import sweep
from tesai.runtime import Runtime
from tesai.tasks import TaskContext
from tests.devices.conftest import Joined, Pool, beat, hardware
from tests.devices.proofs import prove
from tests.fixtures.auth import MakeUser


async def online_devices(pool: Pool, client: httpx.AsyncClient, n: int) -> list[Joined]:
    out = []
    for i in range(n):
        joined = await pool.joined(hardware(cores=2), name=f"d{i}")
        assert joined.verify_args is not None
        done = await prove(client, joined.headers, joined.verify_args)
        assert done.outcome["status"] == "online", done.outcome
        out.append(joined)
    return out


async def silence(runtime: Runtime, devices: list[Joined], seconds_ago: float) -> None:
    """Make the devices' last heartbeat ``seconds_ago`` old."""
    await runtime.cache.zadd(
        keys.LIVENESS, {str(d.device_id): time.time() - seconds_ago for d in devices}
    )


async def heartbeat_all(client: httpx.AsyncClient, devices: list[Joined]) -> None:
    for d in devices:
        r = await client.post("/api/v1/agent/heartbeat", json=beat(50), headers=d.headers)
        assert r.status_code == 200


async def statuses(pool: Pool, devices: list[Joined]) -> list[str]:
    return [await pool.status(d.device_id) for d in devices]


async def test_offline_after_grace_not_before_and_back_on_return(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    [d] = await online_devices(pool, client, 1)
    await silence(runtime, [d], 14)  # grace is 3 × 5 s
    report = await sweep(ctx)
    assert report.offline == []
    assert await pool.status(d.device_id) == "online"

    await silence(runtime, [d], 17)
    report = await sweep(ctx)
    assert report.offline == [str(d.device_id)]
    assert await pool.status(d.device_id) == "offline"
    events = (
        await client.get(f"/api/v1/provider/devices/{d.device_id}/events", headers=pool.provider)
    ).json()
    assert events[0]["reason"] == "missed_heartbeats"
    assert "17 s ago" in events[0]["message"]
    # A second sweep does nothing more.
    assert (await sweep(ctx)).offline == []

    await heartbeat_all(client, [d])
    report = await sweep(ctx)
    assert report.resumed == [str(d.device_id)]
    assert await pool.status(d.device_id) == "online"
    events = (
        await client.get(f"/api/v1/provider/devices/{d.device_id}/events", headers=pool.provider)
    ).json()
    assert events[0]["reason"] == "heartbeat_resumed"


async def test_blip_shorter_than_grace_marks_nobody(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    devices = await online_devices(pool, client, 4)
    for age in (6, 10, 14):
        await silence(runtime, devices, age)
        assert (await sweep(ctx)).offline == []
    await heartbeat_all(client, devices)
    assert (await sweep(ctx)).offline == []
    assert await statuses(pool, devices) == ["online"] * 4


async def test_storm_is_held_then_clears_when_beats_return(
    pool: Pool,
    client: httpx.AsyncClient,
    runtime: Runtime,
    ctx: TaskContext,
    make_user: MakeUser,
) -> None:
    devices = await online_devices(pool, client, 5)
    silent, alive = devices[:4], devices[4:]
    await silence(runtime, silent, 30)
    report = await sweep(ctx)
    assert report.holding
    assert report.offline == []
    assert "storm protection" in report.message
    assert await statuses(pool, devices) == ["online"] * 5

    _, admin = await make_user(roles=("admin",))
    state = (await client.get("/api/v1/internal/devices/sweeper", headers=admin)).json()
    assert state["storm"]["silent"] == 4
    assert state["events"][0]["kind"] == "storm_hold_started"

    # Three come back; one stays silent: no longer a storm. The hold was our outage, so the
    # one still silent may be backing off from it: it gets the agents' backoff (30 s) and a
    # grace to come back before it goes offline.
    await heartbeat_all(client, silent[:3] + alive)
    now = time.time()
    report = await sweep(ctx, now=now)
    assert not report.holding
    assert report.offline == []
    state = (await client.get("/api/v1/internal/devices/sweeper", headers=admin)).json()
    assert state["storm"] is None
    kinds = [e["kind"] for e in state["events"]]
    assert kinds.index("watch_resumed") < kinds.index("storm_hold_ended")
    back = {str(d.device_id): [now + t for t in range(5, 50, 5)] for d in silent[:3] + alive}
    marked = await sweep_each_second(ctx, runtime, now + 1, now + 46, back)
    assert [d for _, d in marked] == [str(silent[3].device_id)]
    assert await statuses(pool, devices) == ["online"] * 3 + ["offline", "online"]


async def test_storm_that_persists_past_its_grace_is_applied(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    devices = await online_devices(pool, client, 4)
    await silence(runtime, devices, 30)
    assert (await sweep(ctx)).holding
    # The hold began 61 s ago (storm grace is 60 s in these tests).
    raw = await runtime.cache.get(keys.STORM)
    assert raw is not None
    state = orjson.loads(raw)
    state["since"] -= 61
    await runtime.cache.set(keys.STORM, orjson.dumps(state))
    report = await sweep(ctx)
    assert sorted(report.offline) == sorted(str(d.device_id) for d in devices)
    assert await statuses(pool, devices) == ["offline"] * 4
    async with runtime.sessionmaker() as s:
        kinds = (await s.execute(select(FleetEvent.kind).order_by(FleetEvent.id))).scalars().all()
    assert kinds == ["storm_hold_started", "storm_hold_expired"]


async def test_two_sweepers_at_once_apply_each_change_once(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    devices = await online_devices(pool, client, 2)
    await silence(runtime, devices, 20)
    reports = await asyncio.gather(sweep(ctx), sweep(ctx), sweep(ctx))
    marked = [d for r in reports for d in r.offline]
    assert sorted(marked) == sorted(str(d.device_id) for d in devices)
    async with runtime.sessionmaker() as s:
        count = await s.scalar(
            select(func.count()).where(DeviceEvent.reason == "missed_heartbeats")
        )
    assert count == 2


async def sweep_each_second(
    ctx: TaskContext, runtime: Runtime, start: float, end: float, beats: dict[str, list[float]]
) -> list[tuple[float, str]]:
    """Sweep once a simulated second from ``start`` to ``end``; ``beats`` are heartbeat times
    written to the liveness set as they come."""
    marked: list[tuple[float, str]] = []
    for t in range(int(start), int(end) + 1):
        for device_id, times in beats.items():
            if any(t - 1 < b <= t for b in times):
                await runtime.cache.zadd(keys.LIVENESS, {device_id: float(t)})
        marked += [(float(t), d) for d in (await sweep(ctx, now=float(t))).offline]
    return marked


async def test_redis_flush_neither_loses_nor_kills_devices(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    devices = await online_devices(pool, client, 2)
    await silence(runtime, devices, 100)
    await flush(ctx)  # last heard 100 s ago, as the database knows it
    await runtime.cache.delete(keys.LIVENESS, keys.RECONCILE_LOCK)
    now = float(int(time.time()))
    assert (await sweep(ctx, now=now)).offline == []
    watched = dict(await runtime.cache.zrangebyscore(keys.LIVENESS, 0, float("inf")))
    assert set(watched) == {str(d.device_id) for d in devices}
    # Put back as last heard, never as "heard just now" (that would bill the time until
    # their next beat), yet with a fresh grace counted from when agents backing off from
    # the outage that lost the cache are back (30 s) ...
    assert all(now - at > 99 for at in watched.values())
    alive = {str(devices[1].device_id): [now + 15, now + 28, now + 41]}
    assert await sweep_each_second(ctx, runtime, now + 1, now + 45, alive) == []
    # ... after which a device that really died goes offline; one that beats stays.
    marked = await sweep_each_second(ctx, runtime, now + 46, now + 47, alive)
    assert marked == [(now + 46, str(devices[0].device_id))]


async def test_sweeper_back_from_an_outage_gives_devices_a_grace_before_offline(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    """The control plane was down for two minutes while Redis kept the liveness set: every
    device looks silent, but nobody watched. They get the agents' backoff (30 s) and a
    grace to beat again first."""
    devices = await online_devices(pool, client, 2)
    now = float(int(time.time()))
    assert (await sweep(ctx, now=now)).offline == []
    back = now + 120
    alive = {str(devices[1].device_id): [back + 12, back + 25, back + 38]}
    assert await sweep_each_second(ctx, runtime, back, back + 45, alive) == []
    assert await statuses(pool, devices) == ["online", "online"]
    marked = await sweep_each_second(ctx, runtime, back + 46, back + 46, alive)
    assert marked == [(back + 46, str(devices[0].device_id))]
    assert await statuses(pool, devices) == ["offline", "online"]
    async with runtime.sessionmaker() as s:
        kinds = list((await s.execute(select(FleetEvent.kind))).scalars())
    assert "watch_resumed" in kinds


async def test_leave_marks_offline_at_once(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    [d] = await online_devices(pool, client, 1)
    r = await client.post("/api/v1/agent/leave", json={"reason": "SIGTERM"}, headers=d.headers)
    assert r.status_code == 204
    assert await pool.status(d.device_id) == "offline"
    await heartbeat_all(client, [d])
    assert (await sweep(ctx)).resumed == [str(d.device_id)]
    assert await pool.status(d.device_id) == "online"


async def test_flush_writes_minutes_once(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    [d] = await online_devices(pool, client, 1)
    device_id = str(d.device_id)
    created = (
        await client.get(f"/api/v1/provider/devices/{device_id}", headers=pool.provider)
    ).json()["device"]["created_at"]
    minute = int(datetime.fromisoformat(created).timestamp() // 60)
    acc = {"m": minute, "n": 12, "s": {"cpu": 600.0, "mem": 12000.0}, "c": {"cpu": 12, "mem": 12}}
    # The first beat vouches for one interval before it, which lands in the previous minute
    # when the beat comes in a minute's first seconds; this test is about the accumulator.
    await runtime.cache.delete(keys.CLOSED_MINUTES)
    await runtime.cache.set(keys.accumulator(device_id), orjson.dumps(acc))
    # Going offline closes the running minute, as does a beat in a new minute.
    await silence(runtime, [d], 20)
    assert (await sweep(ctx)).offline == [device_id]
    assert await flush(ctx) == 1
    assert await flush(ctx) == 0
    async with runtime.sessionmaker() as s:
        up = (await s.execute(select(DeviceUptimeMinute))).scalars().all()
        roll = (await s.execute(select(DeviceTelemetryRollup))).scalars().all()
    assert [(u.device_id, u.seconds_up) for u in up] == [(uuid.UUID(device_id), 60)]
    assert roll[0].cpu_percent == 50.0
    detail = (
        await client.get(f"/api/v1/provider/devices/{device_id}", headers=pool.provider)
    ).json()
    # Written, but a device seconds old has no minute old enough to be surely written
    # (``liveness.uptime_span``): no figure yet, rather than one missing its newest minutes.
    assert detail["uptime_30d_pct"] is None
    assert detail["telemetry_history"][0]["cpu_percent"] == 50.0
