"""Provider, admin and public device endpoints over HTTP with the real cache and database."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from tesai.devices import keys
from tesai.devices.models import Device, DeviceStatus
from tesai.devices.rollups import update_reliability
from tesai.devices.service import record_transition
from tesai.runtime import Runtime
from tesai.tasks import TaskContext
from tests.devices.conftest import Joined, Pool, beat, hardware
from tests.devices.proofs import WrongProducts, prove
from tests.fixtures.auth import MakeUser


async def _online(pool: Pool, client: httpx.AsyncClient, **hw: object) -> Joined:
    joined = await pool.joined(hardware(**hw))  # type: ignore[arg-type]
    assert joined.verify_args is not None
    done = await prove(client, joined.headers, joined.verify_args)
    assert done.outcome["status"] == "online"
    return joined


async def _set_status(runtime: Runtime, joined: Joined, status: DeviceStatus, reason: str) -> None:
    async with runtime.sessionmaker.begin() as s:
        device = await s.get(Device, joined.device_id)
        assert device is not None
        record_transition(s, device, status, reason)


async def test_list_and_price_bounds(pool: Pool, client: httpx.AsyncClient) -> None:
    a = await pool.create("a", price_per_gpu_hour_micro=2_500_000, region="eu-west", country="de")
    await pool.create("b")
    devices = (await client.get("/api/v1/provider/devices", headers=pool.provider)).json()
    assert [d["name"] for d in devices] == ["a", "b"]
    assert devices[0]["price_per_gpu_hour_micro"] == 2_500_000
    assert devices[0]["country"] == "DE"
    assert devices[1]["price_per_gpu_hour_micro"] == 1_000_000
    url = f"/api/v1/provider/devices/{a['device']['id']}/price"
    r = await client.put(url, json={"price_per_gpu_hour_micro": 3_000_000}, headers=pool.provider)
    assert r.json()["price_per_gpu_hour_micro"] == 3_000_000
    for bad in (1, 10**12):
        r = await client.put(url, json={"price_per_gpu_hour_micro": bad}, headers=pool.provider)
        assert r.status_code == 422
        assert r.json()["code"] == "price_out_of_bounds"
    r = await client.put(url, json={"price_per_gpu_hour_micro": -5}, headers=pool.provider)
    assert r.status_code == 422
    r = await client.post(
        "/api/v1/provider/devices",
        json={"name": "c", "price_per_gpu_hour_micro": 1},
        headers=pool.provider,
    )
    assert r.status_code == 422


async def test_disable_enable_and_remove(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    joined = await _online(pool, client)
    base = f"/api/v1/provider/devices/{joined.device_id}"
    assert (await client.post(f"{base}/disable", headers=pool.provider)).json()[
        "status"
    ] == "disabled"
    r = await client.post(f"{base}/enable", headers=pool.provider)
    assert r.json()["status"] == "online"

    await _set_status(runtime, joined, DeviceStatus.busy, "rented")
    r = await client.delete(base, headers=pool.provider)
    assert r.status_code == 409
    assert r.json()["code"] == "device_busy"
    assert (await client.post(f"{base}/disable", headers=pool.provider)).status_code == 409

    await _set_status(runtime, joined, DeviceStatus.online, "released")
    assert (await client.delete(base, headers=pool.provider)).status_code == 204
    assert (await client.get(base, headers=pool.provider)).status_code == 404
    # The agent's credential died with the device.
    hb = await client.post("/api/v1/agent/heartbeat", json=beat(), headers=joined.headers)
    assert hb.status_code == 401
    watched = dict(await runtime.cache.zrangebyscore(keys.LIVENESS, 0, float("inf")))
    assert str(joined.device_id) not in watched


async def test_public_pool_counts_gpus_by_model_and_region(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    cpu = await _online(pool, client, cores=4)
    gpu = await pool.joined(hardware(gpus=2, gpu_model="NVIDIA H100 80GB HBM3"))
    await _set_status(runtime, gpu, DeviceStatus.online, "verification_passed")
    gpus = [
        {"index": i, "uuid": f"GPU-{i}", "utilization_pct": u} for i, u in enumerate((20.0, 60.0))
    ]
    telemetry = {"cpu_percent": 5, "mem_used_bytes": 1, "mem_total_bytes": 2, "gpus": gpus}
    await client.post(
        "/api/v1/agent/heartbeat", json=beat(2, telemetry=telemetry), headers=gpu.headers
    )
    stats = (await client.get("/api/v1/public/pool")).json()
    assert stats["gpus_online"] == 2
    assert stats["gpu_devices_online"] == 1
    assert stats["cpu_devices_online"] == 1
    assert stats["cpu_cores_online"] == 4
    assert stats["avg_gpu_utilization_pct"] == 40.0
    [group] = stats["by_model_region"]
    assert group["gpu_model"] == "NVIDIA H100 80GB HBM3"
    assert group["gpus"] == 2
    # The CPU device has a price too (the landing page's "From" while only CPU is online), and
    # the fee a customer pays on top of listed prices is stated with them.
    async with runtime.sessionmaker() as s:
        cpu_device = await s.get(Device, cpu.device_id)
    assert cpu_device is not None
    assert stats["min_cpu_price_per_hour_micro"] == cpu_device.price_per_gpu_hour_micro
    assert stats["platform_fee_bps"] == runtime.settings.platform_fee_bps
    # Cached for a few seconds: cheap under load.
    assert await runtime.cache.get(keys.POOL) is not None


async def test_admin_lists_disables_and_reverifies(
    pool: Pool, client: httpx.AsyncClient, make_user: MakeUser, runtime: Runtime
) -> None:
    joined = await _online(pool, client)
    _, admin = await make_user(roles=("admin",))
    assert (await client.get("/api/v1/internal/devices", headers=pool.provider)).status_code == 403
    devices = (await client.get("/api/v1/internal/devices?status=online", headers=admin)).json()
    assert [d["id"] for d in devices] == [str(joined.device_id)]
    r = await client.post(f"/api/v1/internal/devices/{joined.device_id}/verify", headers=admin)
    assert r.status_code == 202
    await _set_status(runtime, joined, DeviceStatus.busy, "rented")
    r = await client.post(f"/api/v1/internal/devices/{joined.device_id}/disable", headers=admin)
    assert r.json()["status"] == "disabled"
    events = (
        await client.get(
            f"/api/v1/provider/devices/{joined.device_id}/events", headers=pool.provider
        )
    ).json()
    assert events[0]["reason"] == "disabled_by_admin"


async def test_a_device_an_admin_disabled_comes_back_only_by_an_admin(
    pool: Pool, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    joined = await _online(pool, client)
    _, admin = await make_user(roles=("admin",))
    device = f"/api/v1/provider/devices/{joined.device_id}"
    internal = f"/api/v1/internal/devices/{joined.device_id}"
    r = await client.post(f"{internal}/disable", headers=admin)
    assert r.json()["status"] == "disabled"
    # Its provider cannot undo an admin's decision, and nothing changes when it tries.
    r = await client.post(f"{device}/enable", headers=pool.provider)
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "disabled_by_admin"
    assert (await client.get(device, headers=pool.provider)).json()["device"]["status"] == (
        "disabled"
    )
    assert (await client.post(f"{internal}/enable", headers=pool.provider)).status_code == 403
    # An admin can; the device is verified and heartbeating, so it is back online.
    r = await client.post(f"{internal}/enable", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "online"
    events = (await client.get(f"{device}/events", headers=pool.provider)).json()
    assert events[0]["reason"] == "enabled_by_admin"
    # Enabling what is not disabled is a conflict, not a change.
    r = await client.post(f"{internal}/enable", headers=admin)
    assert r.status_code == 409
    # What its provider disabled, its provider enables.
    assert (await client.post(f"{device}/disable", headers=pool.provider)).status_code == 200
    r = await client.post(f"{device}/enable", headers=pool.provider)
    assert r.status_code == 200, r.text


async def test_rejected_device_can_be_verified_again(pool: Pool, client: httpx.AsyncClient) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    done = await prove(client, joined.headers, joined.verify_args, WrongProducts())
    assert done.outcome["status"] == "rejected"
    r = await client.post(
        f"/api/v1/provider/devices/{joined.device_id}/verify", headers=pool.provider
    )
    assert r.status_code == 202
    assert await pool.status(joined.device_id) == "verifying"


async def test_reliability_task(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    joined = await _online(pool, client)
    assert await update_reliability(ctx) == 1
    async with runtime.sessionmaker() as s:
        rel = await s.scalar(select(Device.reliability).where(Device.id == joined.device_id))
    assert rel is not None
    assert 0.0 <= rel <= 1.0
