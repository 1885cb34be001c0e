"""Proof of compute end to end through the agent API: honest CPU accepted, spoofs rejected."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import update

from tesai.devices.models import Device, VerificationChallenge
from tesai.devices.rollups import verification_rounds
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tesai.tasks import TaskContext
from tests.devices.conftest import GiB, Pool, beat, hardware
from tests.devices.proofs import agent_cpu_proof, honest_result


async def _submit(
    client: httpx.AsyncClient, headers: dict[str, str], body: object
) -> httpx.Response:
    return await client.post("/api/v1/agent/verification", json=body, headers=headers)


async def test_honest_cpu_device_is_listed_with_its_score(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    result = agent_cpu_proof(joined.verify_args)
    r = await _submit(client, joined.headers, result.model_dump(mode="json"))
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "online", "reason": None}
    detail = (
        await client.get(f"/api/v1/provider/devices/{joined.device_id}", headers=pool.provider)
    ).json()
    assert detail["device"]["verified_score"] > 0
    assert detail["last_verification"]["outcome"] == "passed"
    # The same challenge cannot be answered twice.
    again = await _submit(client, joined.headers, result.model_dump(mode="json"))
    assert again.status_code == 409
    assert again.json()["code"] == "challenge_closed"


async def test_wrong_digest_is_rejected(pool: Pool, client: httpx.AsyncClient) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    body = honest_result(joined.verify_args).model_dump(mode="json")
    body["digest"] = "0" * 64
    r = await _submit(client, joined.headers, body)
    assert r.json() == {"status": "rejected", "reason": "proof_digest_mismatch"}
    events = (
        await client.get(
            f"/api/v1/provider/devices/{joined.device_id}/events", headers=pool.provider
        )
    ).json()
    assert events[0]["reason"] == "proof_digest_mismatch"
    assert events[0]["to_status"] == "rejected"


async def test_wrong_sample_is_rejected(pool: Pool, client: httpx.AsyncClient) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    body = honest_result(joined.verify_args).model_dump(mode="json")
    body["sample"] = [x + 1 for x in body["sample"]]
    r = await _submit(client, joined.headers, body)
    assert r.json() == {"status": "rejected", "reason": "proof_sample_mismatch"}


async def test_spoofed_gpu_model_is_rejected(pool: Pool, client: httpx.AsyncClient) -> None:
    """An agent declaring an H100 that computes the proof right, but at CPU speed."""
    joined = await pool.joined(hardware(gpus=1, gpu_model="NVIDIA H100 80GB HBM3"))
    assert joined.verify_args is not None
    assert joined.verify_args["declared_vram_bytes"] == 80 * GiB
    result = honest_result(joined.verify_args, kind="gpu", device_model="NVIDIA H100 80GB HBM3")
    r = await _submit(client, joined.headers, result.model_dump(mode="json"))
    assert r.json() == {"status": "rejected", "reason": "gpu_model_mismatch"}
    events = (
        await client.get(
            f"/api/v1/provider/devices/{joined.device_id}/events", headers=pool.provider
        )
    ).json()
    assert "H100" in events[0]["message"]
    assert "GFLOP/s" in events[0]["message"]


async def test_gpu_memory_in_telemetry_must_match_the_declared_model(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined(hardware(gpus=1, gpu_model="NVIDIA H100 80GB HBM3"))
    assert joined.verify_args is not None
    gpu = {"index": 0, "uuid": "GPU-0", "memory_total_bytes": 16 * GiB, "utilization_pct": 1}
    telemetry = {"cpu_percent": 1, "mem_used_bytes": 1, "mem_total_bytes": 2, "gpus": [gpu]}
    await client.post(
        "/api/v1/agent/heartbeat", json=beat(2, telemetry=telemetry), headers=joined.headers
    )
    result = honest_result(joined.verify_args, kind="gpu", device_model="NVIDIA H100 80GB HBM3")
    r = await _submit(client, joined.headers, result.model_dump(mode="json"))
    assert r.json()["reason"] == "gpu_model_mismatch"


async def test_inconsistent_timings_are_rejected(pool: Pool, client: httpx.AsyncClient) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    body = honest_result(joined.verify_args).model_dump(mode="json")
    body["timings"]["gflops"] = body["timings"]["gflops"] * 10
    r = await _submit(client, joined.headers, body)
    assert r.json() == {"status": "rejected", "reason": "timing_implausible"}


async def test_on_demand_and_expired_verification(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    # Passing first.
    result = agent_cpu_proof(joined.verify_args)
    await _submit(client, joined.headers, result.model_dump(mode="json"))
    r = await client.post(
        f"/api/v1/provider/devices/{joined.device_id}/verify", headers=pool.provider
    )
    assert r.status_code == 202
    hb = await client.post("/api/v1/agent/heartbeat", json=beat(9), headers=joined.headers)
    kinds = {c["args"].get("challenge_id") for c in hb.json()["commands"] if c["kind"] == "verify"}
    assert r.json()["challenge_id"] in kinds
    # The device stays listed while re-verifying.
    assert await pool.status(joined.device_id) == "online"


async def test_non_finite_timings_are_rejected(pool: Pool, client: httpx.AsyncClient) -> None:
    """Infinity passes the wire model's `ge=0`; it must not slip through the timing checks."""
    joined = await pool.joined(hardware(gpus=1, gpu_model="NVIDIA H100 80GB HBM3"))
    assert joined.verify_args is not None
    result = honest_result(joined.verify_args, kind="gpu", device_model="NVIDIA H100 80GB HBM3")
    body = result.model_dump_json().replace(
        f'"gflops":{result.timings.gflops}', '"gflops":Infinity'
    )
    assert "Infinity" in body
    r = await client.post(
        "/api/v1/agent/verification",
        content=body,
        headers={**joined.headers, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "rejected", "reason": "timing_implausible"}


async def test_unanswered_challenge_times_out_and_periodic_rounds_reissue(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    silent = await pool.joined(hardware(cores=2), name="silent")
    honest = await pool.joined(hardware(cores=2), name="honest")
    assert honest.verify_args is not None
    result = agent_cpu_proof(honest.verify_args)
    await _submit(client, honest.headers, result.model_dump(mode="json"))
    past = utcnow() - timedelta(days=1)
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(VerificationChallenge)
            .where(VerificationChallenge.completed_at.is_(None))
            .values(expires_at=past)
        )
        await s.execute(
            update(Device).where(Device.id == honest.device_id).values(verified_at=past)
        )
    assert await verification_rounds(ctx) == (1, 1)
    assert await pool.status(silent.device_id) == "rejected"
    events = (
        await client.get(
            f"/api/v1/provider/devices/{silent.device_id}/events", headers=pool.provider
        )
    ).json()
    assert events[0]["reason"] == "verification_timeout"
    # The verified device got a periodic challenge and stays listed meanwhile.
    assert await pool.status(honest.device_id) == "online"
    hb = await client.post("/api/v1/agent/heartbeat", json=beat(5), headers=honest.headers)
    assert [c["kind"] for c in hb.json()["commands"]] == ["verify"]
    # Running the round again issues nothing new.
    assert await verification_rounds(ctx) == (0, 0)


async def test_a_new_challenge_supersedes_the_old_one(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    old = joined.verify_args
    r = await client.post(
        f"/api/v1/provider/devices/{joined.device_id}/verify", headers=pool.provider
    )
    assert r.status_code == 202
    stale = await _submit(client, joined.headers, agent_cpu_proof(old).model_dump(mode="json"))
    assert stale.status_code == 409
    hb = await client.post("/api/v1/agent/heartbeat", json=beat(5), headers=joined.headers)
    new = [
        c["args"]
        for c in hb.json()["commands"]
        if c["args"]["challenge_id"] == r.json()["challenge_id"]
    ]
    ok = await _submit(client, joined.headers, agent_cpu_proof(new[0]).model_dump(mode="json"))
    assert ok.json()["status"] == "online"
