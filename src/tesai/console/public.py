"""Public machine pages: what anyone may know about one device of the pool.

No name, owner or address: hardware, region, status, proof-of-compute score, reliability,
price and a per-day uptime series over the last 30 days.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import func, select

from tesai.auth.deps import RuntimeDep
from tesai.db import SessionDep
from tesai.devices import service
from tesai.devices.models import Device, DeviceUptimeMinute
from tesai.errors import NotFound
from tesai.kit.time import utcnow

router = APIRouter(prefix="/api/v1/public", tags=["public"])

DAYS = 30


class UptimeDay(BaseModel):
    day: datetime
    uptime_pct: float
    """Share of the day (of its part since the device was created, for its first day) up."""


class PublicDevice(BaseModel):
    id: uuid.UUID
    status: str
    gpu_model: str | None
    gpu_count: int
    vram_mb_per_gpu: int
    cpu_cores: int
    region: str | None
    country: str | None
    connectivity_tier: str | None
    price_per_gpu_hour_micro: int
    reliability: float
    verified_score: float | None
    verified_at: datetime | None
    listed_since: datetime
    uptime_30d_pct: float | None
    """Percent of the last 30 days (or of its life, if shorter) it was up, over the minutes
    recorded so far; None while none is."""
    uptime_by_day: list[UptimeDay]


@router.get("/devices/{device_id}")
async def public_device(
    device_id: uuid.UUID, session: SessionDep, runtime: RuntimeDep
) -> PublicDevice:
    """One machine of the pool: proof score, reliability and 30 days of uptime."""
    device = await session.get(Device, device_id)
    if device is None:
        raise NotFound("No such device")
    now = utcnow()
    first = (now - timedelta(days=DAYS - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    # Up to the newest minute surely written: later ones are not down, only not flushed yet.
    window = service.uptime_window(runtime.settings, device, now)
    written = window[1] if window is not None else first
    day = func.date_trunc("day", DeviceUptimeMinute.minute)
    rows = await session.execute(
        select(day, func.sum(DeviceUptimeMinute.seconds_up))
        .where(
            DeviceUptimeMinute.device_id == device.id,
            DeviceUptimeMinute.minute >= first,
            DeviceUptimeMinute.minute < written,
        )
        .group_by(day)
    )
    up = {d.date(): int(s or 0) for d, s in rows.all()}
    series = []
    for i in range(DAYS):
        start = first + timedelta(days=i)
        end = min(start + timedelta(days=1), written)
        begin = max(start, device.created_at)
        if end <= begin:
            continue
        pct = 100.0 * up.get(start.date(), 0) / (end - begin).total_seconds()
        series.append(UptimeDay(day=start, uptime_pct=round(min(pct, 100.0), 2)))
    uptime = await service.uptime_fraction_30d(session, runtime.settings, device)
    return PublicDevice(
        id=device.id,
        status=str(device.status),
        gpu_model=device.gpu_model,
        gpu_count=device.gpu_count,
        vram_mb_per_gpu=device.vram_bytes_per_gpu // (1024 * 1024),
        cpu_cores=device.cpu_cores,
        region=device.region,
        country=device.country,
        connectivity_tier=device.connectivity_tier,
        price_per_gpu_hour_micro=device.price_per_gpu_hour_micro,
        reliability=device.reliability,
        verified_score=device.verified_score,
        verified_at=device.verified_at,
        listed_since=device.created_at,
        uptime_30d_pct=None if uptime is None else round(100.0 * uptime, 3),
        uptime_by_day=series,
    )
