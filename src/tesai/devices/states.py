"""The device state machine as data: which moves are allowed and the reason codes for them.

Pure: no I/O. Services call ``check_transition`` before every status change and store the
returned reason and message as a ``DeviceEvent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tesai.devices.models import DeviceStatus as S

LIVE_STATES: Final = frozenset({S.pending, S.verifying, S.online, S.busy, S.draining})
"""States whose devices the sweeper watches for missed heartbeats."""

LISTED_STATES: Final = frozenset({S.online})
"""States whose devices are offered in the pool."""

ALLOWED: Final[dict[S, frozenset[S]]] = {
    S.pending: frozenset({S.verifying, S.offline, S.disabled}),
    S.verifying: frozenset({S.online, S.rejected, S.offline, S.disabled, S.pending}),
    S.online: frozenset({S.busy, S.verifying, S.offline, S.disabled, S.rejected, S.drained}),
    S.busy: frozenset({S.online, S.offline, S.disabled, S.rejected, S.draining}),
    S.offline: frozenset({S.online, S.verifying, S.pending, S.disabled, S.rejected, S.drained}),
    S.disabled: frozenset({S.pending, S.verifying, S.online, S.offline}),
    S.rejected: frozenset({S.verifying, S.disabled, S.pending}),
    # Draining: rented nodes finish (release leaves it draining); none are placed on it.
    S.draining: frozenset({S.drained, S.busy, S.online, S.offline, S.disabled, S.rejected}),
    S.drained: frozenset({S.online, S.verifying, S.pending, S.offline, S.disabled}),
}

REASONS: Final[dict[str, str]] = {
    "created": "The device was created; waiting for its agent to join.",
    "agent_joined": "The agent joined; proof of compute is running.",
    "verification_passed": "Proof of compute passed; the device is listed.",
    "verification_requested": "Proof of compute was requested again.",
    "proof_digest_mismatch": "The proof-of-compute digest did not match the challenge.",
    "proof_sample_mismatch": "Sampled entries of the proof result were wrong.",
    "gpu_model_mismatch": "The measured hardware does not match the declared GPU model.",
    "gpu_model_unknown": "The declared GPU model is not in the reference table.",
    "cpu_mismatch": "The measured CPU does not match the declared hardware.",
    "timing_implausible": "The benchmark timings are impossible for this hardware.",
    "vram_alloc_failed": "The declared GPU memory could not be allocated.",
    "verification_timeout": "No proof-of-compute result arrived in time.",
    "proof_deadline_missed": (
        "The proof-of-compute commitment arrived later than the declared hardware allows."
    ),
    "proof_commitment_mismatch": (
        "An opened block of the proof did not match what the agent had committed to."
    ),
    "proof_replayed": "The proof of compute repeated an earlier proof.",
    "vram_mismatch": "The declared GPU memory is more than the device has.",
    "proof_failures_review": (
        "Proofs of compute failed repeatedly; an admin must review the device before it "
        "can be enabled."
    ),
    "offences_review": (
        "Checks of the device failed repeatedly (proofs of compute, canary tasks, nodes the "
        "control plane did not find); an admin must review it before it can be enabled."
    ),
    "node_unverified": (
        "A Ray node the agent reported running was not in its head's Ray state as the "
        "control plane read it."
    ),
    "node_resource_shared": (
        "One Ray node claimed the node resources of several cluster nodes: none of them counts "
        "as alive."
    ),
    "node_address_mismatch": (
        "The Ray node claiming this device's cluster node runs at an address the device's "
        "agent does not connect from."
    ),
    "head_address_refused": (
        "The control plane does not connect to the address this device's head would be reached at."
    ),
    "canary_failed": (
        "A canary task did not return the value only a run on this device's node can produce."
    ),
    "missed_heartbeats": "No heartbeats arrived within the grace period.",
    "heartbeat_resumed": "Heartbeats arrived again.",
    "agent_left": "The agent shut down cleanly.",
    "disabled_by_provider": "The provider disabled the device.",
    "disabled_by_admin": "An admin disabled the device.",
    "enabled_by_provider": "The provider enabled the device again.",
    "enabled_by_admin": "An admin enabled the device again.",
    "rented": "The device was placed in a customer's cluster.",
    "released": "The device was released from a cluster.",
    "credential_revoked": "The device credential was revoked; the agent must join again.",
    "drain_requested": "An operator is draining the device: its nodes finish, no new ones come.",
    "drained": "The device is drained: no cluster node is left on it.",
    "undrained": "An operator put the device back in the pool.",
}
"""Every reason code with a sentence a person can read."""


class InvalidTransition(ValueError):
    """A status change the state machine does not allow."""


@dataclass(frozen=True)
class Transition:
    from_status: S | None
    to_status: S
    reason: str
    message: str


def can_transition(current: S, target: S) -> bool:
    """Whether ``current → target`` is an allowed move."""
    return target in ALLOWED[current]


def check_transition(current: S | None, target: S, reason: str, detail: str = "") -> Transition:
    """Validate a move and build its event; raises ``InvalidTransition`` if not allowed.

    ``current`` is None for a device being created (only ``pending`` is allowed then).
    ``detail`` is appended to the reason's sentence (e.g. "silent for 17 s").
    """
    if reason not in REASONS:
        raise InvalidTransition(f"unknown reason code {reason!r}")
    if current is None:
        if target is not S.pending:
            raise InvalidTransition(f"a new device starts as pending, not {target.value}")
    elif not can_transition(current, target):
        raise InvalidTransition(f"{current.value} → {target.value} is not allowed")
    return Transition(current, target, reason, event_message(reason, detail))


def event_message(reason: str, detail: str = "") -> str:
    """The sentence a device event stores: the reason's, then ``detail``; at most 512
    characters. Raises ``InvalidTransition`` for an unknown reason code."""
    if reason not in REASONS:
        raise InvalidTransition(f"unknown reason code {reason!r}")
    message = (REASONS[reason] + (f" {detail}" if detail else "")).replace("\x00", "")
    return message[:512]
