"""The reconciler's decisions, on plain data."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from tesai.clusters.models import ClusterStatus, NodeRole, NodeState
from tesai.clusters.plan import ClusterView, NodeView, next_steps

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def node(role: NodeRole = NodeRole.worker, **kw: object) -> NodeView:
    base: dict[str, object] = {
        "id": uuid.uuid4(),
        "device_id": uuid.uuid4(),
        "role": role,
        "state": NodeState.assigned,
        "device_live": True,
        "join_sent": False,
    }
    base.update(kw)
    return NodeView(**base)  # type: ignore[arg-type]


def view(status: ClusterStatus, nodes: list[NodeView], **kw: object) -> ClusterView:
    base: dict[str, object] = {
        "id": uuid.uuid4(),
        "status": status,
        "nodes": nodes,
        "now": NOW,
        "provisioning_deadline": NOW + timedelta(minutes=5),
        "ends_at": None,
    }
    base.update(kw)
    return ClusterView(**base)  # type: ignore[arg-type]


def kinds(v: ClusterView) -> list[str]:
    return [s.kind for s in next_steps(v).steps]


def test_head_joins_first_and_workers_wait_for_its_address() -> None:
    head, w = node(NodeRole.head), node()
    steps = next_steps(view(ClusterStatus.provisioning, [head, w])).steps
    assert [(s.kind, s.node_id) for s in steps] == [("send_join", head.id)]


def test_workers_join_the_running_head() -> None:
    head = node(
        NodeRole.head,
        state=NodeState.starting,
        join_sent=True,
        reported="running",
        ray_address="10.0.0.1:6379",
        alive_nodes=1,
    )
    w = node()
    steps = next_steps(view(ClusterStatus.provisioning, [head, w])).steps
    assert ("mark_node_running", head.id) in [(s.kind, s.node_id) for s in steps]
    join = [s for s in steps if s.kind == "send_join"]
    assert join[0].node_id == w.id
    assert join[0].head_address == "10.0.0.1:6379"
    assert "set_status" not in [s.kind for s in steps]


def test_running_once_ray_reports_every_node_alive() -> None:
    head = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="h:1",
        alive_nodes=2,
    )
    w = node(state=NodeState.running, join_sent=True, reported="running")
    steps = next_steps(view(ClusterStatus.provisioning, [head, w])).steps
    assert [(s.kind, s.status, s.reason) for s in steps] == [
        ("set_status", ClusterStatus.running, "all_nodes_alive")
    ]


def test_lost_worker_degrades_and_is_replaced() -> None:
    head = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="h:1",
        alive_nodes=2,
    )
    w = node(state=NodeState.running, join_sent=True, device_live=False)
    steps = next_steps(view(ClusterStatus.running, [head, w])).steps
    assert [(s.kind, s.node_id) for s in steps[:2]] == [
        ("mark_node_lost", w.id),
        ("place_replacement", w.id),
    ]
    assert steps[-1].status is ClusterStatus.degraded


def test_lost_head_is_named_as_such() -> None:
    head = node(NodeRole.head, state=NodeState.running, join_sent=True, device_live=False)
    steps = next_steps(view(ClusterStatus.running, [head])).steps
    assert steps[0].reason == "head_lost"


def test_degraded_returns_to_running_after_replacement() -> None:
    head = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="h:1",
        alive_nodes=2,
    )
    w = node(state=NodeState.running, join_sent=True, reported="running")
    steps = next_steps(view(ClusterStatus.degraded, [head, w])).steps
    assert [(s.kind, s.reason) for s in steps] == [("set_status", "node_replaced")]


def test_provisioning_deadline_fails_and_releases() -> None:
    head = node(NodeRole.head, state=NodeState.starting, join_sent=True)
    v = view(ClusterStatus.provisioning, [head], provisioning_deadline=NOW - timedelta(seconds=1))
    assert kinds(v) == ["set_status", "send_leave_all", "release_all"]
    assert next_steps(v).steps[0].reason == "provisioning_deadline"


def test_duration_over_and_budget_exhausted_terminate() -> None:
    head = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="h:1",
        alive_nodes=1,
    )
    over = view(ClusterStatus.running, [head], ends_at=NOW)
    assert [(s.kind, s.reason) for s in next_steps(over).steps] == [("set_status", "duration_over")]
    broke = view(ClusterStatus.running, [head], budget_left_micro=0)
    assert [(s.kind, s.reason) for s in next_steps(broke).steps] == [
        ("set_status", "budget_exhausted")
    ]


def test_terminating_releases_everything_once() -> None:
    head = node(NodeRole.head, state=NodeState.running, join_sent=True)
    assert kinds(view(ClusterStatus.terminating, [head])) == [
        "send_leave_all",
        "release_all",
        "set_status",
    ]
    assert kinds(view(ClusterStatus.terminated, [head])) == []


def test_ray_reporting_every_node_alive_marks_lagging_workers_running() -> None:
    head = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="h:1",
        alive_nodes=2,
    )
    w = node(state=NodeState.starting, join_sent=True, reported="starting")
    steps = next_steps(view(ClusterStatus.provisioning, [head, w])).steps
    assert ("mark_node_running", w.id) in [(s.kind, s.node_id) for s in steps]
    assert steps[-1].status is ClusterStatus.running


def test_degraded_waits_for_the_replacements_own_report() -> None:
    # Ray still counts the lost node, so its count matches before the replacement is up.
    head = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="h:1",
        alive_nodes=2,
    )
    fresh = node(state=NodeState.starting, join_sent=True, reported="starting")
    assert next_steps(view(ClusterStatus.degraded, [head, fresh])).steps == []
