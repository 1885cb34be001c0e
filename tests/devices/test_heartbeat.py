"""Heartbeats: validation before anything is stored, commands until acked, rotation hints."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select, update

from tesai.db import run_after_commit
from tesai.devices import keys
from tesai.devices.deps import forget_local
from tesai.devices.models import DeviceCommand, DeviceCredential
from tesai.devices.service import create_command
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tests.devices.conftest import Pool, beat, hardware
from tests.fixtures.clock import Clock


async def _liveness(runtime: Runtime) -> dict[str, float]:
    return dict(await runtime.cache.zrangebyscore(keys.LIVENESS, float("-inf"), float("inf")))


async def test_heartbeat_records_liveness_and_telemetry(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    joined = await pool.joined()
    r = await client.post("/api/v1/agent/heartbeat", json=beat(7), headers=joined.headers)
    assert r.status_code == 200
    assert r.json()["interval_s"] == 5.0
    assert r.json()["rotate_credential"] is False
    assert str(joined.device_id) in await _liveness(runtime)
    raw = await runtime.cache.get(keys.telemetry(str(joined.device_id)))
    assert raw is not None
    assert orjson.loads(raw)["seq"] == 7
    detail = await client.get(f"/api/v1/provider/devices/{joined.device_id}", headers=pool.provider)
    assert detail.json()["latest_telemetry"]["cpu_percent"] == 12.5


async def test_a_beat_after_a_silence_starts_a_new_run_of_observed_time(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metering bills a node from its device's run start at the earliest: beats continue a
    run, a silence (or a cache lost with the control plane's restart) starts a new one."""
    clock = Clock(monkeypatch)
    joined = await pool.joined()
    device_id = str(joined.device_id)

    async def run_start() -> float | None:
        [start] = await runtime.cache.zscores(keys.HEARD_SINCE, [device_id])
        return start

    async def send(seq: int) -> dict[str, Any]:
        r = await client.post("/api/v1/agent/heartbeat", json=beat(seq), headers=joined.headers)
        assert r.status_code == 200, r.text
        raw = await runtime.cache.get(keys.telemetry(device_id))
        assert raw is not None
        latest: dict[str, Any] = orjson.loads(raw)
        return latest

    first = await run_start()
    assert first is not None
    for seq in (2, 3):
        clock.advance(5)
        assert (await send(seq))["since"] == first
    assert await run_start() == first

    clock.advance(60)  # a minute nobody heard the device
    latest = await send(4)
    assert latest["since"] == latest["at"] == await run_start()
    clock.advance(5)
    assert (await send(5))["since"] == latest["at"]

    await runtime.cache.delete(keys.accumulator(device_id))  # the cache lost on a restart
    clock.advance(1)
    latest = await send(6)
    assert latest["since"] == latest["at"] == await run_start()


async def test_malformed_and_oversized_heartbeats_store_nothing(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    joined = await pool.joined()
    device_id = str(joined.device_id)
    await runtime.cache.delete(keys.telemetry(device_id))
    await runtime.cache.zrem(keys.LIVENESS, device_id)
    gpu = {"index": 0, "uuid": "GPU-0", "utilization_pct": 10}
    bad: list[Any] = [
        {"seq": "x"},
        beat(telemetry={"cpu_percent": 500, "mem_used_bytes": 1, "mem_total_bytes": 1}),
        beat(
            telemetry={
                "cpu_percent": 5,
                "mem_used_bytes": 1,
                "mem_total_bytes": 1,
                "gpus": [gpu] * 65,
            }
        ),
        beat(reason="x" * 513),
        beat(nodes=[{"cluster_id": str(uuid.uuid4()), "role": "head", "state": "running"}] * 17),
        beat(acked_commands=[str(uuid.uuid4())] * 65),
    ]
    for body in bad:
        r = await client.post("/api/v1/agent/heartbeat", json=body, headers=joined.headers)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.post(
        "/api/v1/agent/heartbeat",
        content=b"{" + b'"x": "' + b"a" * 2_000_000 + b'"}',
        headers={**joined.headers, "content-type": "application/json"},
    )
    assert r.status_code in (413, 422)
    r = await client.post(
        "/api/v1/agent/heartbeat",
        content=b"not json",
        headers={**joined.headers, "content-type": "application/json"},
    )
    assert r.status_code == 422
    assert device_id not in await _liveness(runtime)
    assert await runtime.cache.get(keys.telemetry(device_id)) is None


async def test_commands_are_redelivered_until_acked_once(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    joined = await pool.joined()
    # Ack the join's verify command first so only ours is left.
    first = await client.post("/api/v1/agent/heartbeat", json=beat(2), headers=joined.headers)
    verify_ids = [c["id"] for c in first.json()["commands"]]
    await client.post(
        "/api/v1/agent/heartbeat", json=beat(3, acked_commands=verify_ids), headers=joined.headers
    )
    quiet = await client.post("/api/v1/agent/heartbeat", json=beat(4), headers=joined.headers)
    assert quiet.json()["commands"] == []
    assert await runtime.cache.get(keys.commands_pending(str(joined.device_id))) is None

    async with runtime.sessionmaker() as s:
        command = await create_command(s, runtime.cache, joined.device_id, "drain", {"why": "t"})
        await s.commit()
        await run_after_commit(s)
    seen = []
    for seq in (5, 6):
        r = await client.post("/api/v1/agent/heartbeat", json=beat(seq), headers=joined.headers)
        seen.append([c["id"] for c in r.json()["commands"]])
    assert seen == [[str(command.id)], [str(command.id)]]
    result = {"id": str(command.id), "ok": True, "detail": "drained"}
    ack = beat(7, acked_commands=[str(command.id)], command_results=[result])
    r = await client.post("/api/v1/agent/heartbeat", json=ack, headers=joined.headers)
    assert r.json()["commands"] == []
    # Acked twice (a retried beat) changes nothing.
    r = await client.post("/api/v1/agent/heartbeat", json=ack, headers=joined.headers)
    assert r.json()["commands"] == []
    async with runtime.sessionmaker() as s:
        row = await s.get(DeviceCommand, command.id)
        assert row is not None
        assert row.delivery_count == 2
        assert row.acked_at is not None
        assert row.result == {"id": str(command.id), "ok": True, "detail": "drained", "data": None}


async def test_rotation_is_requested_before_expiry(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    joined = await pool.joined()
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(DeviceCredential)
            .where(DeviceCredential.device_id == joined.device_id)
            .values(expires_at=utcnow() + timedelta(minutes=30))
        )
        hashes = (await s.execute(select(DeviceCredential.token_hash))).scalars().all()
    await runtime.cache.delete(*(keys.credential(h) for h in hashes))
    forget_local(runtime.state)  # and this process's copy
    r = await client.post("/api/v1/agent/heartbeat", json=beat(), headers=joined.headers)
    assert r.json()["rotate_credential"] is True


async def test_bandwidth_probe_is_capped(pool: Pool, client: httpx.AsyncClient) -> None:
    joined = await pool.joined()
    r = await client.get("/api/v1/agent/bandwidth?bytes=1000", headers=joined.headers)
    assert r.status_code == 200
    assert len(r.content) == 1000
    r = await client.get("/api/v1/agent/bandwidth?bytes=100000000", headers=joined.headers)
    assert len(r.content) == 16 * 1024 * 1024
    assert (await client.get("/api/v1/agent/bandwidth?bytes=10")).status_code == 401


async def test_out_of_range_numbers_are_refused_not_stored(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    joined = await pool.joined()
    device_id = str(joined.device_id)
    await runtime.cache.delete(keys.telemetry(device_id))
    r = await client.post("/api/v1/agent/heartbeat", json=beat(2**70), headers=joined.headers)
    assert r.status_code == 422
    assert await runtime.cache.get(keys.telemetry(device_id)) is None


async def test_join_with_impossible_hardware_is_refused(pool: Pool) -> None:
    created = await pool.create()
    hw = hardware().model_copy(update={"ram_bytes": 2**80, "hostname": "a\x00b"})
    r = await pool.join(created["join_token"], hw)
    assert r.status_code == 422
    # The token was not spent.
    hw = hardware().model_copy(update={"hostname": "a\x00b", "cpu_model": "x\x00"})
    assert (await pool.join(created["join_token"], hw)).status_code == 200
