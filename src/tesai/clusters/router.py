"""HTTP routes of clusters: offers and quotes, clusters, jobs and the Ray proxy.

Customer routes live at ``/api/v1/offers``, ``/api/v1/quotes`` and ``/api/v1/clusters`` so
that ``ray job submit --address https://HOST/api/v1/clusters/ID/ray`` reads naturally.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from tesai.audit.service import record as audit
from tesai.auth.deps import AdminUser, CustomerUser, RuntimeDep
from tesai.clusters import offers as offers_service
from tesai.clusters import ray_api, service
from tesai.clusters.errors import ClusterNotReady
from tesai.clusters.models import Cluster, Job, JobStatus, Quote
from tesai.clusters.pool import pool_cache
from tesai.clusters.schemas import (
    ClusterDetail,
    ClusterEventOut,
    ClusterOut,
    ClusterRequest,
    CreateCluster,
    ExtendCluster,
    JobOut,
    JobSubmit,
    NodeOut,
    QuoteOut,
)
from tesai.db import SessionDep
from tesai.errors import NotFound
from tesai.kit.time import utcnow
from tesai.runtime import Runtime

router = APIRouter(tags=["clusters"])

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
    params: Annotated[offers_service.OfferQuery, Query()],
) -> offers_service.OffersOut:
    """Bookable devices (online, verified, not rented or held by a quote), with counts."""
    return await offers_service.search(session, params)


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
    body: CreateCluster, user: CustomerUser, session: SessionDep, runtime: RuntimeDep
) -> ClusterOut:
    """Book the devices (all or none), hold the price of the whole duration, provision."""
    cluster = await service.create_cluster(session, runtime, user.id, body)
    return _cluster_out(runtime, cluster)


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
) -> ClusterOut:
    """Add time; its price is added to the hold (402 when the balance is short)."""
    cluster = await service.get_cluster(session, user.id, cluster_id, lock=True)
    await service.extend_cluster(session, runtime.settings, cluster, body.duration_s)
    return _cluster_out(runtime, cluster)


@router.post("/clusters/{cluster_id}/terminate")
async def terminate_cluster(
    cluster_id: uuid.UUID, user: CustomerUser, session: SessionDep, runtime: RuntimeDep
) -> ClusterOut:
    """Stop now: nodes are released, used time settled and the rest of the hold returned."""
    cluster = await service.get_cluster(session, user.id, cluster_id, lock=True)
    await service.terminate_cluster(session, cluster)
    return _cluster_out(runtime, cluster)


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
async def list_jobs(cluster_id: uuid.UUID, user: CustomerUser, session: SessionDep) -> list[JobOut]:
    await service.get_cluster(session, user.id, cluster_id)
    rows = await session.execute(
        select(Job).where(Job.cluster_id == cluster_id).order_by(Job.created_at.desc())
    )
    return [JobOut.model_validate(j) for j in rows.scalars()]


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


# --- the Ray proxy -------------------------------------------------------------------------------

PROXY_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]


@router.api_route(
    "/clusters/{cluster_id}/ray/{path:path}", methods=PROXY_METHODS, include_in_schema=False
)
async def ray_proxy(
    cluster_id: uuid.UUID, path: str, request: Request, user: CustomerUser, runtime: RuntimeDep
) -> Response:
    """Forward to the cluster's Ray dashboard with the cluster's Ray token."""
    up = await _upstream(runtime, user.id, cluster_id)
    body = await request.body()
    try:
        r = await ray_api.http_client(runtime).request(
            request.method,
            f"{up.base_url}/{path}",
            params=list(request.query_params.multi_items()),
            content=body,
            headers=ray_api.forward_headers(list(request.headers.items()), up.token),
        )
    except httpx.HTTPError as exc:
        raise ClusterNotReady(f"The cluster's head did not answer: {type(exc).__name__}") from exc
    return Response(
        r.content, status_code=r.status_code, headers=ray_api.response_headers(r.headers)
    )
