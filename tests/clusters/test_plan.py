"""The reconciler's decisions, on plain data."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from tesai.clusters.models import ClusterStatus, NodeRole, NodeState
from tesai.clusters.plan import (
    ClusterView,
    NodeView,
    OpenSlot,
    job_after_head_loss,
    next_steps,
    replacement_due,
    uploaded_packages,
)

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


def test_running_once_the_control_plane_itself_sees_every_node_alive() -> None:
    head = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="h:1",
        alive_nodes=2,
        verified=True,
    )
    w = node(state=NodeState.running, join_sent=True, reported="running", verified=True)
    steps = next_steps(view(ClusterStatus.provisioning, [head, w])).steps
    assert [(s.kind, s.status, s.reason) for s in steps] == [
        ("set_status", ClusterStatus.running, "all_nodes_alive")
    ]


def test_agents_saying_every_node_is_alive_do_not_make_a_cluster_run() -> None:
    # Both agents report their node running and the head reports Ray's count: all words.
    head = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="h:1",
        alive_nodes=64,
    )
    w = node(state=NodeState.running, join_sent=True, reported="running")
    assert next_steps(view(ClusterStatus.provisioning, [head, w])).steps == []
    # One node seen is not all of them.
    seen_head = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="h:1",
        verified=True,
    )
    assert next_steps(view(ClusterStatus.provisioning, [seen_head, w])).steps == []
    # Until the deadline fails it.
    late = view(
        ClusterStatus.provisioning, [head, w], provisioning_deadline=NOW - timedelta(seconds=1)
    )
    assert next_steps(late).steps[0].reason == "provisioning_deadline"


def test_a_node_unseen_for_the_window_degrades_a_running_cluster_until_seen_again() -> None:
    head = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="h:1",
        verified=True,
    )
    w = node(state=NodeState.running, join_sent=True, reported="running", lapsed=True)
    steps = next_steps(view(ClusterStatus.running, [head, w])).steps
    assert [(s.kind, s.status, s.reason) for s in steps] == [
        ("set_status", ClusterStatus.degraded, "node_unverified")
    ]
    assert str(w.id) in steps[0].detail
    # Not seen, but not yet past the window: no verdict, the cluster stays as it is.
    recent = node(state=NodeState.running, join_sent=True, reported="running")
    assert next_steps(view(ClusterStatus.running, [head, recent])).steps == []
    # Seen again: running again, saying why.
    back = node(state=NodeState.running, join_sent=True, reported="running", verified=True)
    again = view(ClusterStatus.degraded, [head, back], status_reason="node_unverified")
    assert [(s.kind, s.status, s.reason) for s in next_steps(again).steps] == [
        ("set_status", ClusterStatus.running, "node_verified")
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
        verified=True,
    )
    w = node(state=NodeState.running, join_sent=True, reported="running", verified=True)
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
    # Money left, but not enough for another second of the cluster: it stops there.
    short = view(ClusterStatus.running, [head], budget_left_micro=900, out_of_money=True)
    assert [(s.kind, s.reason) for s in next_steps(short).steps] == [
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


def test_every_node_seen_alive_marks_lagging_workers_running() -> None:
    head = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="h:1",
        alive_nodes=2,
        verified=True,
    )
    w = node(state=NodeState.starting, join_sent=True, reported="starting", verified=True)
    steps = next_steps(view(ClusterStatus.provisioning, [head, w])).steps
    assert ("mark_node_running", w.id) in [(s.kind, s.node_id) for s in steps]
    assert steps[-1].status is ClusterStatus.running


def test_degraded_waits_for_the_replacements_own_report() -> None:
    # Ray lists a killed node ALIVE for a while: seen is not enough after a loss.
    head = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="h:1",
        alive_nodes=2,
        verified=True,
    )
    fresh = node(state=NodeState.starting, join_sent=True, reported="starting", verified=True)
    assert next_steps(view(ClusterStatus.degraded, [head, fresh])).steps == []


def test_a_lost_head_degrades_the_cluster_with_its_own_reason() -> None:
    head = node(NodeRole.head, state=NodeState.running, join_sent=True, device_live=False)
    w = node(state=NodeState.running, join_sent=True, reported="running")
    steps = next_steps(view(ClusterStatus.running, [head, w])).steps
    assert [(s.kind, s.node_id) for s in steps[:2]] == [
        ("mark_node_lost", head.id),
        ("place_replacement", head.id),
    ]
    assert (steps[-1].status, steps[-1].reason) == (ClusterStatus.degraded, "head_lost")
    # The worker's device lives: it is not lost, it will rejoin the new head.
    assert w.id not in {s.node_id for s in steps}


def test_a_rejoining_workers_old_report_is_ignored_until_the_new_head_runs() -> None:
    # After a head loss the worker is back to assigned while its agent still reports the
    # Ray node of the dead cluster (running, or failed once its raylet gave up).
    new_head = node(NodeRole.head, state=NodeState.starting, join_sent=True, reported="starting")
    for old in ("running", "failed"):
        w = node(reported=old, ray_address="old:1")
        steps = next_steps(view(ClusterStatus.degraded, [new_head, w])).steps
        assert steps == [], old


def test_workers_rejoin_the_new_head_and_the_cluster_runs_again() -> None:
    new_head = node(
        NodeRole.head,
        state=NodeState.starting,
        join_sent=True,
        reported="running",
        ray_address="new:1",
        alive_nodes=1,
    )
    w = node(reported="running", ray_address="old:1")
    steps = next_steps(view(ClusterStatus.degraded, [new_head, w])).steps
    assert [(s.kind, s.node_id, s.head_address) for s in steps] == [
        ("mark_node_running", new_head.id, None),
        ("send_join", w.id, "new:1"),
    ]
    joined = node(state=NodeState.starting, join_sent=True, reported="running", verified=True)
    head_up = node(
        NodeRole.head,
        state=NodeState.running,
        join_sent=True,
        reported="running",
        ray_address="new:1",
        alive_nodes=2,
        verified=True,
    )
    steps = next_steps(view(ClusterStatus.degraded, [head_up, joined])).steps
    assert [(s.kind, s.reason) for s in steps] == [
        ("mark_node_running", None),
        ("set_status", "node_replaced"),
    ]


def slot(**kw: object) -> OpenSlot:
    base: dict[str, object] = {
        "node_id": uuid.uuid4(),
        "device_id": uuid.uuid4(),
        "tries": 1,
        "last_try_at": NOW - timedelta(seconds=1),
    }
    base.update(kw)
    return OpenSlot(**base)  # type: ignore[arg-type]


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def test_a_head_lost_with_no_free_device_is_tried_again_later_not_given_up() -> None:
    # The head was lost and no device was free then: the cluster has no live node at all.
    lost = slot(tries=1, last_try_at=ago(6))
    steps = next_steps(view(ClusterStatus.degraded, [], open_slots=(lost,))).steps
    assert [(s.kind, s.node_id) for s in steps] == [("place_replacement", lost.node_id)]


def test_replacement_tries_back_off_up_to_a_cap() -> None:
    def due(tries: int, seconds: float) -> bool:
        return replacement_due(
            slot(tries=tries, last_try_at=ago(seconds)), NOW, base_s=5.0, max_s=60.0
        )

    # 5 s after the first failed try, 10 s after the second, 20 s after the third, …
    assert [due(1, 4.9), due(1, 5), due(2, 9.9), due(2, 10), due(3, 19.9), due(3, 20)] == [
        False,
        True,
        False,
        True,
        False,
        True,
    ]
    # … and never more than 60 s, however many tries failed.
    assert [due(50, 59.9), due(50, 60)] == [False, True]
    never_tried = slot(tries=0, last_try_at=None)
    assert replacement_due(never_tried, NOW, base_s=5.0, max_s=60.0)
    # Backing off, nothing new is tried, and the cluster waits as it is.
    waiting = view(ClusterStatus.degraded, [], open_slots=(slot(tries=4, last_try_at=ago(3)),))
    assert next_steps(waiting).steps == []


def test_a_slot_goes_back_to_its_own_device_as_soon_as_that_returns() -> None:
    # Deep in its backoff, but the node's own device came back after the last try: now.
    back = slot(tries=6, last_try_at=ago(2), own_device_back_at=ago(1))
    assert replacement_due(back, NOW, base_s=5.0, max_s=60.0)
    assert kinds(view(ClusterStatus.degraded, [], open_slots=(back,))) == ["place_replacement"]
    # Back before the last try (which already preferred it): the backoff holds.
    earlier = slot(tries=6, last_try_at=ago(1), own_device_back_at=ago(2))
    assert not replacement_due(earlier, NOW, base_s=5.0, max_s=60.0)


def test_a_job_under_a_lost_head_is_resubmitted_while_retries_are_left() -> None:
    first = job_after_head_loss(attempts=1, max_retries=2, packages_lost=False)
    assert first.resubmit
    assert "attempt 2 of 3" in first.message
    assert job_after_head_loss(attempts=3, max_retries=2, packages_lost=False).resubmit is False
    assert job_after_head_loss(attempts=1, max_retries=0, packages_lost=False).resubmit is False
    # Its uploaded working dir died with the head: it cannot run again as submitted.
    lost = job_after_head_loss(attempts=1, max_retries=2, packages_lost=True)
    assert not lost.resubmit
    assert "working dir" in lost.message


def test_uploaded_packages_are_the_gcs_uris_of_a_runtime_env() -> None:
    env = {
        "working_dir": "gcs://_ray_pkg_abc.zip",
        "py_modules": ["gcs://_ray_pkg_def.zip", "s3://bucket/m.zip"],
    }
    assert uploaded_packages(env) == ["gcs://_ray_pkg_abc.zip", "gcs://_ray_pkg_def.zip"]
    assert uploaded_packages({"working_dir": "https://example.com/a.zip"}) == []
    assert uploaded_packages(None) == []
