"""Jobs resubmitted after a lost head: sent to the re-formed cluster once it runs again.

When a cluster's head is lost, the reconciler gives each job that may retry a fresh
``submission_id`` and flags it ``resubmit`` (see ``reconcile._Applier._head_lost``). This
pass submits flagged jobs of running clusters to their new head, with no transaction open
during the call. Ray refuses a second submission with the same id, so two workers running
this at once, or a retry after a lost answer, start the job once. The head's address is
checked like the proxy's (``tesai.clusters.head_address``): the cluster's token goes to no
address the control plane must not connect to.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import structlog
from sqlalchemy import select, update

from tesai.clusters import ray_api
from tesai.clusters.head_address import HeadAddressRefused, check_dashboard_url
from tesai.clusters.models import Cluster, ClusterNode, ClusterStatus, Job, NodeRole, NodeState
from tesai.clusters.service import secret_box
from tesai.tasks import TaskContext

log = structlog.get_logger(__name__)


async def resubmit_jobs(ctx: TaskContext) -> int:
    """Submit every flagged job of a running cluster to its head; returns how many went."""
    async with ctx.sessionmaker() as session:
        rows = (
            await session.execute(
                select(
                    Job.id,
                    Job.cluster_id,
                    Job.submission_id,
                    Job.entrypoint,
                    Job.runtime_env,
                    Job.job_metadata,
                    ClusterNode.dashboard_url,
                    Cluster.ray_token_sealed,
                )
                .join(Cluster, Cluster.id == Job.cluster_id)
                .join(
                    ClusterNode,
                    (ClusterNode.cluster_id == Cluster.id)
                    & (ClusterNode.role == NodeRole.head)
                    & (ClusterNode.state == NodeState.running)
                    & ClusterNode.released_at.is_(None),
                )
                .where(
                    Job.resubmit.is_(True),
                    Cluster.status == ClusterStatus.running,
                    ClusterNode.dashboard_url.is_not(None),
                )
            )
        ).all()
    if not rows:
        return 0
    box = secret_box(ctx.settings)
    sent = 0
    async with httpx.AsyncClient(
        timeout=ctx.settings.ray_proxy_timeout_s, trust_env=False
    ) as client:
        for job_id, cluster_id, sub, entrypoint, env, meta, url, sealed in rows:
            try:
                checked = check_dashboard_url(ctx.settings, url)
            except HeadAddressRefused as exc:
                log.warning(
                    "job_resubmit_refused",
                    submission_id=sub,
                    cluster_id=str(cluster_id),
                    reason=exc.extra.get("reason"),
                )
                continue
            up = ray_api.Upstream(cluster_id, checked, box.open(sealed))
            if await _submit(client, up, sub, entrypoint, env, meta):
                sent += await _submitted(ctx, job_id, sub)
    return sent


async def _submit(
    client: httpx.AsyncClient,
    up: ray_api.Upstream,
    submission_id: str,
    entrypoint: str,
    runtime_env: dict[str, Any] | None,
    metadata: dict[str, str] | None,
) -> bool:
    try:
        await ray_api.post_job(client, up, entrypoint, runtime_env, metadata, submission_id)
    except httpx.HTTPStatusError as exc:
        if "already exists" in exc.response.text:
            return True  # an earlier try reached the head
        log.warning(
            "job_resubmit_refused", submission_id=submission_id, detail=exc.response.text[:300]
        )
        return False
    except httpx.HTTPError as exc:
        log.info("job_resubmit_retry", submission_id=submission_id, error=type(exc).__name__)
        return False
    return True


async def _submitted(ctx: TaskContext, job_id: uuid.UUID, submission_id: str) -> int:
    async with ctx.sessionmaker.begin() as session:
        result = await session.execute(
            update(Job)
            .where(Job.id == job_id, Job.submission_id == submission_id, Job.resubmit.is_(True))
            .values(resubmit=False)
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
