"""The agent API (``/api/v1/agent``): device credentials only, see ``tesai.protocol.v1``."""

from __future__ import annotations

import os
import time
from typing import Final

from fastapi import APIRouter, Query, Request, Response, status

from tesai.auth.deps import RuntimeDep, request_ip
from tesai.db import SessionDep
from tesai.devices import agents, challenges
from tesai.devices.deps import CurrentDevice, RenewingDevice, forget_after_commit
from tesai.devices.errors import ProofVersionUnsupported
from tesai.protocol.v1 import (
    CredentialRotation,
    Heartbeat,
    HeartbeatResponse,
    JoinRequest,
    JoinResponse,
    LeaveRequest,
    ProofChallenge,
    ProofCommitment,
    ProofOpeningRequest,
    ProofReveal,
    ProofStart,
    VerificationOutcome,
)

router = APIRouter(prefix="/agent", tags=["agent"])

_BLOCK: Final = os.urandom(1 << 20)
"""1 MiB of random bytes, repeated for bandwidth probes (incompressible, generated once)."""


@router.post("/join")
async def join(body: JoinRequest, session: SessionDep, runtime: RuntimeDep) -> JoinResponse:
    """Trade a one-time join token for a device credential (the token is the credential)."""
    response = await agents.join(session, runtime.cache, runtime.settings, body)
    forget_after_commit(session, runtime)  # the device's earlier credentials are revoked
    return response


@router.post("/heartbeat")
async def heartbeat(
    body: Heartbeat, device: CurrentDevice, runtime: RuntimeDep, request: Request
) -> HeartbeatResponse:
    """Liveness and telemetry; pending commands ride on the response until acknowledged.

    The hot path: it writes only to the cache and opens a database session only when the
    device has commands pending or the beat acknowledges some. The address the beat came
    from is recorded with it (where the control plane reaches this device's Ray head).
    """
    return await agents.heartbeat(
        runtime.sessionmaker, runtime.cache, runtime.settings, device, body, request_ip(request)
    )


@router.post("/credential/rotate")
async def rotate_credential(
    device: RenewingDevice, session: SessionDep, runtime: RuntimeDep
) -> CredentialRotation:
    """A new device token; the one used for this call stops working.

    Also accepts a token that expired recently (``device_token_renew_grace_s``), so an agent
    that was off for a while needs no new join token.
    """
    rotation = await agents.rotate_credential(session, runtime.cache, runtime.settings, device)
    forget_after_commit(session, runtime, device.token_hash)
    return rotation


@router.post("/verification", include_in_schema=False)
async def verification_v1(device: CurrentDevice) -> None:
    """Proof of compute version 1 (one message with samples the agent chose): retired."""
    raise ProofVersionUnsupported(
        "This agent speaks proof-of-compute version 1, which is no longer accepted: upgrade it"
    )


@router.post("/verification/start")
async def verification_start(
    body: ProofStart, device: CurrentDevice, session: SessionDep
) -> ProofChallenge:
    """The seed of one of this device's challenges; the deadline counts from this answer."""
    return await challenges.start(session, device, body.challenge_id)


@router.post("/verification/commit")
async def verification_commit(
    body: ProofCommitment, device: CurrentDevice, session: SessionDep, runtime: RuntimeDep
) -> ProofOpeningRequest:
    """The Merkle root of the computed products; answers with the blocks to open."""
    received_at = time.time()
    return await challenges.commit(
        session, runtime.cache, runtime.settings, device, body, received_at
    )


@router.post("/verification/reveal")
async def verification_reveal(
    body: ProofReveal, device: CurrentDevice, session: SessionDep, runtime: RuntimeDep
) -> VerificationOutcome:
    """The requested blocks with their Merkle paths; answers with the verdict."""
    return await challenges.reveal(session, runtime.settings, device, body)


@router.post("/leave", status_code=status.HTTP_204_NO_CONTENT)
async def leave(
    device: CurrentDevice,
    session: SessionDep,
    runtime: RuntimeDep,
    body: LeaveRequest | None = None,
) -> Response:
    """The agent is shutting down cleanly (SIGTERM): the device goes offline now."""
    await agents.leave(session, runtime.cache, device, body.reason if body else None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/bandwidth")
async def bandwidth(
    device: CurrentDevice,
    runtime: RuntimeDep,
    size: int = Query(default=1 << 20, ge=0, alias="bytes"),
) -> Response:
    """``bytes`` bytes of incompressible payload (capped) for the agent's bandwidth probe."""
    n = min(size, runtime.settings.bandwidth_probe_max_bytes)
    reps = n // len(_BLOCK) + 1
    return Response(content=(_BLOCK * reps)[:n], media_type="application/octet-stream")
