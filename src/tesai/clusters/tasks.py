"""Periodic work of clusters (thin: the logic is in ``reconcile``, ``evidence``, ``canary`` and
``usage``)."""

from __future__ import annotations

import uuid
from typing import Any

from tesai.clusters import canary, evidence, jobs, reconcile, usage
from tesai.settings import get_settings
from tesai.tasks import TaskContext, periodic, task

_settings = get_settings()


@periodic("clusters.reconcile", every_s=1.0)
async def reconcile_clusters(ctx: TaskContext) -> dict[str, int]:
    """Joins, health, replacements and budgets of every active cluster; then jobs waiting
    to be resubmitted on a re-formed cluster."""
    result = await reconcile.reconcile(ctx)
    result["resubmitted"] = await jobs.resubmit_jobs(ctx)
    return result


@periodic("clusters.ray_evidence", every_s=_settings.ray_evidence_interval_s)
async def gather_ray_evidence(ctx: TaskContext) -> dict[str, int]:
    """Read every live head's Ray node list: the control plane's own evidence that a node
    is alive (what makes a cluster running and a node billed)."""
    return await evidence.gather(ctx)


@periodic("clusters.canary", every_s=1.0)
async def schedule_canaries(ctx: TaskContext) -> dict[str, int]:
    """Start the canary rounds that are due, at random times per running cluster: the
    control plane's own evidence that each node runs tasks."""
    return await canary.schedule(ctx)


@task("clusters.canary_round")
async def canary_round(ctx: TaskContext, cluster_id: str) -> dict[str, Any]:
    """One canary round of a cluster (a job on its head, answers judged per node)."""
    return await canary.run_round(ctx, uuid.UUID(cluster_id))


@periodic("clusters.meter", every_s=_settings.metering_interval_s)
async def meter_usage(ctx: TaskContext) -> dict[str, Any]:
    """Bill every running node's healthy seconds; pay providers for each minute that closed."""
    return await usage.meter_all(ctx)


@periodic("clusters.settle", every_s=_settings.settle_interval_s)
async def settle_usage(ctx: TaskContext) -> dict[str, Any]:
    """Settle the usage the metering tick could not; stop clusters whose hold is spent."""
    return await usage.settle_all(ctx)
