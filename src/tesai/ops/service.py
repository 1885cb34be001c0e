"""Operator actions on the pool: drain and undrain devices, move a node off its device.

Draining rests on the device state machine: a ``draining`` or ``drained`` device is not
``online``, so placement (offers, quotes, replacements, autoscaling) never picks it, and a
node released from it leaves it ``draining`` (the reconciler only frees ``busy`` devices).
``finish_operations`` (periodic) completes what waits on the cluster side: a draining device
with no live node left becomes ``drained``, and a moved node leaves once its replacement runs.

A move reuses the reconciler's self-healing path (``_Applier._place_replacement``: same
constraints, same exclusions, same replacement cap). The moved node is marked ``lost`` with
``state_reason = moved_by_operator`` but keeps its device (``released_at`` unset) so Ray keeps
it until the replacement joins: the plan neither counts it nor heals it again, and its
billing stops at once. A moved head cannot overlap its replacement (a Ray cluster has one
head), so it leaves at once and the cluster re-forms as after a lost head.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import structlog
from sqlalchemy import and_, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.audit.service import record as audit
from tesai.clusters import evidence as ray_evidence
from tesai.clusters.models import (
    Cluster,
    ClusterEvent,
    ClusterNode,
    ClusterStatus,
    NodeRole,
    NodeState,
)
from tesai.clusters.plan import ClusterView, Step
from tesai.clusters.reconcile import DEAD_DEVICE, _Applier, stop_node_meter
from tesai.clusters.service import get_cluster, record_event, secret_box
from tesai.db import after_commit, run_after_commit
from tesai.devices import keys as device_keys
from tesai.devices.errors import StatusConflict
from tesai.devices.models import Device, DeviceEvent, DeviceStatus
from tesai.devices.service import get_device, is_live, record_transition
from tesai.kit.time import utcnow
from tesai.ops.errors import NodeNotFound, NodeNotMovable, NoReplacement
from tesai.tasks import TaskContext

log = structlog.get_logger(__name__)

MOVED = "moved_by_operator"
MOVABLE_CLUSTER = (ClusterStatus.running, ClusterStatus.degraded)


def _has_live_node(device_id: Any) -> Any:
    return exists().where(
        and_(ClusterNode.device_id == device_id, ClusterNode.released_at.is_(None))
    )


async def live_node_count(session: AsyncSession, device_id: uuid.UUID) -> int:
    return int(
        (
            await session.execute(
                select(func.count())
                .select_from(ClusterNode)
                .where(ClusterNode.device_id == device_id, ClusterNode.released_at.is_(None))
            )
        ).scalar_one()
    )


# --- drain ------------------------------------------------------------------------------------


async def drain_device(
    session: AsyncSession, device_id: uuid.UUID, *, admin_id: uuid.UUID, reason: str = ""
) -> Device:
    """Stop placing on the device; its current nodes finish. Idempotent.

    ``busy`` → ``draining`` (``drained`` once its last node leaves); ``online`` or ``offline``
    (no node) → ``drained`` at once. Raises ``DeviceNotFound`` (404) or ``StatusConflict``
    (409) for a device that is not in the pool (pending, verifying, disabled, rejected).
    """
    device = await get_device(session, device_id, lock=True)
    before = device.status
    if device.status in (DeviceStatus.draining, DeviceStatus.drained):
        pass
    elif device.status is DeviceStatus.busy and await live_node_count(session, device.id):
        record_transition(session, device, DeviceStatus.draining, "drain_requested", reason)
    elif device.status is DeviceStatus.offline and await live_node_count(session, device.id):
        # The reconciler has yet to mark its nodes lost; a drained device must hold none.
        raise StatusConflict("Device is offline and its nodes are being replaced; try again")
    elif device.status in (DeviceStatus.online, DeviceStatus.busy, DeviceStatus.offline):
        if device.status is DeviceStatus.busy:
            # Rented on paper but no node is left: free it first, as a release would.
            record_transition(session, device, DeviceStatus.online, "released")
        record_transition(session, device, DeviceStatus.drained, "drained", reason)
    else:
        raise StatusConflict(
            f"Device is {device.status.value}: only a device in the pool can be drained"
        )
    await audit(
        session,
        action="ops.device_drain",
        actor_user_id=admin_id,
        subject_type="device",
        subject_id=device.id,
        details={"reason": reason, "from": before.value, "to": device.status.value},
    )
    await session.flush()
    return device


async def undrain_device(
    session: AsyncSession, ctx: TaskContext, device_id: uuid.UUID, *, admin_id: uuid.UUID
) -> Device:
    """Put a draining or drained device back in the pool.

    ``draining`` → ``busy`` (nodes still on it) or ``online``; ``drained`` → ``online`` when
    it heartbeats and is verified, else ``offline``/``verifying``/``pending`` as for a
    re-enabled device. Raises ``DeviceNotFound`` (404) or ``StatusConflict`` (409).
    """
    device = await get_device(session, device_id, lock=True)
    before = device.status
    if device.status is DeviceStatus.draining:
        busy = await live_node_count(session, device.id) > 0
        target = DeviceStatus.busy if busy else DeviceStatus.online
        record_transition(session, device, target, "undrained")
    elif device.status is DeviceStatus.drained:
        if device.agent_version is None:
            record_transition(session, device, DeviceStatus.pending, "undrained")
        elif not await is_live(ctx.cache, ctx.settings, device.id):
            record_transition(
                session, device, DeviceStatus.offline, "undrained", "Waiting for heartbeats."
            )
            key = device_keys.offline_flag(str(device.id))

            async def flag() -> None:
                await ctx.cache.set(key, "1", ttl_s=30 * 86400)

            after_commit(session, flag)
        elif device.verified_at is not None:
            record_transition(session, device, DeviceStatus.online, "undrained")
        else:
            record_transition(session, device, DeviceStatus.verifying, "undrained")
    else:
        raise StatusConflict(f"Device is {device.status.value}, not draining or drained")
    await audit(
        session,
        action="ops.device_undrain",
        actor_user_id=admin_id,
        subject_type="device",
        subject_id=device.id,
        details={"from": before.value, "to": device.status.value},
    )
    await session.flush()
    return device


async def _last_event_from(session: AsyncSession, device_ids: list[uuid.UUID]) -> dict[Any, Any]:
    """Each device's latest event's ``from_status``."""
    if not device_ids:
        return {}
    rows = await session.execute(
        select(DeviceEvent.device_id, DeviceEvent.from_status)
        .where(DeviceEvent.device_id.in_(device_ids))
        .order_by(DeviceEvent.device_id, DeviceEvent.at.desc(), DeviceEvent.id.desc())
        .distinct(DeviceEvent.device_id)
    )
    return dict(rows.tuples().all())


async def finish_drains(session: AsyncSession) -> list[uuid.UUID]:
    """Draining devices with no live node, and devices that went offline while draining
    (once the reconciler has marked their nodes lost), become ``drained``; returns their
    ids. A drained device never holds a live node. The caller commits."""
    done: list[uuid.UUID] = []
    empty = (
        await session.execute(
            select(Device)
            .where(Device.status == DeviceStatus.draining, ~_has_live_node(Device.id))
            .with_for_update(skip_locked=True)
        )
    ).scalars()
    for device in empty:
        record_transition(session, device, DeviceStatus.drained, "drained")
        done.append(device.id)
    offline = list(
        (
            await session.execute(
                select(Device.id).where(
                    Device.status == DeviceStatus.offline,
                    ~_has_live_node(Device.id),
                    exists().where(
                        DeviceEvent.device_id == Device.id,
                        DeviceEvent.from_status == DeviceStatus.draining.value,
                    ),
                )
            )
        ).scalars()
    )
    for device_id, from_status in (await _last_event_from(session, offline)).items():
        if from_status != DeviceStatus.draining.value:
            continue
        went = await session.get(Device, device_id, with_for_update=True)
        if went is not None and went.status is DeviceStatus.offline:
            record_transition(
                session, went, DeviceStatus.drained, "drained", "It went offline while draining."
            )
            done.append(went.id)
    await session.flush()
    return done


# --- move a node ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    cluster_id: uuid.UUID
    node_id: uuid.UUID
    device_id: uuid.UUID
    replacement_node_id: uuid.UUID
    replacement_device_id: uuid.UUID
    left_at_once: bool
    """A head leaves at once (the cluster re-forms); a worker once its replacement runs."""


async def _reports(ctx: TaskContext, device_ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    raws = await ctx.cache.mget([device_keys.telemetry(str(d)) for d in device_ids])
    return {d: orjson.loads(r) for d, r in zip(device_ids, raws, strict=True) if r is not None}


async def _applier(
    ctx: TaskContext, session: AsyncSession, cluster: Cluster, now: datetime
) -> _Applier:
    nodes = {
        n.id: n
        for n in (
            await session.execute(
                select(ClusterNode)
                .where(ClusterNode.cluster_id == cluster.id, ClusterNode.released_at.is_(None))
                .with_for_update()
            )
        ).scalars()
    }
    reports = await _reports(ctx, list({n.device_id for n in nodes.values()}))
    seen = await ray_evidence.read(ctx.cache, list(nodes))
    view = ClusterView(
        id=cluster.id,
        status=cluster.status,
        nodes=[],
        now=now,
        provisioning_deadline=cluster.provisioning_deadline,
        ends_at=cluster.ends_at,
    )
    return _Applier(
        ctx, session, cluster, nodes, view, reports, secret_box(ctx.settings), evidence=seen
    )


async def move_node(
    session: AsyncSession,
    ctx: TaskContext,
    cluster_id: uuid.UUID,
    node_id: uuid.UUID,
    *,
    admin_id: uuid.UUID,
    reason: str = "",
) -> Move:
    """Place a replacement for a running node (same constraints as the cluster's) and stop
    billing the node; it leaves its device once the replacement runs (a head at once).

    Raises ``ClusterNotFound``/``NodeNotFound`` (404), ``NodeNotMovable`` (409: the cluster
    or node is not running) and ``NoReplacement`` (409: nothing changes).
    """
    cluster = await get_cluster(session, None, cluster_id, lock=True)
    node = await session.get(ClusterNode, node_id, with_for_update=True)
    if node is None or node.cluster_id != cluster.id:
        raise NodeNotFound("No such node in this cluster")
    if cluster.status not in MOVABLE_CLUSTER:
        raise NodeNotMovable(f"Cluster is {cluster.status.value}; only a live cluster's node moves")
    if node.released_at is not None or node.state is not NodeState.running:
        raise NodeNotMovable(f"Node is {node.state.value}; only a running node can be moved")
    now = utcnow()
    applier = await _applier(ctx, session, cluster, now)
    before = cluster.replacements
    await applier._place_replacement(Step("place_replacement", node_id=node.id))
    if cluster.replacements == before:
        why = next(
            (
                o.message
                for o in session.new
                if isinstance(o, ClusterEvent) and o.reason == "no_replacement"
            ),
            "no free device matches the cluster's constraints",
        )
        raise NoReplacement(f"No replacement could be placed: {why}")
    new = applier.nodes[
        next(
            uuid.UUID(o.data["node_id"])
            for o in session.new
            if isinstance(o, ClusterEvent)
            and o.reason == "node_replaced"
            and o.data.get("replaces") == str(node.id)
        )
    ]
    head = node.role is NodeRole.head
    if head:
        await applier._release_node(node, MOVED)
        await applier._head_lost()
        record_event(
            session,
            cluster,
            MOVED,
            to=ClusterStatus.degraded,
            detail=f"{reason} (head node {node.id} left device {node.device_id})".strip(),
            data={"node_id": str(node.id), "device_id": str(node.device_id), "reason": reason},
        )
    else:
        await stop_node_meter(session, ctx.settings, node, applier.reports, now, applier.evidence)
        node.state = NodeState.lost
        node.state_reason = MOVED
        record_event(
            session,
            cluster,
            MOVED,
            detail=f"{reason} (node {node.id} leaves device {node.device_id} once its"
            f" replacement runs)".strip(),
            data={"node_id": str(node.id), "device_id": str(node.device_id), "reason": reason},
        )
    cluster.version += 1
    await audit(
        session,
        action="ops.node_move",
        actor_user_id=admin_id,
        subject_type="cluster",
        subject_id=cluster.id,
        details={
            "node_id": str(node.id),
            "device_id": str(node.device_id),
            "replacement_node_id": str(new.id),
            "replacement_device_id": str(new.device_id),
            "reason": reason,
        },
    )
    await session.flush()
    return Move(cluster.id, node.id, node.device_id, new.id, new.device_id, head)


async def finish_moves(ctx: TaskContext, session: AsyncSession) -> list[uuid.UUID]:
    """Release moved nodes whose replacement runs (every other live node of the cluster is
    running) or whose device died; returns the nodes released. The caller commits."""
    now = utcnow()
    cluster_ids = list(
        (
            await session.execute(
                select(ClusterNode.cluster_id)
                .where(
                    ClusterNode.state == NodeState.lost,
                    ClusterNode.state_reason == MOVED,
                    ClusterNode.released_at.is_(None),
                )
                .distinct()
            )
        ).scalars()
    )
    released: list[uuid.UUID] = []
    for cluster_id in cluster_ids:
        cluster = (
            await session.execute(
                select(Cluster).where(Cluster.id == cluster_id).with_for_update(skip_locked=True)
            )
        ).scalar_one_or_none()
        if cluster is None or cluster.status not in MOVABLE_CLUSTER:
            continue  # locked by the reconciler (next pass), or ending: release_all frees it
        applier = await _applier(ctx, session, cluster, now)
        moving = [
            n
            for n in applier.nodes.values()
            if n.state is NodeState.lost and n.state_reason == MOVED
        ]
        others = [n for n in applier.nodes.values() if n not in moving]
        replaced = bool(others) and all(n.state is NodeState.running for n in others)
        statuses = dict(
            (
                await session.execute(
                    select(Device.id, Device.status).where(
                        Device.id.in_([n.device_id for n in moving])
                    )
                )
            )
            .tuples()
            .all()
        )
        for node in moving:
            if replaced or statuses.get(node.device_id) in DEAD_DEVICE:
                await applier._release_node(node, MOVED)
                record_event(
                    session,
                    cluster,
                    MOVED,
                    detail=f"node {node.id} left device {node.device_id}",
                    data={"node_id": str(node.id), "device_id": str(node.device_id)},
                )
                released.append(node.id)
        if released:
            cluster.version += 1
    await session.flush()
    return released


async def finish_operations(ctx: TaskContext) -> dict[str, int]:
    """The periodic completion of drains and moves (see module docstring)."""
    async with ctx.sessionmaker() as session:
        moved = await finish_moves(ctx, session)
        await session.commit()
        await run_after_commit(session)
        drained = await finish_drains(session)
        await session.commit()
    if moved or drained:
        log.info("ops_finished", moved=len(moved), drained=len(drained))
    return {"moved": len(moved), "drained": len(drained)}
