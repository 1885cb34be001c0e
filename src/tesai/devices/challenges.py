"""The proof-of-compute exchange, server side: start, commit, reveal, and what a verdict does
to the device.

A challenge row (``VerificationChallenge``) carries the whole exchange in ``params``: the plan
(``tesai.devices.verification.ChallengePlan``), then ``started_at`` (server clock, when the
seed went out), ``root``, ``measured_s`` and the agent's self-reported ``reported`` figures,
the ``blocks`` asked for, and on failure a ``detail`` people read. The seed is a column, and
leaves the server only in the answer to ``start``, which a rented device does not get (a proof
would compete with the customer's work).

Failures all go through ``record_failure``: an offence (``tesai.devices.reputation``) that
makes the device ``rejected`` with the reason code, lowers its reliability and counts toward an
admin's review (``proof_failures_review`` when only proofs failed); and its last accepted proof
stops counting (``verified_at`` cleared, so enabling it again means proving again). A device
that was not answering for itself at the time (rented, draining, offline, disabled) gets the
failure recorded on the challenge only: customer work skews its timing.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.devices import keys
from tesai.devices.deps import DeviceAuth
from tesai.devices.errors import (
    ChallengeClosed,
    ChallengeNotFound,
    DeviceBusy,
    ProofOutOfOrder,
    ProofVersionUnsupported,
)
from tesai.devices.models import Device, DeviceEvent, DeviceStatus, VerificationChallenge
from tesai.devices.reputation import record_offence
from tesai.devices.service import get_device, issue_challenge, record_transition
from tesai.devices.verification import (
    ChallengePlan,
    Verdict,
    check_openings,
    judge_commitment,
    pick_blocks,
    pick_checks,
)
from tesai.kit.cache import Cache
from tesai.kit.time import utcnow
from tesai.protocol.proof import PROOF_VERSION
from tesai.protocol.v1 import (
    BlockRef,
    ProofChallenge,
    ProofCommitment,
    ProofOpeningRequest,
    ProofReveal,
    VerificationOutcome,
)
from tesai.settings import Settings

_rng = random.SystemRandom()
"""Blocks and positions to check come from the OS's CSPRNG: the agent must not predict them."""


async def _own_challenge(
    session: AsyncSession, auth: DeviceAuth, challenge_id: uuid.UUID, *, lock: bool
) -> VerificationChallenge:
    """The device's open challenge; ``ChallengeNotFound`` (also another device's),
    ``ChallengeClosed``, ``ProofVersionUnsupported`` (a challenge of an older protocol)."""
    stmt = select(VerificationChallenge).where(VerificationChallenge.id == challenge_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    challenge = (await session.execute(stmt)).scalar_one_or_none()
    if challenge is None or challenge.device_id != auth.device_id:
        raise ChallengeNotFound("No such challenge for this device")
    if challenge.completed_at is not None:
        raise ChallengeClosed(f"This challenge is already {challenge.outcome}")
    if challenge.params.get("proof_version") != PROOF_VERSION:
        raise ProofVersionUnsupported(
            "This challenge uses an older proof-of-compute protocol; a new one will follow"
        )
    return challenge


async def start(session: AsyncSession, auth: DeviceAuth, challenge_id: uuid.UUID) -> ProofChallenge:
    """Hand out the seed and start the clock (once: asking again returns the same challenge
    and does not restart it)."""
    challenge = await _own_challenge(session, auth, challenge_id, lock=True)
    params = dict(challenge.params)
    if "started_at" not in params:
        device = await get_device(session, auth.device_id)
        if device.status in (DeviceStatus.busy, DeviceStatus.draining):
            # A proof would compete with the customer's work for the GPU and its memory. The
            # challenge expires without blame (``expire``); a new one follows the rental.
            raise DeviceBusy("The device is rented; its proof of compute waits until it is free")
        params["started_at"] = time.time()
        challenge.params = params
        await session.flush()
    plan = ChallengePlan.from_params(params)
    return ProofChallenge(
        challenge_id=challenge.id,
        proof_version=PROOF_VERSION,
        seed=challenge.seed,
        matrix_n=plan.n,
        rounds=plan.rounds,
        deadline_s=plan.deadline_s,
    )


async def _root_seen_before(
    session: AsyncSession, device_id: uuid.UUID, challenge_id: uuid.UUID, root: str
) -> bool:
    found = await session.scalar(
        select(VerificationChallenge.id)
        .where(
            VerificationChallenge.device_id == device_id,
            VerificationChallenge.id != challenge_id,
            VerificationChallenge.params["root"].astext == root,
        )
        .limit(1)
    )
    return found is not None


async def _telemetry_gpu_memory(cache: Cache, device_id: uuid.UUID) -> list[int] | None:
    """GPU memory totals NVML reported in the device's latest heartbeat."""
    latest = await cache.get(keys.telemetry(str(device_id)))
    if latest is None:
        return None
    gpus = orjson.loads(latest).get("telemetry", {}).get("gpus", [])
    return [int(g["memory_total_bytes"]) for g in gpus if g.get("memory_total_bytes")] or None


async def commit(
    session: AsyncSession,
    cache: Cache,
    settings: Settings,
    auth: DeviceAuth,
    body: ProofCommitment,
    received_at: float,
) -> ProofOpeningRequest:
    """Take the commitment, measured against the clock started by ``start``; answer with the
    blocks to open, chosen now, or with the outcome when the commitment already fails.

    ``received_at``: server time the request arrived. A retried commit with the same root gets
    the same blocks; another root is ``ProofOutOfOrder``, as is a commit before ``start``.
    """
    challenge = await _own_challenge(session, auth, body.challenge_id, lock=True)
    params: dict[str, Any] = dict(challenge.params)
    if "started_at" not in params:
        raise ProofOutOfOrder("Ask for the challenge (POST /verification/start) first")
    if "root" in params:
        if params["root"] != body.root or "blocks" not in params:
            raise ProofOutOfOrder("This challenge already has another commitment")
        return ProofOpeningRequest(
            challenge_id=challenge.id,
            blocks=[BlockRef(round=t, block=b) for t, b in params["blocks"]],
        )
    device = await get_device(session, auth.device_id, lock=True)
    plan = ChallengePlan.from_params(params)
    measured = received_at - float(params["started_at"])
    verdict = judge_commitment(
        plan,
        measured_s=measured,
        report=body.report,
        replayed=await _root_seen_before(session, device.id, challenge.id, body.root),
        declared_gpu_model=device.gpu_model,
        declared_vram_bytes=device.vram_bytes_per_gpu,
        telemetry_gpu_memory=await _telemetry_gpu_memory(cache, device.id),
        cpu_cores=device.cpu_cores,
    )
    params.update(
        root=body.root,
        measured_s=round(measured, 4),
        # Shown to people, never used to decide (non-finite numbers become null).
        reported=orjson.loads(body.report.model_dump_json()),
    )
    challenge.params = params
    if verdict is not None:
        await apply_verdict(session, settings, device, challenge, verdict)
        return ProofOpeningRequest(
            challenge_id=challenge.id,
            outcome=VerificationOutcome(status=device.status.value, reason=verdict.reason),
        )
    blocks = pick_blocks(plan, settings.proof_sample_blocks, _rng)
    challenge.params = params | {"blocks": [list(b) for b in blocks]}
    await session.flush()
    return ProofOpeningRequest(
        challenge_id=challenge.id, blocks=[BlockRef(round=t, block=b) for t, b in blocks]
    )


async def reveal(
    session: AsyncSession, settings: Settings, auth: DeviceAuth, body: ProofReveal
) -> VerificationOutcome:
    """Check the opened blocks against the root and the seed; the device goes ``online`` or
    is ``rejected``. Raises ``ProofOutOfOrder`` before a commitment."""
    challenge = await _own_challenge(session, auth, body.challenge_id, lock=False)
    params = challenge.params
    if "blocks" not in params:
        raise ProofOutOfOrder("Commit (POST /verification/commit) before revealing")
    plan = ChallengePlan.from_params(params)
    blocks = [(int(t), int(b)) for t, b in params["blocks"]]
    checks = pick_checks(plan, blocks, settings.proof_checked_entries, _rng)
    # CPU work (hashes and O(n) recomputations): off the event loop, before any lock.
    verdict = await asyncio.to_thread(
        check_openings,
        challenge.seed,
        plan,
        str(params["root"]),
        float(params["measured_s"]),
        body.openings,
        checks,
    )
    challenge = await _own_challenge(session, auth, body.challenge_id, lock=True)
    device = await get_device(session, auth.device_id, lock=True)
    await apply_verdict(session, settings, device, challenge, verdict)
    return VerificationOutcome(
        status=device.status.value,
        reason=challenge.reason if challenge.outcome != "passed" else None,
    )


async def apply_verdict(
    session: AsyncSession,
    settings: Settings,
    device: Device,
    challenge: VerificationChallenge,
    verdict: Verdict,
) -> None:
    """Close the challenge with ``verdict`` and apply it to the (locked) device."""
    now = utcnow()
    challenge.completed_at = now
    if now > challenge.expires_at:
        challenge.outcome = "expired"
        await record_failure(
            session, settings, device, challenge, "verification_timeout", "Answered too late."
        )
    elif verdict.passed:
        challenge.outcome = "passed"
        challenge.score = verdict.score
        device.verified_score = verdict.score
        device.verified_at = now
        if device.status is DeviceStatus.verifying:
            record_transition(
                session,
                device,
                DeviceStatus.online,
                "verification_passed",
                f"{verdict.score:,.1f} GFLOP/s measured by the control plane.",
            )
    else:
        assert verdict.reason is not None
        challenge.outcome = "failed"
        await record_failure(session, settings, device, challenge, verdict.reason, verdict.detail)
    await session.flush()


async def expire(
    session: AsyncSession,
    cache: Cache,
    settings: Settings,
    device: Device,
    challenge: VerificationChallenge,
) -> None:
    """Close a challenge nobody answered in time (``device`` locked): a failed proof, unless
    it was never started and the device was rented meanwhile (the agent may not prove then),
    or it belongs to an older protocol (issued before an upgrade: a device still verifying
    gets a new one)."""
    challenge.completed_at = utcnow()
    challenge.outcome = "expired"
    if challenge.params.get("proof_version") != PROOF_VERSION:
        challenge.reason = "proof_version_unsupported"
        if device.status is DeviceStatus.verifying:
            await issue_challenge(session, cache, settings, device, trigger="resume")
        return
    if "started_at" not in challenge.params:
        rented = await session.scalar(
            select(DeviceEvent.id)
            .where(
                DeviceEvent.device_id == device.id,
                DeviceEvent.to_status == DeviceStatus.busy.value,
                DeviceEvent.at >= challenge.created_at,
            )
            .limit(1)
        )
        if rented is not None:
            challenge.reason = "device_rented"
            return
    await record_failure(
        session,
        settings,
        device,
        challenge,
        "verification_timeout",
        f"No answer within {settings.verification_timeout_s:g} s.",
    )


async def record_failure(
    session: AsyncSession,
    settings: Settings,
    device: Device,
    challenge: VerificationChallenge,
    reason: str,
    detail: str,
) -> None:
    """A failed proof (see the module doc). ``device`` must be locked."""
    challenge.reason = reason
    params = dict(challenge.params) | {"detail": detail[:500]}
    challenge.params = params
    if device.status not in (DeviceStatus.verifying, DeviceStatus.online):
        return
    challenge.params = params | {"penalized": True}
    device.verified_at = None
    await record_offence(session, settings, device, reason, detail, status=DeviceStatus.rejected)
