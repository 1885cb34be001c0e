"""The connectivity tier comes from heartbeat telemetry (``net.tier``), not only from join.

At join the agent can measure round-trip time only (bandwidth needs the device credential), so
the tier arrives with later heartbeats; the flush task writes it to the device row.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tesai.devices import keys
from tesai.devices.rollups import flush
from tesai.runtime import Runtime
from tesai.tasks import TaskContext
from tests.devices.conftest import Joined, Pool, beat


def net_beat(seq: int, bandwidth_mbps: float | None, tier: str | None) -> dict[str, Any]:
    telemetry: dict[str, Any] = {"cpu_percent": 5.0, "mem_used_bytes": 1, "mem_total_bytes": 4}
    if tier is not None:
        telemetry["net"] = {"rtt_ms": 0.4, "bandwidth_mbps": bandwidth_mbps, "tier": tier}
    return beat(seq, telemetry=telemetry)


async def close_minute(runtime: Runtime, d: Joined) -> None:
    """Move the device's running minute one minute back, so the next beat closes it."""
    key = keys.accumulator(str(d.device_id))
    raw = await runtime.cache.get(key)
    assert raw is not None
    acc = orjson.loads(raw)
    acc["m"] -= 1
    await runtime.cache.set(key, orjson.dumps(acc))


async def tier_of(client: httpx.AsyncClient, pool: Pool, d: Joined) -> str | None:
    r = await client.get(f"/api/v1/provider/devices/{d.device_id}", headers=pool.provider)
    assert r.status_code == 200, r.text
    tier: str | None = r.json()["device"]["connectivity_tier"]
    return tier


async def send(client: httpx.AsyncClient, d: Joined, body: dict[str, Any]) -> None:
    r = await client.post("/api/v1/agent/heartbeat", json=body, headers=d.headers)
    assert r.status_code == 200, r.text


async def test_tier_from_heartbeats_reaches_the_device_after_flush(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    d = await pool.joined()
    assert await tier_of(client, pool, d) is None  # join measured no bandwidth

    await send(client, d, net_beat(2, 1300.0, "t2"))
    assert await tier_of(client, pool, d) is None  # no SQL on the heartbeat path
    await close_minute(runtime, d)
    await send(client, d, net_beat(3, 1300.0, "t2"))
    await flush(ctx)
    assert await tier_of(client, pool, d) == "t2"

    # The agent re-measures: a slower link moves the device down a tier.
    await send(client, d, net_beat(4, 500.0, "t4"))
    await close_minute(runtime, d)
    await send(client, d, net_beat(5, None, None))
    await flush(ctx)
    assert await tier_of(client, pool, d) == "t4"

    # A minute whose beats carry no network probe leaves the stored tier alone.
    await close_minute(runtime, d)
    await send(client, d, net_beat(6, None, None))
    await flush(ctx)
    assert await tier_of(client, pool, d) == "t4"
