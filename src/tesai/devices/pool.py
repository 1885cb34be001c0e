"""Public pool statistics: what is online, by GPU model and region, and how busy it is.

Cheap by construction: one indexed query over live devices, one MGET of their latest
telemetry, and the answer cached for ``pool_stats_ttl_s`` so a busy landing page costs one
cache read per request.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.devices import keys
from tesai.devices.models import Device, DeviceStatus
from tesai.devices.schemas import PoolGroup, PoolStats
from tesai.kit.cache import Cache
from tesai.kit.time import utcnow
from tesai.settings import Settings


@dataclass
class _Group:
    devices: int = 0
    gpus: int = 0
    utils: list[float] = field(default_factory=list)
    prices: list[int] = field(default_factory=list)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


async def pool_stats(session: AsyncSession, cache: Cache, settings: Settings) -> PoolStats:
    """Pool statistics over online and busy devices (cached for a few seconds)."""
    cached = await cache.get(keys.POOL)
    if cached is not None:
        return PoolStats.model_validate_json(cached)
    rows = (
        await session.execute(
            select(
                Device.id,
                Device.gpu_model,
                Device.gpu_count,
                Device.region,
                Device.cpu_cores,
                Device.price_per_gpu_hour_micro,
            ).where(Device.status.in_([DeviceStatus.online, DeviceStatus.busy]))
        )
    ).all()
    latest = await cache.mget([keys.telemetry(str(r.id)) for r in rows])
    groups: dict[tuple[str, str | None], _Group] = defaultdict(_Group)
    gpu_utils: list[float] = []
    cpu_percents: list[float] = []
    cpu_devices = cpu_cores = gpus_online = gpu_devices = 0
    cpu_prices: list[int] = []
    for row, raw in zip(rows, latest, strict=True):
        util: float | None = None
        if raw is not None:
            tel = orjson.loads(raw).get("telemetry") or {}
            if "cpu_percent" in tel:
                cpu_percents.append(float(tel["cpu_percent"]))
            per_gpu = [g["utilization_pct"] for g in tel.get("gpus", []) if "utilization_pct" in g]
            if per_gpu:
                util = sum(per_gpu) / len(per_gpu)
        if row.gpu_count > 0 and row.gpu_model:
            gpu_devices += 1
            gpus_online += row.gpu_count
            g = groups[(row.gpu_model, row.region)]
            g.devices += 1
            g.gpus += row.gpu_count
            g.prices.append(row.price_per_gpu_hour_micro)
            if util is not None:
                g.utils.append(util)
                gpu_utils.append(util)
        else:
            cpu_devices += 1
            cpu_cores += row.cpu_cores
            cpu_prices.append(row.price_per_gpu_hour_micro)
    now: datetime = utcnow()
    stats = PoolStats(
        gpus_online=gpus_online,
        gpu_devices_online=gpu_devices,
        cpu_devices_online=cpu_devices,
        cpu_cores_online=cpu_cores,
        avg_gpu_utilization_pct=_mean(gpu_utils),
        avg_cpu_percent=_mean(cpu_percents),
        by_model_region=sorted(
            (
                PoolGroup(
                    gpu_model=model,
                    region=region,
                    devices=g.devices,
                    gpus=g.gpus,
                    avg_utilization_pct=_mean(g.utils),
                    min_price_per_gpu_hour_micro=min(g.prices),
                )
                for (model, region), g in groups.items()
            ),
            key=lambda p: (p.gpu_model, p.region or ""),
        ),
        min_cpu_price_per_hour_micro=min(cpu_prices, default=None),
        platform_fee_bps=settings.platform_fee_bps,
        computed_at=now,
    )
    await cache.set(keys.POOL, stats.model_dump_json(), ttl_s=settings.pool_stats_ttl_s)
    return stats
