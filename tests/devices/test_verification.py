"""Proof of compute through the agent API (commit, then reveal): honest devices pass, every
way of not doing the work is refused with its reason code, and failures cost reputation.

The attacks run here in-process against the app; ``test_proof_attacks.py`` runs them as real
agent processes against a real server, with real timing.
"""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from tesai.devices.models import Device, DeviceStatus, VerificationChallenge
from tesai.devices.rollups import update_reliability, verification_rounds
from tesai.devices.service import record_transition
from tesai.devices.verification import ChallengePlan, pick_blocks
from tesai.kit.time import utcnow
from tesai.protocol.v1 import (
    MAX_OPENINGS,
    BlockRef,
    ProofChallenge,
    ProofCommitment,
    ProofOpeningRequest,
    ProofStart,
)
from tesai.runtime import Runtime
from tesai.tasks import TaskContext
from tests.devices.conftest import GiB, Pool, beat, hardware
from tests.devices.proofs import (
    COMMIT,
    H100,
    REVEAL,
    START,
    FabricatedTimings,
    ReplayFirstProof,
    SampledEntriesOnly,
    WrongProducts,
    honest_cpu,
    prove,
)
from tests.fixtures.auth import MakeUser


def _json(body: Any, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "content": body.model_dump_json(),
        "headers": headers | {"content-type": "application/json"},
    }


async def _events(pool: Pool, device_id: uuid.UUID) -> list[dict[str, Any]]:
    r = await pool.client.get(f"/api/v1/provider/devices/{device_id}/events", headers=pool.provider)
    events: list[dict[str, Any]] = r.json()
    return events


async def _detail(pool: Pool, device_id: uuid.UUID) -> dict[str, Any]:
    r = await pool.client.get(f"/api/v1/provider/devices/{device_id}", headers=pool.provider)
    data: dict[str, Any] = r.json()
    return data


def backdate(runtime: Runtime, seconds: float) -> Any:
    """A ``before_commit`` hook: the seed went out ``seconds`` earlier than it did."""

    async def hook(challenge: ProofChallenge) -> None:
        async with runtime.sessionmaker.begin() as s:
            row = await s.get(VerificationChallenge, challenge.challenge_id)
            assert row is not None
            row.params = row.params | {"started_at": row.params["started_at"] - seconds}

    return hook


async def _reverify(pool: Pool, device_id: uuid.UUID, headers: dict[str, str]) -> dict[str, Any]:
    r = await pool.client.post(
        f"/api/v1/provider/devices/{device_id}/verify", headers=pool.provider
    )
    assert r.status_code == 202, r.text
    hb = await pool.client.post("/api/v1/agent/heartbeat", json=beat(7), headers=headers)
    args: dict[str, Any] = next(
        c["args"]
        for c in hb.json()["commands"]
        if c["kind"] == "verify" and c["args"]["challenge_id"] == r.json()["challenge_id"]
    )
    return args


async def test_honest_cpu_device_is_listed_with_the_score_the_server_measured(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    assert "seed" not in joined.verify_args or joined.verify_args["seed"] is None
    done = await prove(client, joined.headers, joined.verify_args)
    assert done.outcome == {"status": "online", "reason": None}
    detail = await _detail(pool, joined.device_id)
    last = detail["last_verification"]
    assert last["outcome"] == "passed"
    assert 0 < last["measured_s"] < last["deadline_s"]
    # The score is the server's: work over the time it measured, not what the agent said.
    work = 2 * done.challenge.matrix_n**3 * done.challenge.rounds
    assert detail["device"]["verified_score"] == last["score"]
    assert abs(last["score"] - work / last["measured_s"] / 1e9) < 0.01 * last["score"]
    assert last["reported"]["engine"] == "numpy"
    # The same challenge cannot be answered twice.
    commitment = ProofCommitment(
        challenge_id=done.challenge.challenge_id, root=done.work.root, report=done.work.report
    )
    again = await client.post(COMMIT, **_json(commitment, joined.headers))
    assert again.status_code == 409
    assert again.json()["code"] == "challenge_closed"


async def test_commitment_to_the_wrong_products_is_rejected(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    done = await prove(client, joined.headers, joined.verify_args, WrongProducts())
    assert done.outcome == {"status": "rejected", "reason": "proof_sample_mismatch"}
    events = await _events(pool, joined.device_id)
    assert events[0]["reason"] == "proof_sample_mismatch"
    assert events[0]["to_status"] == "rejected"
    assert "checked entries were wrong" in events[0]["message"]


async def test_host_computing_only_the_entries_it_opens_is_rejected(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    """The attack of issue 16: the seed no longer says which entries are checked, so the
    entries opened are right but are not what the commitment holds."""
    joined = await pool.joined(hardware(gpus=1, gpu_model=H100))
    assert joined.verify_args is not None
    done = await prove(client, joined.headers, joined.verify_args, SampledEntriesOnly())
    assert done.outcome == {"status": "rejected", "reason": "proof_commitment_mismatch"}
    assert await pool.status(joined.device_id) == "rejected"


async def test_commitment_after_the_deadline_is_rejected_whatever_the_agent_reports(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    joined = await pool.joined(hardware(gpus=1, gpu_model=H100))
    assert joined.verify_args is not None
    done = await prove(
        client,
        joined.headers,
        joined.verify_args,
        FabricatedTimings(),
        before_commit=backdate(runtime, 30.0),
    )
    assert done.outcome == {"status": "rejected", "reason": "proof_deadline_missed"}
    last = (await _detail(pool, joined.device_id))["last_verification"]
    assert last["measured_s"] >= 30 > last["deadline_s"]
    # Shown, not trusted: the fabricated figures are there for people to see.
    assert last["reported"]["timings"]["gflops"] == 40_000.0
    assert "self-reported, not trusted" in last["detail"]
    events = await _events(pool, joined.device_id)
    assert "40,000 GFLOP/s" in events[0]["message"]


async def test_replayed_proof_is_rejected(pool: Pool, client: httpx.AsyncClient) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    replayer = ReplayFirstProof()
    first = await prove(client, joined.headers, joined.verify_args, replayer)
    assert first.outcome["status"] == "online"
    args = await _reverify(pool, joined.device_id, joined.headers)
    again = await prove(client, joined.headers, args, replayer)
    assert again.outcome == {"status": "rejected", "reason": "proof_replayed"}


async def test_memory_nvml_does_not_see_is_refused(pool: Pool, client: httpx.AsyncClient) -> None:
    joined = await pool.joined(hardware(gpus=1, gpu_model=H100))
    assert joined.verify_args is not None
    assert joined.verify_args["declared_vram_bytes"] == 80 * GiB
    gpu = {"index": 0, "uuid": "GPU-0", "memory_total_bytes": 24 * GiB, "utilization_pct": 1}
    telemetry = {"cpu_percent": 1, "mem_used_bytes": 1, "mem_total_bytes": 2, "gpus": [gpu]}
    await client.post(
        "/api/v1/agent/heartbeat", json=beat(2, telemetry=telemetry), headers=joined.headers
    )
    done = await prove(client, joined.headers, joined.verify_args, SampledEntriesOnly())
    assert done.outcome == {"status": "rejected", "reason": "vram_mismatch"}
    assert (
        "NVML on the device reports 24 GiB" in (await _events(pool, joined.device_id))[0]["message"]
    )


async def test_memory_the_declared_model_never_has_is_refused(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    # hardware() declares 80 GiB per GPU; an RTX 4090 has 24 GB.
    joined = await pool.joined(hardware(gpus=1, gpu_model="NVIDIA GeForce RTX 4090"))
    assert joined.verify_args is not None
    done = await prove(client, joined.headers, joined.verify_args, SampledEntriesOnly())
    assert done.outcome == {"status": "rejected", "reason": "vram_mismatch"}


async def test_unknown_gpu_model_is_refused(pool: Pool, client: httpx.AsyncClient) -> None:
    joined = await pool.joined(hardware(gpus=1, gpu_model="Mystery GPU 9000"))
    assert joined.verify_args is not None
    done = await prove(client, joined.headers, joined.verify_args, SampledEntriesOnly())
    assert done.outcome == {"status": "rejected", "reason": "gpu_model_unknown"}


async def test_non_finite_timings_are_rejected(pool: Pool, client: httpx.AsyncClient) -> None:
    """Infinity passes the wire model's ``ge=0``; it must neither pass nor break storage."""
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    challenge_id = joined.verify_args["challenge_id"]
    r = await client.post(START, **_json(ProofStart(challenge_id=challenge_id), joined.headers))
    assert r.status_code == 200
    report = '{"kind": "cpu", "device_model": "x", "timings": {"gemm_s": 1, "gflops": Infinity}}'
    body = f'{{"challenge_id": "{challenge_id}", "root": "{"a" * 64}", "report": {report}}}'
    c = await client.post(
        COMMIT, content=body, headers={**joined.headers, "content-type": "application/json"}
    )
    assert c.status_code == 200, c.text
    assert c.json()["outcome"] == {"status": "rejected", "reason": "timing_implausible"}


async def test_steps_out_of_order_are_refused_and_retries_are_answered_the_same(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    challenge_id = joined.verify_args["challenge_id"]
    prover = honest_cpu()
    report = {"kind": "cpu", "device_model": "x", "timings": {"gemm_s": 1, "gflops": 1}}
    early = await client.post(
        COMMIT,
        json={"challenge_id": challenge_id, "root": "b" * 64, "report": report},
        headers=joined.headers,
    )
    assert (early.status_code, early.json()["code"]) == (409, "proof_out_of_order")
    reveal = await client.post(
        REVEAL, json={"challenge_id": challenge_id, "openings": []}, headers=joined.headers
    )
    assert (reveal.status_code, reveal.json()["code"]) == (409, "proof_out_of_order")
    first = await client.post(START, json={"challenge_id": challenge_id}, headers=joined.headers)
    second = await client.post(START, json={"challenge_id": challenge_id}, headers=joined.headers)
    assert first.json() == second.json()  # the same seed; the clock is not restarted
    work = prover.compute(ProofChallenge.model_validate(first.json()))
    body = {"challenge_id": challenge_id, "root": work.root, "report": report}
    c1 = await client.post(COMMIT, json=body, headers=joined.headers)
    c2 = await client.post(COMMIT, json=body, headers=joined.headers)
    assert c1.status_code == c2.status_code == 200
    assert c1.json() == c2.json()  # a retried commitment gets the same blocks
    other = await client.post(COMMIT, json=body | {"root": "c" * 64}, headers=joined.headers)
    assert (other.status_code, other.json()["code"]) == (409, "proof_out_of_order")
    # Another device cannot touch this challenge.
    stranger = await pool.joined(hardware(cores=2), name="stranger")
    r = await client.post(START, json={"challenge_id": challenge_id}, headers=stranger.headers)
    assert (r.status_code, r.json()["code"]) == (404, "challenge_not_found")


async def test_proof_version_1_results_are_refused(pool: Pool, client: httpx.AsyncClient) -> None:
    joined = await pool.joined(hardware(cores=2))
    r = await client.post(
        "/api/v1/agent/verification", json={"anything": 1}, headers=joined.headers
    )
    assert r.status_code == 410
    assert r.json()["code"] == "proof_version_unsupported"


async def test_a_new_challenge_supersedes_the_old_one(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    old = joined.verify_args
    new = await _reverify(pool, joined.device_id, joined.headers)
    stale = await client.post(
        START, json={"challenge_id": old["challenge_id"]}, headers=joined.headers
    )
    assert (stale.status_code, stale.json()["code"]) == (409, "challenge_closed")
    done = await prove(client, joined.headers, new)
    assert done.outcome["status"] == "online"


async def test_repeated_failures_lower_reliability_and_disable_the_device_for_review(
    pool: Pool, client: httpx.AsyncClient, make_user: MakeUser, ctx: TaskContext
) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    args = joined.verify_args
    reliabilities = []
    for attempt in range(3):
        if attempt:
            args = await _reverify(pool, joined.device_id, joined.headers)
        done = await prove(client, joined.headers, args, WrongProducts())
        assert done.outcome["reason"] == "proof_sample_mismatch"
        reliabilities.append((await _detail(pool, joined.device_id))["device"]["reliability"])
    assert reliabilities == [0.8, 0.64, 0.512]
    detail = (await _detail(pool, joined.device_id))["device"]
    assert (detail["status"], detail["status_reason"]) == ("disabled", "proof_failures_review")
    # The provider sees why, and cannot lift it.
    events = await _events(pool, joined.device_id)
    assert [e["reason"] for e in events[:2]] == ["proof_failures_review", "proof_sample_mismatch"]
    r = await client.post(
        f"/api/v1/provider/devices/{joined.device_id}/enable", headers=pool.provider
    )
    assert (r.status_code, r.json()["code"]) == (403, "disabled_by_admin")
    # The hourly recomputation keeps the penalty.
    await update_reliability(ctx)
    assert (await _detail(pool, joined.device_id))["device"]["reliability"] < 0.55
    # An admin lets it prove itself again: it is not listed until it does.
    _, admin = await make_user(roles=("admin",))
    r = await client.post(f"/api/v1/internal/devices/{joined.device_id}/enable", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "verifying"


async def test_a_rejected_device_disabled_and_enabled_must_prove_itself_again(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    assert (await prove(client, joined.headers, joined.verify_args)).outcome["status"] == "online"
    args = await _reverify(pool, joined.device_id, joined.headers)
    assert (await prove(client, joined.headers, args, WrongProducts())).outcome[
        "status"
    ] == "rejected"
    base = f"/api/v1/provider/devices/{joined.device_id}"
    assert (await client.post(f"{base}/disable", headers=pool.provider)).status_code == 200
    enabled = await client.post(f"{base}/enable", headers=pool.provider)
    assert enabled.json()["status"] == "verifying"


async def test_unanswered_challenges_fail_and_reverification_comes_at_random_times(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    silent = await pool.joined(hardware(cores=2), name="silent")
    honest = await pool.joined(hardware(cores=2), name="honest")
    recent = await pool.joined(hardware(cores=2), name="recent")
    for joined in (honest, recent):
        assert joined.verify_args is not None
        assert (await prove(client, joined.headers, joined.verify_args)).outcome["status"] == (
            "online"
        )
    interval = ctx.settings.verification_interval_s
    past = utcnow() - timedelta(days=1)
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(VerificationChallenge)
            .where(VerificationChallenge.completed_at.is_(None))
            .values(expires_at=past)
        )
        # Older than one and a half intervals: due for certain. Younger than half: never.
        await s.execute(
            update(Device)
            .where(Device.id == honest.device_id)
            .values(verified_at=utcnow() - timedelta(seconds=1.6 * interval))
        )
        await s.execute(
            update(Device)
            .where(Device.id == recent.device_id)
            .values(verified_at=utcnow() - timedelta(seconds=0.4 * interval))
        )
    assert await verification_rounds(ctx) == (1, 1)
    assert await pool.status(silent.device_id) == "rejected"
    assert (await _events(pool, silent.device_id))[0]["reason"] == "verification_timeout"
    # The due device got a challenge and stays listed meanwhile.
    assert await pool.status(honest.device_id) == "online"
    hb = await client.post("/api/v1/agent/heartbeat", json=beat(5), headers=honest.headers)
    assert [c["kind"] for c in hb.json()["commands"]] == ["verify"]
    assert await verification_rounds(ctx) == (0, 0)
    # An online device that ignores its re-verification is delisted like one that failed.
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(VerificationChallenge)
            .where(VerificationChallenge.completed_at.is_(None))
            .values(expires_at=past)
        )
    assert await verification_rounds(ctx) == (1, 0)
    assert await pool.status(honest.device_id) == "rejected"
    async with runtime.sessionmaker() as s:
        penalized = (
            await s.execute(
                select(VerificationChallenge.params["penalized"].astext).where(
                    VerificationChallenge.device_id == honest.device_id,
                    VerificationChallenge.outcome == "expired",
                )
            )
        ).scalar_one()
    assert penalized == "true"


def test_proofs_with_more_rounds_than_openings_stay_within_the_wire_limit() -> None:
    """Eight GPUs declared: hundreds of rounds, still at most ``MAX_OPENINGS`` blocks, each
    in a different round; with few rounds every round is opened."""
    rng = random.Random(3)
    many = ChallengePlan("gpu", 2048, 512, 3.0, 2.0, "h100 sxm", 494.7)
    picked = pick_blocks(many, 24, rng)
    assert len(picked) == MAX_OPENINGS
    assert len({t for t, _ in picked}) == MAX_OPENINGS
    ProofOpeningRequest(
        challenge_id=uuid.uuid4(), blocks=[BlockRef(round=t, block=b) for t, b in picked]
    )
    few = ChallengePlan("gpu", 2048, 5, 3.0, 2.0, "h100 sxm", 494.7)
    picked = pick_blocks(few, 24, rng)
    assert len(picked) == 24
    assert {t for t, _ in picked} == set(range(5))


async def test_a_device_rented_before_its_proof_starts_is_not_proved_nor_blamed(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    """A proof would compete with the customer's work: a rented device does not get the
    seed, and the challenge it could not answer expires without a failure."""
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    assert (await prove(client, joined.headers, joined.verify_args)).outcome["status"] == "online"
    args = await _reverify(pool, joined.device_id, joined.headers)
    async with runtime.sessionmaker.begin() as s:
        device = await s.get(Device, joined.device_id)
        assert device is not None
        record_transition(s, device, DeviceStatus.busy, "rented")
    r = await client.post(
        START, json={"challenge_id": args["challenge_id"]}, headers=joined.headers
    )
    assert (r.status_code, r.json()["code"]) == (409, "device_busy")
    async with runtime.sessionmaker.begin() as s:
        device = await s.get(Device, joined.device_id)
        assert device is not None
        record_transition(s, device, DeviceStatus.online, "released")
        await s.execute(
            update(VerificationChallenge)
            .where(VerificationChallenge.completed_at.is_(None))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert await verification_rounds(ctx) == (1, 0)
    detail = await _detail(pool, joined.device_id)
    assert detail["device"]["status"] == "online"
    assert detail["device"]["reliability"] == 1.0
    assert detail["last_verification"]["reason"] == "device_rented"


async def test_a_challenge_from_before_the_upgrade_is_replaced_without_blame(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime, ctx: TaskContext
) -> None:
    joined = await pool.joined(hardware(cores=2))
    assert joined.verify_args is not None
    async with runtime.sessionmaker.begin() as s:
        row = await s.get(VerificationChallenge, uuid.UUID(joined.verify_args["challenge_id"]))
        assert row is not None
        row.params = {"matrix_n": 256, "iterations": 3, "kind": "cpu"}  # proof version 1
        row.expires_at = utcnow() - timedelta(seconds=1)
    assert await verification_rounds(ctx) == (1, 0)
    detail = await _detail(pool, joined.device_id)
    assert detail["device"]["status"] == "verifying"
    assert detail["device"]["reliability"] == 1.0
    hb = await client.post("/api/v1/agent/heartbeat", json=beat(3), headers=joined.headers)
    [args] = [c["args"] for c in hb.json()["commands"] if c["kind"] == "verify"]
    assert args["proof_version"] == 2
    assert (await prove(client, joined.headers, args)).outcome["status"] == "online"
