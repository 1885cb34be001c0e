"""The cluster state machine as data. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tesai.clusters.models import ClusterStatus as S

ALLOWED: Final[dict[S, frozenset[S]]] = {
    S.pending: frozenset({S.provisioning, S.failed, S.terminating}),
    S.provisioning: frozenset({S.running, S.failed, S.terminating, S.degraded}),
    S.running: frozenset({S.degraded, S.terminating}),
    S.degraded: frozenset({S.running, S.terminating, S.failed}),
    S.terminating: frozenset({S.terminated}),
    S.terminated: frozenset(),
    S.failed: frozenset(),
}

LIVE: Final = frozenset({S.pending, S.provisioning, S.running, S.degraded})
BILLED: Final = frozenset({S.running, S.degraded})
"""States in which running nodes are metered."""
"""States in which the cluster holds devices and money."""

REASONS: Final[dict[str, str]] = {
    "created": "The cluster was created and its devices booked.",
    "provisioning": "Join commands were sent to the nodes' agents.",
    "all_nodes_alive": "The control plane saw every node alive in the head's Ray state.",
    "node_unverified": (
        "The control plane has not seen a node alive in the head's Ray state lately;"
        " it is not billed until it does."
    ),
    "node_verified": "The control plane sees every node alive in the head's Ray state again.",
    "canary_failed": (
        "A node did not answer its canary task (a task pinned to it that must return a value"
        " only that run can produce); it is not billed until a later round passes."
    ),
    "canary_passed": "Every node answered its canary task again.",
    "node_lost": "A node's device went offline; a replacement is being placed.",
    "head_lost": "The head node's device went offline; the cluster is re-forming.",
    "job_resubmitted": "A job the lost head ran goes to the new head (its retry policy).",
    "job_failed": "A job the lost head ran failed with it (no retries left).",
    "node_replaced": "A replacement node joined.",
    "no_replacement": "No device matching the cluster's constraints is free.",
    "provisioning_deadline": "Not every node came up before the provisioning deadline.",
    "customer_terminated": "The customer terminated the cluster.",
    "admin_terminated": "An admin terminated the cluster.",
    "duration_over": "The rented duration is over.",
    "budget_exhausted": "The cluster's budget (or what its hold has left) is used up.",
    "spend_cap_reached": "The account's monthly spend cap is reached.",
    "released": "Every node was released and the bill settled.",
    "scaled_up": "The autoscaler added nodes for pending demand.",
    "scaled_down": "The autoscaler removed idle nodes.",
    "scale_up_refused": "The autoscaler wanted a node but could not add one.",
    "join_failed": "A node's agent could not start its Ray node.",
    "extended": "The customer extended the rental.",
    "moved_by_operator": "An operator moved a node off its device; a replacement takes its place.",
}


class InvalidClusterTransition(ValueError):
    """A status change the state machine does not allow."""


@dataclass(frozen=True)
class Transition:
    from_status: S
    to_status: S
    reason: str
    message: str


def check_transition(current: S, target: S, reason: str, detail: str = "") -> Transition:
    """Validate ``current → target``; raises ``InvalidClusterTransition`` if not allowed."""
    if reason not in REASONS:
        raise InvalidClusterTransition(f"unknown reason code {reason!r}")
    if target not in ALLOWED[current]:
        raise InvalidClusterTransition(f"{current.value} → {target.value} is not allowed")
    return Transition(
        current, target, reason, (REASONS[reason] + (f" {detail}" if detail else ""))[:512]
    )
