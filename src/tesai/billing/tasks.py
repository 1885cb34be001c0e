"""Periodic billing work: forget API idempotency answers past their retention; enforce the
spend guardrails (budget and monthly-cap warnings, clusters stopped at the cap)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete

from tesai.billing import guardrails
from tesai.billing.models import IdempotencyRecord
from tesai.clusters.models import Cluster
from tesai.clusters.service import terminate_cluster
from tesai.clusters.states import LIVE
from tesai.kit.time import utcnow
from tesai.notifications.service import notify
from tesai.settings import get_settings
from tesai.tasks import TaskContext, periodic

_settings = get_settings()


@periodic("billing.cleanup_idempotency", every_s=3600)
async def cleanup_idempotency(ctx: TaskContext) -> dict[str, Any]:
    """Delete stored API answers older than ``idempotency_retention_days``.

    The ledger's own keys are never deleted: a movement happens once per key forever.
    """
    cutoff = utcnow() - timedelta(days=ctx.settings.idempotency_retention_days)
    async with ctx.sessionmaker() as session, session.begin():
        result = await session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff)
        )
    return {"deleted": int(getattr(result, "rowcount", 0) or 0)}


@periodic("billing.spend_guardrails", every_s=_settings.spend_guardrails_interval_s)
async def spend_guardrails(ctx: TaskContext) -> dict[str, Any]:
    """Store budget and monthly-cap warnings (once each), stop the clusters of accounts at
    their cap with reason ``spend_cap_reached``, and notify every cluster stopped for its
    budget or cap (see ``tesai.billing.guardrails``). Safe to run twice or concurrently."""
    now = utcnow()
    async with ctx.sessionmaker() as session, session.begin():
        scan = await guardrails.store_warnings(session, ctx.settings, now)
    stopped = 0
    for customer_id, over in scan.over_cap.items():
        for cluster_id in over.cluster_ids:
            # One cluster per transaction: the row lock is held only for its own change,
            # and the version bump drops any plan the reconciler made before it.
            async with ctx.sessionmaker() as session, session.begin():
                cluster = await session.get(Cluster, cluster_id, with_for_update=True)
                if cluster is None or cluster.status not in LIVE:
                    continue
                await terminate_cluster(session, cluster, "spend_cap_reached", over.detail)
                await notify(
                    session,
                    guardrails.stopped_notification(
                        customer_id,
                        cluster_id,
                        cluster.name,
                        "spend_cap_reached",
                        {"cluster_id": str(cluster_id), "detail": over.detail},
                    ),
                )
                stopped += 1
    async with ctx.sessionmaker() as session, session.begin():
        told = await guardrails.notify_stopped_clusters(session, now)
    return {
        "caps": scan.caps_checked,
        "budgets": scan.budgets_checked,
        "warnings": scan.warnings_stored,
        "stopped": stopped,
        "stop_notices": told,
    }
