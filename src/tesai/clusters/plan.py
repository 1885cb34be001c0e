"""What to do next for one cluster, decided from plain observations. Pure: no I/O.

The reconciler (``tesai.clusters.reconcile``) gathers the cluster's rows and what its agents
last reported, calls ``next_steps`` and applies the returned steps with guarded updates. Keeping
the decision here makes every branch testable without a database, Ray or agents.

A lost node's replacement is placed in the pass that marks it lost. When no device is free
then, its slot stays open (``OpenSlot``) and is tried again on later passes, backing off
while nothing turns up (``replacement_due``), and at once when the node's own device is back:
the pool's only device restarting must not leave its cluster short for good.

A node's own agent says when its Ray node runs: that is a hint, enough to send the workers
their joins. A cluster runs only once the control plane has itself seen every node alive in
its head's Ray state (``NodeView.verified``, ``tesai.clusters.evidence``), and a running
cluster with a node it has not seen for the evidence window turns ``degraded``
(``node_unverified``) until it sees it again; one with a node that failed its canary round
turns ``degraded`` (``canary_failed``) until a round passes (``canary_passed``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from tesai.clusters.models import ClusterStatus, NodeRole, NodeState

RESTORED: dict[str, str] = {"node_unverified": "node_verified", "canary_failed": "canary_passed"}
"""The reason a degraded cluster runs again, by the reason it was degraded for."""


@dataclass(frozen=True)
class NodeView:
    id: uuid.UUID
    device_id: uuid.UUID
    role: NodeRole
    state: NodeState
    device_live: bool
    """The device heartbeats and is not offline/disabled."""
    join_sent: bool
    reported: Literal["starting", "running", "stopped", "failed"] | None = None
    """The node's state in its agent's last heartbeat (None: not reported)."""
    report_reason: str | None = None
    ray_address: str | None = None
    dashboard_port: int | None = None
    alive_nodes: int | None = None
    """Head only: nodes Ray's state API reports alive, in the agent's words (a hint)."""
    verified: bool = False
    """The control plane saw this node ALIVE in its head's Ray state within the evidence
    window (``tesai.clusters.evidence``)."""
    lapsed: bool = False
    """The control plane has looked for this node and not seen it for longer than the
    evidence window."""
    canary_failed: bool = False
    """The node failed its latest canary round (``tesai.clusters.canary``): not verified
    until a round passes."""


@dataclass(frozen=True)
class ClusterView:
    id: uuid.UUID
    status: ClusterStatus
    nodes: list[NodeView]
    now: datetime
    provisioning_deadline: datetime | None
    ends_at: datetime | None
    budget_left_micro: int | None = None
    """Money left for this cluster (None: no budget limit)."""
    out_of_money: bool = False
    """Its budget or hold cannot pay for another second of its running nodes (their meters
    stopped billing there: ``tesai.billing.money.spend_state``)."""
    open_slots: tuple[OpenSlot, ...] = ()
    """Lost nodes no replacement has taken the place of yet."""
    retry_base_s: float = 5.0
    """Wait after the first replacement try that found no device (doubling after each)."""
    retry_max_s: float = 60.0
    """The longest wait between two replacement tries."""
    status_reason: str | None = None
    """Why the cluster is in its status (the reason of the event that put it there)."""


@dataclass(frozen=True)
class OpenSlot:
    """A lost node whose place no replacement has taken yet: no device was free for it."""

    node_id: uuid.UUID
    device_id: uuid.UUID
    """The device it was lost from."""
    tries: int
    """Replacement tries that found no device since it was lost."""
    last_try_at: datetime | None
    own_device_back_at: datetime | None = None
    """When its own device came back online, if it is back for it (online, clear of the
    cluster's old Ray node: ``tesai.clusters.healing.open_slot``); None otherwise."""


def retry_delay_s(tries: int, *, base_s: float, max_s: float) -> float:
    """The wait after ``tries`` failed replacement tries: base, twice that, four times, …
    up to ``max_s``."""
    return min(max_s, base_s * 2.0 ** min(max(tries - 1, 0), 32))


def replacement_due(slot: OpenSlot, now: datetime, *, base_s: float, max_s: float) -> bool:
    """Whether to try placing the slot's replacement again now: never tried, its own device
    came back since the last try, or the backoff after the last try has run out."""
    if slot.last_try_at is None:
        return True
    if slot.own_device_back_at is not None and slot.own_device_back_at > slot.last_try_at:
        return True
    waited = (now - slot.last_try_at).total_seconds()
    return waited >= retry_delay_s(slot.tries, base_s=base_s, max_s=max_s)


StepKind = Literal[
    "send_join",  # node_id, with head_address for workers
    "mark_node_running",  # node_id
    "mark_node_lost",  # node_id, reason
    "place_replacement",  # node_id (the lost one)
    "set_status",  # status, reason
    "send_leave_all",
    "release_all",
]


@dataclass(frozen=True)
class Step:
    kind: StepKind
    node_id: uuid.UUID | None = None
    status: ClusterStatus | None = None
    reason: str | None = None
    head_address: str | None = None
    detail: str = ""


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)

    def add(self, kind: StepKind, **kw: object) -> None:
        self.steps.append(Step(kind, **kw))  # type: ignore[arg-type]


def _live_nodes(view: ClusterView) -> list[NodeView]:
    return [n for n in view.nodes if n.state not in (NodeState.released, NodeState.lost)]


def _head(view: ClusterView) -> NodeView | None:
    heads = [n for n in _live_nodes(view) if n.role is NodeRole.head]
    return heads[0] if heads else None


def next_steps(view: ClusterView) -> Plan:
    """Decide the next steps for a cluster (see module docstring)."""
    plan = Plan()
    s = view.status
    if s in (ClusterStatus.terminated, ClusterStatus.failed):
        return plan
    if s is ClusterStatus.terminating:
        plan.add("send_leave_all")
        plan.add("release_all")
        plan.add("set_status", status=ClusterStatus.terminated, reason="released")
        return plan

    # Ends before anything else: money and time limits stop the cluster whatever its health.
    if view.ends_at is not None and view.now >= view.ends_at:
        plan.add("set_status", status=ClusterStatus.terminating, reason="duration_over")
        return plan
    if view.out_of_money or (view.budget_left_micro is not None and view.budget_left_micro <= 0):
        plan.add("set_status", status=ClusterStatus.terminating, reason="budget_exhausted")
        return plan

    # Nodes whose device died stop counting and get replaced. A lost head takes the Ray
    # cluster with it: its replacement starts a fresh one and the workers rejoin that.
    lost: list[NodeRole] = []
    for n in _live_nodes(view):
        if not n.device_live or (n.join_sent and n.reported == "failed"):
            reason = "head_lost" if n.role is NodeRole.head else "node_lost"
            plan.add("mark_node_lost", node_id=n.id, reason=reason, detail=n.report_reason or "")
            plan.add("place_replacement", node_id=n.id)
            lost.append(n.role)
    if lost:
        if s is ClusterStatus.running:
            reason = "head_lost" if NodeRole.head in lost else "node_lost"
            plan.add("set_status", status=ClusterStatus.degraded, reason=reason)
        return plan
    for slot in view.open_slots:
        if replacement_due(slot, view.now, base_s=view.retry_base_s, max_s=view.retry_max_s):
            plan.add("place_replacement", node_id=slot.node_id)

    nodes = _live_nodes(view)
    head = _head(view)
    if head is None:
        return plan
    if not head.join_sent:
        plan.add("send_join", node_id=head.id)
    head_up = head.join_sent and head.reported == "running" and head.ray_address is not None
    if head_up and head.state is not NodeState.running:
        plan.add("mark_node_running", node_id=head.id)
    for n in nodes:
        if n.role is NodeRole.worker:
            if not n.join_sent and head_up:
                plan.add("send_join", node_id=n.id, head_address=head.ray_address)
            # Before its join is sent, what the agent reports is a previous Ray node (a
            # worker rejoining after its head was lost): it says nothing about this one.
            if n.join_sent and n.reported == "running" and n.state is not NodeState.running:
                plan.add("mark_node_running", node_id=n.id)

    # Alive is what the control plane saw itself, node by node, in the head's Ray state;
    # the agents' own reports (alive_nodes, their node's state) are hints, never enough.
    all_alive = head_up and all(n.join_sent and n.verified for n in nodes)
    if all_alive and s is ClusterStatus.degraded:
        # Ray keeps listing a killed node ALIVE for a while: after a loss, every node's own
        # agent must say so too before the cluster counts as whole again.
        all_alive = all(n.join_sent and n.reported == "running" for n in nodes)
    if all_alive:
        # The head's Ray state lists every node alive: that is the truth for all of them,
        # even if a worker's own heartbeat has not said so yet.
        marked = {st.node_id for st in plan.steps if st.kind == "mark_node_running"}
        for n in nodes:
            if n.state is not NodeState.running and n.id not in marked and n.join_sent:
                plan.add("mark_node_running", node_id=n.id)
    failed = [n for n in nodes if n.state is NodeState.running and n.canary_failed]
    if failed and s is ClusterStatus.running:
        detail = ", ".join(f"node {n.id} on device {n.device_id}" for n in failed)
        plan.add("set_status", status=ClusterStatus.degraded, reason="canary_failed", detail=detail)
        return plan
    unseen = [n for n in nodes if n.state is NodeState.running and n.lapsed]
    if unseen and s is ClusterStatus.running:
        detail = ", ".join(f"node {n.id} on device {n.device_id}" for n in unseen)
        plan.add(
            "set_status", status=ClusterStatus.degraded, reason="node_unverified", detail=detail
        )
        return plan
    if all_alive and s in (
        ClusterStatus.provisioning,
        ClusterStatus.degraded,
        ClusterStatus.pending,
    ):
        reason = "all_nodes_alive"
        if s is ClusterStatus.degraded:
            reason = RESTORED.get(view.status_reason or "", "node_replaced")
        plan.add("set_status", status=ClusterStatus.running, reason=reason)
    elif (
        s in (ClusterStatus.provisioning, ClusterStatus.pending)
        and view.provisioning_deadline is not None
        and view.now >= view.provisioning_deadline
    ):
        plan.add("set_status", status=ClusterStatus.failed, reason="provisioning_deadline")
        plan.add("send_leave_all")
        plan.add("release_all")
    return plan


@dataclass(frozen=True)
class JobOutcome:
    """What becomes of a job that was pending or running when its cluster's head was lost."""

    resubmit: bool
    message: str


def job_after_head_loss(attempts: int, max_retries: int, packages_lost: bool) -> JobOutcome:
    """Resubmit on the new head while retries are left, else fail. A job whose working dir
    (or modules) was uploaded to the lost head's storage cannot run again unchanged: it fails,
    saying so."""
    if attempts > max_retries:
        return JobOutcome(False, "The head node was lost while the job ran (no retries left).")
    if packages_lost:
        return JobOutcome(
            False,
            "The head node was lost while the job ran; its uploaded working dir was stored on"
            " that head, so submit the job again.",
        )
    return JobOutcome(
        True,
        f"The head node was lost while the job ran; resubmitting on the new head"
        f" (attempt {attempts + 1} of {max_retries + 1}).",
    )


def uploaded_packages(runtime_env: dict[str, Any] | None) -> list[str]:
    """A job's runtime-env packages stored in its head's GCS (``gcs://…``, what `ray job
    submit --working-dir` uploads): they are gone with that head."""
    if not runtime_env:
        return []
    uris: list[Any] = [runtime_env.get("working_dir"), *(runtime_env.get("py_modules") or [])]
    return [u for u in uris if isinstance(u, str) and u.startswith("gcs://")]
