"""Open slots: lost nodes whose place no replacement has taken yet, read for the reconciler.

A node whose device dies is marked lost and its replacement placed in the same pass
(``tesai.clusters.reconcile``). When no device is free then (the pool's only device was the
one lost, as when ``tesai up`` restarts), its slot stays open: a lost node that no
``node_replaced`` event names. Every pass reads the open slots of the live clusters with
what ``tesai.clusters.plan.replacement_due`` decides on: the ``no_replacement`` events that
name the node (how often and when a try found nothing), and whether the node's own device is
back for it. The events are the record, so a restarted control plane keeps each slot's
backoff and old clusters' open slots are found without a migration.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.clusters.models import ClusterEvent, ClusterNode, NodeState
from tesai.clusters.plan import OpenSlot
from tesai.devices.models import Device, DeviceEvent, DeviceStatus


@dataclass(frozen=True)
class LostSlot:
    """An open slot as the database has it; ``open_slot`` adds what its device reports."""

    cluster_id: uuid.UUID
    node_id: uuid.UUID
    device_id: uuid.UUID
    tries: int
    last_try_at: datetime | None
    device_status: DeviceStatus | None
    online_since: datetime | None
    """When its device last went online."""


async def read_open_slots(
    session: AsyncSession, cluster_ids: Sequence[uuid.UUID]
) -> list[LostSlot]:
    """The open slots of ``cluster_ids``: their lost nodes no replacement names."""
    replaced = exists().where(
        ClusterEvent.cluster_id == ClusterNode.cluster_id,
        ClusterEvent.reason == "node_replaced",
        ClusterEvent.data["replaces"].astext == cast(ClusterNode.id, String),
    )
    lost = (
        await session.execute(
            select(ClusterNode.cluster_id, ClusterNode.id, ClusterNode.device_id).where(
                ClusterNode.cluster_id.in_(cluster_ids),
                ClusterNode.state == NodeState.lost,
                ~replaced,
            )
        )
    ).all()
    if not lost:
        return []
    node_ids = [str(node_id) for _, node_id, _ in lost]
    device_ids = list({device_id for _, _, device_id in lost})
    slot_clusters = list({cluster_id for cluster_id, _, _ in lost})
    named = ClusterEvent.data["node_id"].astext.label("node_id")
    tried = {
        node_id: (int(count), at)
        for node_id, count, at in (
            await session.execute(
                select(named, func.count(), func.max(ClusterEvent.at))
                .where(
                    ClusterEvent.cluster_id.in_(slot_clusters),
                    ClusterEvent.reason == "no_replacement",
                    ClusterEvent.data["node_id"].astext.in_(node_ids),
                )
                .group_by(named)
            )
        ).tuples()
    }
    statuses = dict(
        (await session.execute(select(Device.id, Device.status).where(Device.id.in_(device_ids))))
        .tuples()
        .all()
    )
    online_since = dict(
        (
            await session.execute(
                select(DeviceEvent.device_id, func.max(DeviceEvent.at))
                .where(
                    DeviceEvent.device_id.in_(device_ids),
                    DeviceEvent.to_status == DeviceStatus.online.value,
                )
                .group_by(DeviceEvent.device_id)
            )
        )
        .tuples()
        .all()
    )
    slots = []
    for cluster_id, node_id, device_id in lost:
        tries, last = tried.get(str(node_id), (0, None))
        slots.append(
            LostSlot(
                cluster_id=cluster_id,
                node_id=node_id,
                device_id=device_id,
                tries=tries,
                last_try_at=last,
                device_status=statuses.get(device_id),
                online_since=online_since.get(device_id),
            )
        )
    return slots


def open_slot(lost: LostSlot, report: Mapping[str, Any] | None) -> OpenSlot:
    """The slot as the plan sees it. Its own device is back for it when the device is online
    and its agent's last heartbeat shows no Ray node of this cluster on it: the old one has
    stopped, so a report about it cannot be taken for the new node's (reports name the
    cluster, not the node). The flap exclusion does not keep it out: a device that keeps
    dropping out is bounded by the hourly replacement cap instead."""
    runs_old_node = report is not None and any(
        n.get("cluster_id") == str(lost.cluster_id) for n in report.get("nodes", [])
    )
    back = lost.device_status is DeviceStatus.online and report is not None and not runs_old_node
    return OpenSlot(
        node_id=lost.node_id,
        device_id=lost.device_id,
        tries=lost.tries,
        last_try_at=lost.last_try_at,
        own_device_back_at=lost.online_since if back else None,
    )
