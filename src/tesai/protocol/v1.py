"""Agent ⇄ control plane wire contract, version 1.

Every path lives under ``/api/v1/agent``:

- ``POST /join`` (no auth; the join token is the credential): ``JoinRequest`` → ``JoinResponse``.
- ``POST /heartbeat``: ``Heartbeat`` → ``HeartbeatResponse``; commands ride on the response.
- ``POST /credential/rotate``: → ``CredentialRotation`` (the old token stops working after it).
- Proof of compute (version 2, ``tesai.protocol.proof``), in this order:
  ``POST /verification/start``: ``ProofStart`` → ``ProofChallenge`` (the seed; the clock starts);
  ``POST /verification/commit``: ``ProofCommitment`` → ``ProofOpeningRequest`` (blocks to open);
  ``POST /verification/reveal``: ``ProofReveal`` → ``VerificationOutcome``.
  ``POST /verification`` (proof version 1: one message with self-chosen samples) answers 410
  ``proof_version_unsupported``.
- ``POST /leave``: ``LeaveRequest`` (SIGTERM drain) → 204.
- ``GET /bandwidth?bytes=N``: N bytes of payload, for the agent's bandwidth probe (optional).

Authenticated calls send ``Authorization: Bearer <device_token>``. Sizes are bounded so that an
oversized message fails validation (422) before anything is stored; free-form JSON fields are
``WireJson`` (depth and size limits, ``tesai.protocol.freeform``). Field names are binding;
later changes only add fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tesai.protocol.freeform import MAX_JSON_BYTES, MAX_JSON_DEPTH, json_limits

AGENT_API_PREFIX: Final = "/api/v1/agent"
JOIN_PATH: Final = f"{AGENT_API_PREFIX}/join"
HEARTBEAT_PATH: Final = f"{AGENT_API_PREFIX}/heartbeat"
ROTATE_PATH: Final = f"{AGENT_API_PREFIX}/credential/rotate"
VERIFICATION_PATH: Final = f"{AGENT_API_PREFIX}/verification"
PROOF_START_PATH: Final = f"{VERIFICATION_PATH}/start"
PROOF_COMMIT_PATH: Final = f"{VERIFICATION_PATH}/commit"
PROOF_REVEAL_PATH: Final = f"{VERIFICATION_PATH}/reveal"
LEAVE_PATH: Final = f"{AGENT_API_PREFIX}/leave"
BANDWIDTH_PATH: Final = f"{AGENT_API_PREFIX}/bandwidth"
HEALTHZ_PATH: Final = "/healthz"

DEVICE_TOKEN_PREFIX: Final = "tesai_dev_"  # noqa: S105 - a prefix, not a secret
DEFAULT_HEARTBEAT_INTERVAL_S: Final = 5.0

MAX_GPUS: Final = 64
MAX_NODES: Final = 16
MAX_STR: Final = 512
MAX_COMMANDS: Final = 64
MAX_ADDRESSES: Final = 32
MAX_PENDING_DEMAND: Final = 256
MAX_OPENINGS: Final = 64
MAX_BLOCK_B64: Final = 12 * 1024
"""An opened block is about 8 KiB (``tesai.protocol.proof.LEAF_TARGET_BYTES``), base64."""
MAX_PATH: Final = 40
MAX_PENDING_DEMAND_BYTES: Final = 64 * 1024
MAX_NODE_MESSAGE: Final = 2048
MAX_BANDWIDTH_BYTES: Final = 64 * 1024 * 1024

Str = Annotated[str, StringConstraints(max_length=MAX_STR)]
"""A wire string: at most 512 characters."""

WireJson = Annotated[
    dict[str, Any],
    json_limits(max_depth=MAX_JSON_DEPTH, max_bytes=MAX_JSON_BYTES, allow_nul=True),
]
"""Free-form JSON on the wire: bounded in depth and size (``tesai.protocol.freeform``). NUL
is let through: hardware probes and Ray output can hold it, and a refused heartbeat would
take a device offline; the server removes it before storing anything."""
PendingDemand = Annotated[
    list[dict[str, Any]],
    json_limits(max_depth=8, max_bytes=MAX_PENDING_DEMAND_BYTES, allow_nul=True),
]
"""Ray's resource shapes it cannot place (``[{"GPU": 1.0}, …]``): shallow by nature."""

DeviceStatus = Literal["ready", "draining", "error"]
CommandKind = Literal["join_cluster", "leave_cluster", "verify", "drain", "undrain"]
NodeRole = Literal["head", "worker"]
NodeStateName = Literal["starting", "running", "stopped", "failed"]
ProofKind = Literal["gpu", "cpu"]
ProbeStatus = Literal["ok", "degraded", "error"]
ConnectivityTier = Literal["t1", "t2", "t3", "t4", "t5"]

# Reason codes the agent reports (probe_reason, Heartbeat.reason, CommandResult.detail).
REASON_NVML_UNAVAILABLE: Final = "nvml_unavailable"
"""No NVML library on the host (no NVIDIA driver): a CPU device, not an error."""
REASON_DRIVER_MISMATCH: Final = "driver_mismatch"
"""NVML is present but cannot talk to the kernel driver (library/driver version mismatch)."""
REASON_NVML_ERROR: Final = "nvml_error"
"""NVML failed while reading a GPU; the spec is partial."""
REASON_NVIDIA_SMI_FALLBACK: Final = "nvidia_smi_fallback"
"""NVML failed but ``nvidia-smi`` answered; the GPU list comes from its CSV output."""
REASON_RAY_NODE_UNAVAILABLE: Final = "ray_node_unavailable"
"""The agent has no Ray node support installed; join/leave_cluster fail with this."""
REASON_UNKNOWN_COMMAND: Final = "unknown_command"
REASON_BAD_ARGS: Final = "bad_args"
REASON_NODE_EXITED: Final = "node_exited"
"""A container node's container exited (its exit code in ``NodeState.message``)."""
REASON_OOM_KILLED: Final = "oom_killed"
"""A container node was killed by the kernel for passing its memory limit."""
REASON_CONTAINER_RUNTIME_UNAVAILABLE: Final = "container_runtime_unavailable"
"""The agent runs nodes in containers but no Docker Engine (or Podman socket) answers."""
REASON_IMAGE_NOT_FOUND: Final = "image_not_found"
"""The node image for the cluster's Ray version is not on this host."""
REASON_IMAGE_RAY_MISMATCH: Final = "image_ray_mismatch"
"""The node image's Ray version is not the cluster's; the node is not started."""
REASON_CONTAINER_START_FAILED: Final = "container_start_failed"
"""The Docker Engine refused to create or start the node's container (its words follow)."""


class WireModel(BaseModel):
    """Base of every wire model: unknown fields are ignored so either side can add fields."""

    model_config = ConfigDict(extra="ignore")


# --- hardware ---------------------------------------------------------------------------------


class GpuSpec(WireModel):
    """One GPU as the probe sees it (NVML, or ``nvidia-smi`` as fallback)."""

    index: int = Field(ge=0, lt=MAX_GPUS)
    uuid: Str
    model: Str
    memory_total_bytes: int = Field(ge=0)
    compute_capability: Str | None = None
    """``"9.0"`` for an H100."""
    pcie_gen: int | None = None
    pcie_width: int | None = None
    mig_enabled: bool | None = None
    ecc_enabled: bool | None = None
    power_limit_w: float | None = None


class NetworkProbe(WireModel):
    """Round-trip time and bandwidth to the control plane, measured by the agent."""

    rtt_ms: float | None = Field(default=None, ge=0)
    bandwidth_mbps: float | None = Field(default=None, ge=0)
    """Download bandwidth from the control plane, in Mbit/s (None when not measured)."""
    tier: ConnectivityTier | None = None
    measured_at: datetime | None = None


class HardwareSpec(WireModel):
    """What the agent found on its host. A host without GPUs is a valid CPU device."""

    hostname: Str
    os: Str
    """``"Linux 6.8.0 (Ubuntu 24.04)"``-like text."""
    arch: Str
    cpu_model: Str
    cpu_cores: int = Field(ge=0)
    """Physical cores (logical when the physical count is unknown)."""
    cpu_threads: int = Field(ge=0)
    ram_bytes: int = Field(ge=0)
    disk_total_bytes: int = Field(ge=0)
    disk_free_bytes: int = Field(ge=0)
    addresses: list[Str] = Field(default_factory=list, max_length=MAX_ADDRESSES)
    gpus: list[GpuSpec] = Field(default_factory=list, max_length=MAX_GPUS)
    driver_version: Str | None = None
    cuda_version: Str | None = None
    """CUDA version the driver supports, e.g. ``"12.4"``."""
    probe_status: ProbeStatus = "ok"
    probe_reason: Str | None = None
    """A reason code (``nvml_unavailable``, ``driver_mismatch``, ...) when not plainly ``ok``."""
    probe_detail: Str | None = None
    net: NetworkProbe | None = None


# --- join and credentials ---------------------------------------------------------------------


class JoinRequest(WireModel):
    join_token: Str
    hardware: HardwareSpec
    agent_version: Str
    ray_version: Str | None = None
    agent_instance_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    """A random id the agent keeps in its state dir. A join retried with the same id and
    token (its first response was lost) gets a fresh credential instead of
    ``join_token_used``."""


class JoinResponse(WireModel):
    device_id: UUID
    device_token: Str
    token_expires_at: datetime
    heartbeat_interval_s: float = Field(default=DEFAULT_HEARTBEAT_INTERVAL_S, gt=0)


class CredentialRotation(WireModel):
    """Response of ``POST /credential/rotate``."""

    device_token: Str
    token_expires_at: datetime


# --- heartbeats ---------------------------------------------------------------------------------


class GpuTelemetry(WireModel):
    index: int = Field(ge=0, lt=MAX_GPUS)
    uuid: Str
    utilization_pct: float | None = Field(default=None, ge=0, le=100)
    memory_used_bytes: int | None = Field(default=None, ge=0)
    memory_total_bytes: int | None = Field(default=None, ge=0)
    temperature_c: float | None = None
    power_w: float | None = Field(default=None, ge=0)
    ecc_errors: int | None = Field(default=None, ge=0)
    """Volatile double-bit ECC errors since the driver loaded."""
    xid_errors: int | None = Field(default=None, ge=0)
    """Xid errors the agent has seen since it started."""


class Telemetry(WireModel):
    cpu_percent: float = Field(ge=0, le=100)
    mem_used_bytes: int = Field(ge=0)
    mem_total_bytes: int = Field(ge=0)
    gpus: list[GpuTelemetry] = Field(default_factory=list, max_length=MAX_GPUS)
    net: NetworkProbe | None = None
    """The agent's latest network probe (re-measured every 30 min; the bandwidth part needs the
    device credential, so the probe sent at join has RTT only): the source of the device's
    current connectivity tier."""


class NodeState(WireModel):
    """A Ray node this agent runs for a cluster."""

    cluster_id: UUID
    role: NodeRole
    state: NodeStateName
    reason: Str | None = None
    ray_address: Str | None = None
    dashboard_port: int | None = Field(default=None, ge=0, le=65535)
    alive_nodes: int | None = Field(default=None, ge=0)
    pending_demand: PendingDemand | None = Field(default=None, max_length=MAX_PENDING_DEMAND)
    idle_node_ids: list[Str] | None = Field(default=None, max_length=MAX_PENDING_DEMAND)
    message: Annotated[str, StringConstraints(max_length=MAX_NODE_MESSAGE)] | None = None
    """What happened in the words of what ran the node (a failed start: Ray's error lines and
    the tail of its logs, the cluster token redacted); ``reason`` stays the short code."""


class CommandResult(WireModel):
    id: UUID
    ok: bool
    detail: Str | None = None
    data: WireJson | None = None


class Heartbeat(WireModel):
    seq: int = Field(ge=0)
    sent_at: datetime
    status: DeviceStatus = "ready"
    reason: Str | None = None
    telemetry: Telemetry
    nodes: list[NodeState] = Field(default_factory=list, max_length=MAX_NODES)
    acked_commands: list[UUID] = Field(default_factory=list, max_length=MAX_COMMANDS)
    command_results: list[CommandResult] = Field(default_factory=list, max_length=MAX_COMMANDS)


class Command(WireModel):
    id: UUID
    kind: CommandKind
    args: WireJson = Field(default_factory=dict)


class HeartbeatResponse(WireModel):
    interval_s: float = Field(default=DEFAULT_HEARTBEAT_INTERVAL_S, gt=0)
    commands: list[Command] = Field(default_factory=list, max_length=MAX_COMMANDS)
    rotate_credential: bool = False


# --- proof of compute ---------------------------------------------------------------------------


class VerifyArgs(WireModel):
    """Arguments of a ``verify`` command. From proof version 2 on there is no seed here: the
    agent fetches it with ``POST /verification/start`` when it is ready to compute, and the
    server's clock runs from that answer."""

    challenge_id: UUID
    proof_version: int = Field(default=1, ge=1)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    """Proof version 1 only."""
    matrix_n: int = Field(ge=8, le=65536)
    iterations: int = Field(default=1, ge=1, le=1000)
    """Rounds (matrix products) of the proof."""
    declared_vram_bytes: int = Field(default=0, ge=0)


class ProofStart(WireModel):
    challenge_id: UUID


class ProofChallenge(WireModel):
    """Response of ``POST /verification/start``: what to compute. Asking again returns the same
    challenge; the deadline still counts from the first answer."""

    challenge_id: UUID
    proof_version: int = Field(ge=1)
    seed: int = Field(ge=0, lt=2**63)
    matrix_n: int = Field(ge=8, le=65536)
    rounds: int = Field(ge=1, le=1000)
    deadline_s: float = Field(gt=0)
    """Seconds from this answer to the commitment's arrival that the declared hardware is
    allowed (measured by the server; for the provider's logs)."""


class ProofTimings(WireModel):
    """What the agent measured on its own host: shown to people, never trusted."""

    gemm_s: float = Field(ge=0)
    """Wall time of all rounds (matrix products and committing)."""
    gflops: float = Field(ge=0)
    vram_alloc_ok: bool | None = None
    """Whether the declared VRAM could be allocated and touched (None on CPU)."""
    h2d_gbps: float | None = Field(default=None, ge=0)
    """Host→device copy bandwidth in GB/s (None on CPU)."""


class ProofReport(WireModel):
    """The agent's account of its run (self-reported)."""

    kind: ProofKind
    device_model: Str
    """GPU model name on ``gpu`` proofs, CPU model on ``cpu`` proofs."""
    engine: Str | None = None
    """``"numpy"`` or ``"torch"``."""
    timings: ProofTimings


Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A sha256 digest in lowercase hex."""


class ProofCommitment(WireModel):
    """``POST /verification/commit``: the Merkle root over every round's committed bits."""

    challenge_id: UUID
    root: Digest
    report: ProofReport


class BlockRef(WireModel):
    round: int = Field(ge=0, le=1000)
    block: int = Field(ge=0, le=65536)


class VerificationOutcome(WireModel):
    """The end of a proof: the device's status, and the reason code when it failed."""

    status: Str
    reason: Str | None = None


class ProofOpeningRequest(WireModel):
    """Response of ``POST /verification/commit``: the blocks to open, chosen after the root
    arrived. ``outcome`` is set instead when the commitment already decided the proof (too
    late, a replayed root, a refuted memory claim)."""

    challenge_id: UUID
    blocks: list[BlockRef] = Field(default_factory=list, max_length=MAX_OPENINGS)
    outcome: VerificationOutcome | None = None


class BlockOpening(WireModel):
    round: int = Field(ge=0, le=1000)
    block: int = Field(ge=0, le=65536)
    data: Annotated[str, StringConstraints(max_length=MAX_BLOCK_B64)]
    """The block's committed bytes, base64."""
    path: list[Digest] = Field(max_length=MAX_PATH)
    """Sibling hashes from the leaf up to the root."""


class ProofReveal(WireModel):
    """``POST /verification/reveal``: the requested blocks with their Merkle paths."""

    challenge_id: UUID
    openings: list[BlockOpening] = Field(max_length=MAX_OPENINGS)


class LeaveRequest(WireModel):
    reason: Str | None = None


# --- connectivity tiers -------------------------------------------------------------------------

CONNECTIVITY_TIERS: Final[tuple[tuple[ConnectivityTier, float], ...]] = (
    ("t1", 1600.0),
    ("t2", 1200.0),
    ("t3", 800.0),
    ("t4", 400.0),
    ("t5", 0.0),
)
"""Tiers by measured download bandwidth in Mbit/s, best first (io.net-style)."""


def connectivity_tier(bandwidth_mbps: float | None) -> ConnectivityTier | None:
    """The connectivity tier for a measured bandwidth, or None when it was not measured."""
    if bandwidth_mbps is None or bandwidth_mbps < 0:
        return None
    for tier, floor in CONNECTIVITY_TIERS:
        if bandwidth_mbps >= floor:
            return tier
    return None  # pragma: no cover - the last floor is 0
