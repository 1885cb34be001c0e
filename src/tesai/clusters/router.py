"""HTTP routes of clusters: offers and quotes, clusters and jobs (the Ray proxy and the
dashboard sessions: ``tesai.clusters.proxy_router``).

Customer routes live at ``/api/v1/offers``, ``/api/v1/quotes`` and ``/api/v1/clusters`` so
that ``ray job submit --address https://HOST/api/v1/clusters/ID/ray`` reads naturally.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import httpx
import structlog
from fastapi import APIRouter, Query, status
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from tesai.audit.service import record as audit
from tesai.auth.deps import (
    AdminUser,
    CustomerUser,
    RuntimeDep,
)
from tesai.billing.idempotency import (
    Answer,
    IdempotencyKeyHeader,
    idempotent_call,
    run_once,
)
from tesai.clusters import job_list, ray_api, service
from tesai.clusters import offers as offers_service
from tesai.clusters.batching import Once, create_batcher
from tesai.clusters.errors import ClusterNotReady
from tesai.clusters.models import Cluster, ClusterStatus, Job, JobStatus, Quote
from tesai.clusters.pool import pool_cache
from tesai.clusters.schemas import (
    AdminClusterOut,
    ClusterDetail,
    ClusterEventOut,
    ClusterOut,
    ClusterRequest,
    CreateCluster,
    ExtendCluster,
    JobListItem,
    JobOut,
    JobSubmit,
    NodeOut,
    QuoteOut,
)
from tesai.db import SessionDep
from tesai.errors import Conflict, NotFound
from tesai.kit.time import utcnow
from tesai.runtime import Runtime

router = APIRouter(tags=["clusters"])

log = structlog.get_logger(__name__)

TERMINAL_JOB = {JobStatus.stopped.value, JobStatus.succeeded.value, JobStatus.failed.value}


class JobNotFound(NotFound):
    code = "job_not_found"


def _cluster_out(runtime: Runtime, cluster: Cluster) -> ClusterOut:
    out = ClusterOut.model_validate(cluster)
    out.ray_address = f"{runtime.settings.public_url}/api/v1/clusters/{cluster.id}/ray"
    return out


def _quote_out(quote: Quote) -> QuoteOut:
    p = quote.placement
    return QuoteOut(
        id=quote.id,
        expires_at=quote.expires_at,
        shape=p["shape"],
        region=p["region"],
        devices=p["devices"],
        hourly_micro=quote.hourly_micro,
        hourly_fee_micro=p["hourly_fee_micro"],
        hourly_total_micro=p["hourly_total_micro"],
        compute_micro=p["compute_micro"],
        fee_micro=quote.fee_micro,
        total_micro=quote.total_micro,
        reasons=p["reasons"],
    )


# --- offers and quotes --------------------------------------------------------------------------


@router.get("/offers", response_model=offers_service.OffersOut)
async def list_offers(
    session: SessionDep,
    runtime: RuntimeDep,
    params: Annotated[offers_service.OfferQuery, Query()],
) -> offers_service.OffersOut:
    """Bookable devices (online, verified, not rented or held by a quote), with counts and
    the platform fee added on top of their listed prices."""
    return await offers_service.search(session, params, fee_bps=runtime.settings.platform_fee_bps)


@router.post(
    "/quotes", status_code=status.HTTP_201_CREATED, responses={409: {"description": "no capacity"}}
)
async def create_quote(
    body: ClusterRequest, user: CustomerUser, session: SessionDep, runtime: RuntimeDep
) -> QuoteOut:
    """Price a request and hold its devices for ``quote_ttl_s`` (default 60 s)."""
    quote = await service.create_quote(
        session, runtime.settings, user.id, body, pool=pool_cache(runtime.state)
    )
    return _quote_out(quote)


# --- clusters ----------------------------------------------------------------------------------


@router.post("/clusters", status_code=status.HTTP_201_CREATED)
async def create_cluster(
    body: CreateCluster,
    user: CustomerUser,
    runtime: RuntimeDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> ClusterOut:
    """Book the devices (all or none), hold the price of the whole duration, provision.

    Committed with the other creations this process has in flight (group commit, see
    ``tesai.clusters.batching``) before the answer is sent. With an ``Idempotency-Key`` a
    retry gets the first answer (the same cluster) and the key with another body 409
    ``idempotency_key_reused``; without one, every call books a cluster."""
    batcher = create_batcher(runtime)
    call = idempotent_call(
        user_id=user.id,
        route="POST /clusters",
        key=idempotency_key,
        params=body.model_dump(mode="json"),
        required=False,
    )
    if call is None:
        return _cluster_out(runtime, await batcher.create(user.id, body))
    result = await batcher.create_once(
        user.id, body, Once(call, lambda cluster: _cluster_out(runtime, cluster))
    )
    if isinstance(result, Answer):
        return ClusterOut.model_validate(result.body)
    return _cluster_out(runtime, result)


@router.get("/clusters")
async def list_clusters(
    user: CustomerUser, session: SessionDep, runtime: RuntimeDep
) -> list[ClusterOut]:
    return [_cluster_out(runtime, c) for c in await service.list_clusters(session, user.id)]


@router.get("/clusters/{cluster_id}")
async def get_cluster(
    cluster_id: uuid.UUID, user: CustomerUser, session: SessionDep, runtime: RuntimeDep
) -> ClusterDetail:
    cluster = await service.get_cluster(session, user.id, cluster_id)
    base = _cluster_out(runtime, cluster)
    return ClusterDetail(
        **base.model_dump(),
        nodes=[NodeOut.model_validate(n) for n in await service.nodes_of(session, cluster_id)],
        events=[
            ClusterEventOut.model_validate(e) for e in await service.events_of(session, cluster_id)
        ],
    )


@router.post("/clusters/{cluster_id}/extend")
async def extend_cluster(
    cluster_id: uuid.UUID,
    body: ExtendCluster,
    user: CustomerUser,
    session: SessionDep,
    runtime: RuntimeDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> ClusterOut:
    """Add time; its price is added to the hold (402 when the balance is short).

    With an ``Idempotency-Key`` the time is added once per key (a retry gets the first
    answer, the key with another body or cluster 409 ``idempotency_key_reused``); without
    one, every call adds time."""

    async def run() -> ClusterOut:
        cluster = await service.get_cluster(session, user.id, cluster_id, lock=True)
        await service.extend_cluster(session, runtime.settings, cluster, body.duration_s)
        return _cluster_out(runtime, cluster)

    if idempotency_key is None:
        return await run()
    _, answer = await run_once(
        session,
        user_id=user.id,
        route="POST /clusters/{cluster_id}/extend",
        key=idempotency_key,
        params={"cluster_id": str(cluster_id), **body.model_dump(mode="json")},
        run=run,
    )
    return ClusterOut.model_validate(answer)


@router.post("/clusters/{cluster_id}/terminate")
async def terminate_cluster(
    cluster_id: uuid.UUID, user: CustomerUser, session: SessionDep, runtime: RuntimeDep
) -> ClusterOut:
    """Stop now: nodes are released, used time settled and the rest of the hold returned."""
    cluster = await service.get_cluster(session, user.id, cluster_id, lock=True)
    await service.terminate_cluster(session, cluster)
    return _cluster_out(runtime, cluster)


@router.get("/internal/clusters", tags=["internal"])
async def admin_list_clusters(
    admin: AdminUser,
    session: SessionDep,
    runtime: RuntimeDep,
    status: ClusterStatus | None = None,
    customer_id: uuid.UUID | None = None,
    before: Annotated[
        datetime | None, Query(description="Page: clusters created before this instant")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[AdminClusterOut]:
    """Admin: every customer's clusters, newest first, by status and customer."""
    clusters = await service.all_clusters(
        session, status=status, customer_id=customer_id, before=before, limit=limit
    )
    return [
        AdminClusterOut(**_cluster_out(runtime, c).model_dump(), customer_id=c.customer_id)
        for c in clusters
    ]


@router.post("/internal/clusters/{cluster_id}/terminate", tags=["internal"])
async def force_terminate_cluster(
    cluster_id: uuid.UUID,
    admin: AdminUser,
    session: SessionDep,
    runtime: RuntimeDep,
    reason: Annotated[str, Query(max_length=200)] = "",
) -> ClusterOut:
    """Admin: terminate any cluster, with a reason kept in its events."""
    cluster = await service.get_cluster(session, None, cluster_id, lock=True)
    await service.terminate_cluster(session, cluster, "admin_terminated", reason)
    await audit(
        session,
        action="ops.cluster_terminate",
        actor_user_id=admin.id,
        subject_type="cluster",
        subject_id=cluster.id,
        details={"reason": reason},
    )
    return _cluster_out(runtime, cluster)


# --- jobs ----------------------------------------------------------------------------------------


async def _upstream(
    runtime: Runtime, customer_id: uuid.UUID, cluster_id: uuid.UUID
) -> ray_api.Upstream:
    async with runtime.sessionmaker() as session:
        return await ray_api.upstream_for(session, runtime, customer_id, cluster_id)


async def _job(
    runtime: Runtime, customer_id: uuid.UUID, cluster_id: uuid.UUID, job_id: uuid.UUID
) -> Job:
    async with runtime.sessionmaker() as session:
        await service.get_cluster(session, customer_id, cluster_id)
        job = await session.get(Job, job_id)
        if job is None or job.cluster_id != cluster_id:
            raise JobNotFound("No such job")
        return job


async def _refresh(runtime: Runtime, up: ray_api.Upstream, job: Job) -> Job:
    if job.status in TERMINAL_JOB:
        return job
    info = await ray_api.job_info(runtime, up, job.submission_id)
    if info is None:
        return job
    async with runtime.sessionmaker.begin() as session:
        row = await session.get(Job, job.id, with_for_update=True)
        assert row is not None
        row.status = str(info.get("status", row.status))
        row.message = info.get("message")
        if row.status in TERMINAL_JOB and row.finished_at is None:
            row.finished_at = utcnow()
        return row


@router.post("/clusters/{cluster_id}/jobs", status_code=status.HTTP_201_CREATED)
async def submit_job(
    cluster_id: uuid.UUID, body: JobSubmit, user: CustomerUser, runtime: RuntimeDep
) -> JobOut:
    """Submit a Ray job to the cluster (the same as `ray job submit` through the proxy)."""
    up = await _upstream(runtime, user.id, cluster_id)
    submission_id = f"tesai-{uuid.uuid4().hex[:16]}"
    try:
        await ray_api.submit_job(
            runtime, up, body.entrypoint, body.runtime_env, body.metadata, submission_id
        )
    except httpx.HTTPStatusError as exc:
        raise ClusterNotReady(f"Ray refused the job: {exc.response.text[:300]}") from exc
    except httpx.HTTPError as exc:
        raise ClusterNotReady(f"The cluster's head did not answer: {type(exc).__name__}") from exc
    async with runtime.sessionmaker.begin() as session:
        job = Job(
            id=uuid.uuid4(),
            cluster_id=cluster_id,
            submission_id=submission_id,
            entrypoint=body.entrypoint,
            runtime_env=body.runtime_env,
            job_metadata=body.metadata,
            status=JobStatus.pending.value,
            max_retries=body.max_retries,
            attempts=1,
        )
        session.add(job)
    return JobOut.model_validate(job)


@router.get("/clusters/{cluster_id}/jobs")
async def list_jobs(
    cluster_id: uuid.UUID, user: CustomerUser, runtime: RuntimeDep
) -> list[JobListItem]:
    """Every job of the cluster, newest first: those submitted through TES AI and those the
    head's Ray knows from elsewhere (``ray job submit`` through the proxy), marked by
    ``submitted_via``. When the head cannot be asked, ours alone."""
    async with runtime.sessionmaker() as session:
        await service.get_cluster(session, user.id, cluster_id)
        ours = list(
            (await session.execute(select(Job).where(Job.cluster_id == cluster_id))).scalars()
        )
    ray_jobs: list[dict[str, Any]] = []
    try:
        up = await ray_api.find_upstream(runtime, user.id, cluster_id)
        ray_jobs = await ray_api.list_jobs(runtime, up)
    except (Conflict, httpx.HTTPError, ValueError) as exc:
        log.info("ray_job_list_unavailable", cluster_id=str(cluster_id), error=type(exc).__name__)
    return job_list.merge(cluster_id, ours, ray_jobs, utcnow())


@router.get("/clusters/{cluster_id}/jobs/{job_id}")
async def get_job(
    cluster_id: uuid.UUID, job_id: uuid.UUID, user: CustomerUser, runtime: RuntimeDep
) -> JobOut:
    job = await _job(runtime, user.id, cluster_id, job_id)
    if job.status not in TERMINAL_JOB:
        # Show what we know when the head cannot be asked.
        with contextlib.suppress(ClusterNotReady, httpx.HTTPError):
            job = await _refresh(runtime, await _upstream(runtime, user.id, cluster_id), job)
    return JobOut.model_validate(job)


@router.get("/clusters/{cluster_id}/jobs/{job_id}/logs", response_class=StreamingResponse)
async def job_logs(
    cluster_id: uuid.UUID,
    job_id: uuid.UUID,
    user: CustomerUser,
    runtime: RuntimeDep,
    follow: bool = False,
) -> StreamingResponse:
    """The job's logs as text; ``follow=true`` streams new lines until the job ends."""
    job = await _job(runtime, user.id, cluster_id, job_id)
    up = await _upstream(runtime, user.id, cluster_id)

    async def stream() -> AsyncIterator[bytes]:
        sent = 0
        current = job
        while True:
            try:
                text = await ray_api.job_logs(runtime, up, current.submission_id)
            except httpx.HTTPError:
                return
            if len(text) > sent:
                yield text[sent:].encode()
                sent = len(text)
            if not follow:
                return
            current = await _refresh(runtime, up, current)
            if current.status in TERMINAL_JOB:
                text = await ray_api.job_logs(runtime, up, current.submission_id)
                if len(text) > sent:
                    yield text[sent:].encode()
                return
            await asyncio.sleep(0.5)

    return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")


@router.post("/clusters/{cluster_id}/jobs/{job_id}/stop")
async def stop_job(
    cluster_id: uuid.UUID, job_id: uuid.UUID, user: CustomerUser, runtime: RuntimeDep
) -> JobOut:
    job = await _job(runtime, user.id, cluster_id, job_id)
    up = await _upstream(runtime, user.id, cluster_id)
    try:
        await ray_api.stop_job(runtime, up, job.submission_id)
        job = await _refresh(runtime, up, job)
    except httpx.HTTPError as exc:
        raise ClusterNotReady(f"The cluster's head did not answer: {type(exc).__name__}") from exc
    return JobOut.model_validate(job)
