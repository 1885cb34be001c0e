"""Autoscaling decisions for clusters rented with min/max units. Pure: no I/O.

A unit is a GPU on GPU clusters and a node on CPU clusters. The head's agent reports Ray's
pending resource demand and which nodes are idle (from the autoscaler state in the GCS);
the reconciler keeps when demand was first seen and since when each node is idle, and asks
``decide`` what to do. At most one node is added or removed per pass (Ray's autoscaler
lesson: runaway launches onto unhealthy capacity are worse than a slow ramp), never past
max or below min, and never beyond what the customer's money allows — the caller checks
that by extending the hold before adding, and records a refusal as the decision's reason.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal


@dataclass(frozen=True)
class ScalingNode:
    id: uuid.UUID
    index: int
    is_head: bool
    units: int
    idle_since: datetime | None


@dataclass(frozen=True)
class ScalingView:
    min_units: int
    max_units: int
    units_per_node: int
    nodes: list[ScalingNode]
    demand: bool
    """Ray reports resource demand it cannot place right now."""
    demand_since: datetime | None
    now: datetime
    scale_up_after_s: float
    idle_timeout_s: float


@dataclass(frozen=True)
class Decision:
    action: Literal["add", "remove", "none"]
    reason: str
    node_id: uuid.UUID | None = None


def current_units(view: ScalingView) -> int:
    return sum(n.units for n in view.nodes)


def decide(view: ScalingView) -> Decision:
    """One scaling step (see module docstring)."""
    units = current_units(view)
    if view.demand:
        if view.demand_since is None:
            return Decision("none", "demand seen; waiting for it to persist")
        waited = (view.now - view.demand_since).total_seconds()
        if waited < view.scale_up_after_s:
            return Decision("none", f"demand for {waited:.0f} s of {view.scale_up_after_s:.0f} s")
        if units + view.units_per_node > view.max_units:
            return Decision("none", f"at max: {units} of {view.max_units} units")
        return Decision(
            "add",
            f"pending demand for {waited:.0f} s; {units} → {units + view.units_per_node} units",
        )
    idle_after = timedelta(seconds=view.idle_timeout_s)
    candidates = sorted(
        (
            n
            for n in view.nodes
            if not n.is_head and n.idle_since is not None and view.now - n.idle_since >= idle_after
        ),
        key=lambda n: (n.idle_since, -n.index),
    )
    if candidates:
        if units - candidates[0].units < view.min_units:
            return Decision("none", f"at min: {units} of {view.min_units} units")
        victim = candidates[0]
        idle_s = (view.now - victim.idle_since).total_seconds() if victim.idle_since else 0.0
        return Decision(
            "remove",
            f"node {victim.index} idle for {idle_s:.0f} s; {units} → {units - victim.units} units",
            victim.id,
        )
    return Decision("none", "no demand, no idle node past the timeout")
