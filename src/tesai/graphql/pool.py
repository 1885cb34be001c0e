"""Read models of the devices domain: ``pool`` (public statistics, no credentials)."""

from __future__ import annotations

from datetime import datetime

import strawberry

from tesai.devices.pool import pool_stats
from tesai.devices.schemas import PoolStats
from tesai.graphql.context import GraphQLContext
from tesai.graphql.scalars import MicroUsdc


@strawberry.type
class PoolGroup:
    """Online GPUs of one model in one region."""

    gpu_model: str
    region: str | None
    devices: int
    gpus: int
    avg_utilization_pct: float | None
    min_price_per_gpu_hour_micro: MicroUsdc = strawberry.field(
        description="Lowest provider price per GPU-hour."
    )


@strawberry.type
class Pool:
    """What the pool offers right now (refreshed every few seconds)."""

    gpus_online: int
    gpu_devices_online: int
    cpu_devices_online: int
    cpu_cores_online: int
    avg_gpu_utilization_pct: float | None
    avg_cpu_percent: float | None
    by_model_region: list[PoolGroup]
    computed_at: datetime


def pool_type(stats: PoolStats) -> Pool:
    return Pool(
        gpus_online=stats.gpus_online,
        gpu_devices_online=stats.gpu_devices_online,
        cpu_devices_online=stats.cpu_devices_online,
        cpu_cores_online=stats.cpu_cores_online,
        avg_gpu_utilization_pct=stats.avg_gpu_utilization_pct,
        avg_cpu_percent=stats.avg_cpu_percent,
        by_model_region=[
            PoolGroup(
                gpu_model=g.gpu_model,
                region=g.region,
                devices=g.devices,
                gpus=g.gpus,
                avg_utilization_pct=g.avg_utilization_pct,
                min_price_per_gpu_hour_micro=MicroUsdc(g.min_price_per_gpu_hour_micro),
            )
            for g in stats.by_model_region
        ],
        computed_at=stats.computed_at,
    )


async def resolve_pool(info: strawberry.Info[GraphQLContext, None]) -> Pool:
    ctx = info.context
    async with ctx.db() as session:
        stats = await pool_stats(session, ctx.runtime.cache, ctx.runtime.settings)
    return pool_type(stats)


@strawberry.type
class Query:
    pool: Pool = strawberry.field(
        resolver=resolve_pool,
        description="Public pool statistics (same as GET /api/v1/public/pool).",
    )
