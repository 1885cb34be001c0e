"""Autoscaling decisions on plain data."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from tesai.clusters.autoscale import ScalingNode, ScalingView, decide

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def nodes(n: int, idle: dict[int, float] | None = None) -> list[ScalingNode]:
    idle = idle or {}
    return [
        ScalingNode(
            id=uuid.UUID(int=i + 1),
            index=i,
            is_head=i == 0,
            units=1,
            idle_since=NOW - timedelta(seconds=idle[i]) if i in idle else None,
        )
        for i in range(n)
    ]


def view(**kw: object) -> ScalingView:
    base: dict[str, object] = {
        "min_units": 1,
        "max_units": 3,
        "units_per_node": 1,
        "nodes": nodes(1),
        "demand": False,
        "demand_since": None,
        "now": NOW,
        "scale_up_after_s": 10,
        "idle_timeout_s": 60,
    }
    base.update(kw)
    return ScalingView(**base)  # type: ignore[arg-type]


def test_grows_only_when_demand_persists() -> None:
    assert decide(view(demand=True)).action == "none"
    assert decide(view(demand=True, demand_since=NOW - timedelta(seconds=5))).action == "none"
    d = decide(view(demand=True, demand_since=NOW - timedelta(seconds=11)))
    assert d.action == "add"
    assert "1 → 2 units" in d.reason


def test_never_past_max() -> None:
    d = decide(view(nodes=nodes(3), demand=True, demand_since=NOW - timedelta(minutes=5)))
    assert d.action == "none"
    assert "at max" in d.reason


def test_shrinks_the_longest_idle_worker_never_the_head_nor_below_min() -> None:
    d = decide(view(nodes=nodes(3, idle={0: 999, 1: 61, 2: 120})))
    assert (d.action, d.node_id) == ("remove", uuid.UUID(int=3))
    assert decide(view(nodes=nodes(3, idle={1: 30}))).action == "none"
    at_min = decide(view(min_units=2, nodes=nodes(2, idle={1: 600})))
    assert at_min.action == "none"
    assert "at min" in at_min.reason
