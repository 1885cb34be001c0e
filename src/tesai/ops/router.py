"""Admin operations: /api/v1/internal/ops (drain, move, incidents, SLA).

Force-terminating a cluster with a reason is ``POST /api/v1/internal/clusters/{id}/terminate``
(the clusters router). Every action here is recorded in the audit log.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from tesai.auth.deps import AdminUser, RuntimeDep
from tesai.db import SessionDep
from tesai.devices.models import Device
from tesai.ops import reports, service
from tesai.ops.schemas import (
    DeviceOpsOut,
    DrainBody,
    IncidentTimeline,
    MoveBody,
    MoveOut,
    ProviderSlaSet,
    SlaBody,
    SlaReport,
)

router = APIRouter(prefix="/internal/ops", tags=["internal: operations"])


async def _device_out(session: SessionDep, device: Device) -> DeviceOpsOut:
    return DeviceOpsOut(
        id=device.id,
        name=device.name,
        provider_id=device.provider_id,
        status=device.status,
        status_reason=device.status_reason,
        live_nodes=await service.live_node_count(session, device.id),
    )


@router.post("/devices/{device_id}/drain")
async def drain_device(
    device_id: uuid.UUID, admin: AdminUser, session: SessionDep, body: DrainBody | None = None
) -> DeviceOpsOut:
    """Stop placing on a device; its current nodes finish, then it is ``drained``."""
    reason = body.reason if body else ""
    device = await service.drain_device(session, device_id, admin_id=admin.id, reason=reason)
    return await _device_out(session, device)


@router.post("/devices/{device_id}/undrain")
async def undrain_device(
    device_id: uuid.UUID, admin: AdminUser, session: SessionDep, runtime: RuntimeDep
) -> DeviceOpsOut:
    """Put a draining or drained device back in the pool."""
    device = await service.undrain_device(
        session, runtime.task_context, device_id, admin_id=admin.id
    )
    return await _device_out(session, device)


@router.post("/clusters/{cluster_id}/nodes/{node_id}/move")
async def move_node(
    cluster_id: uuid.UUID,
    node_id: uuid.UUID,
    admin: AdminUser,
    session: SessionDep,
    runtime: RuntimeDep,
    body: MoveBody | None = None,
) -> MoveOut:
    """Move a running node off its device: a replacement with the cluster's constraints is
    placed; the node stops being billed now and leaves once the replacement runs."""
    move = await service.move_node(
        session,
        runtime.task_context,
        cluster_id,
        node_id,
        admin_id=admin.id,
        reason=body.reason if body else "",
    )
    return MoveOut(
        cluster_id=move.cluster_id,
        node_id=move.node_id,
        device_id=move.device_id,
        replacement_node_id=move.replacement_node_id,
        replacement_device_id=move.replacement_device_id,
        left_at_once=move.left_at_once,
    )


@router.get("/clusters/{cluster_id}/incidents")
async def cluster_incidents(
    cluster_id: uuid.UUID, _admin: AdminUser, session: SessionDep, runtime: RuntimeDep
) -> IncidentTimeline:
    """The cluster's fault and operator events with impact and billing credit."""
    return await reports.cluster_incidents(session, runtime.settings, cluster_id)


@router.get("/devices/{device_id}/incidents")
async def device_incidents(
    device_id: uuid.UUID, _admin: AdminUser, session: SessionDep, runtime: RuntimeDep
) -> IncidentTimeline:
    """The device's faults (offline, rejected) and operator events with their impact."""
    return await reports.device_incidents(session, runtime.settings, device_id)


@router.get("/sla")
async def sla_report(
    _admin: AdminUser,
    session: SessionDep,
    runtime: RuntimeDep,
    since: datetime | None = None,
    until: datetime | None = None,
    provider_id: Annotated[uuid.UUID | None, Query()] = None,
) -> SlaReport:
    """Uptime against the promised per provider over a window (default: 30 days), with
    fault counts by reason and the mean time to repair."""
    return await reports.sla_report(
        session, runtime.settings, since=since, until=until, provider_id=provider_id
    )


@router.put("/providers/{provider_id}/sla")
async def set_provider_sla(
    provider_id: uuid.UUID, body: SlaBody, admin: AdminUser, session: SessionDep
) -> ProviderSlaSet:
    """Set the uptime a provider promises (default ``TESAI_SLA_PROMISED_UPTIME``)."""
    return await reports.set_promised_uptime(
        session, provider_id, body.promised_uptime, admin_id=admin.id
    )
