"""The pool as placement sees it: devices read from the database into plain values."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.clusters.models import ClusterNode, DeviceReservation
from tesai.clusters.schemas import ClusterRequest
from tesai.devices.models import Device, DeviceStatus
from tesai.scheduling import placement as pl

VERIFIED_GFLOPS_REFERENCE = 1000.0
"""Proof-of-compute GFLOP/s that maps to a verified score of 0.5 (x / (x + ref))."""


def tier_number(tier: str | None) -> int | None:
    """``"t2"`` → 2; None when unmeasured."""
    if not tier or not tier.startswith("t") or not tier[1:].isdigit():
        return None
    return int(tier[1:])


def verified_score(gflops: float | None) -> float:
    if not gflops or gflops <= 0:
        return 0.0
    return gflops / (gflops + VERIFIED_GFLOPS_REFERENCE)


def to_placement_request(
    req: ClusterRequest, *, gpus: int | None = None, excluded: frozenset[str] = frozenset()
) -> pl.PlacementRequest:
    return pl.PlacementRequest(
        gpu_model=req.gpu_model,
        gpu_count=req.gpus if gpus is None else gpus,
        node_count=req.nodes if req.gpu_model is None else None,
        gpus_per_node=req.gpus_per_node,
        max_price_per_gpu_hour_micro=req.max_price_per_gpu_hour_micro,
        regions=frozenset(req.regions),
        countries=frozenset(c.upper() for c in req.countries),
        min_reliability=req.min_reliability,
        min_connectivity_tier=req.min_connectivity_tier,
        min_verified_score=req.min_verified_score,
        min_vram_mb=req.min_vram_mb,
        excluded_device_ids=excluded,
        allow_cross_region=req.allow_cross_region,
    )


async def load_pool(
    session: AsyncSession, now: datetime, *, quote_id: uuid.UUID | None = None
) -> list[pl.Device]:
    """Listed devices (online or rented), each marked free when nobody else holds it.

    A device is not free when a live cluster node books it, or an unexpired reservation of
    another quote holds it. Rented devices are included so a shortfall can count them.
    """
    booked = exists().where(
        and_(ClusterNode.device_id == Device.id, ClusterNode.released_at.is_(None))
    )
    held = [DeviceReservation.device_id == Device.id, DeviceReservation.expires_at > now]
    if quote_id is not None:
        held.append(DeviceReservation.quote_id != quote_id)
    reserved = exists().where(and_(*held))
    rows = await session.execute(
        select(Device, booked, reserved).where(
            Device.status.in_([DeviceStatus.online, DeviceStatus.busy])
        )
    )
    pool = []
    for device, is_booked, is_reserved in rows.tuples():
        free = device.status is DeviceStatus.online and not is_booked and not is_reserved
        pool.append(
            pl.Device(
                id=str(device.id),
                gpu_model=device.gpu_model if device.gpu_count else None,
                gpu_count=device.gpu_count,
                vram_mb=device.vram_bytes_per_gpu // (1024 * 1024),
                region=device.region or "unknown",
                country=(device.country or "").upper(),
                price_per_gpu_hour_micro=device.price_per_gpu_hour_micro,
                reliability=device.reliability,
                verified_score=verified_score(device.verified_score),
                connectivity_tier=tier_number(device.connectivity_tier),
                free=free,
            )
        )
    return pool
