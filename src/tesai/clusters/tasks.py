"""Periodic work of clusters (thin: the logic is in ``reconcile``)."""

from __future__ import annotations

from typing import Any

from tesai.clusters import jobs, reconcile
from tesai.tasks import TaskContext, periodic


@periodic("clusters.reconcile", every_s=1.0)
async def reconcile_clusters(ctx: TaskContext) -> dict[str, int]:
    """Joins, health, replacements, metering and settlement of every active cluster; then
    jobs waiting to be resubmitted on a re-formed cluster."""
    result = await reconcile.reconcile(ctx)
    result["resubmitted"] = await jobs.resubmit_jobs(ctx)
    return result


@periodic("clusters.settle", every_s=60.0)
async def settle_usage(ctx: TaskContext) -> dict[str, Any]:
    """Pay providers for every complete minute of healthy node time, from the holds."""
    return await reconcile.settle_all(ctx)
