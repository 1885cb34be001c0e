"""HTTP routes of clusters: offers and quotes, clusters, jobs and the Ray proxy.

Customer routes live at ``/api/v1/offers``, ``/api/v1/quotes`` and ``/api/v1/clusters`` so
that ``ray job submit --address https://HOST/api/v1/clusters/ID/ray`` reads naturally.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy import select

from tesai.audit.service import record as audit
from tesai.auth.deps import (
    AdminUser,
    CurrentPrincipal,
    CustomerUser,
    OptionalPrincipal,
    RuntimeDep,
)
from tesai.auth.errors import MissingRole
from tesai.auth.principal import Principal, session_principal
from tesai.auth.tokens import runtime_signing_key
from tesai.billing.idempotency import (
    Answer,
    IdempotencyKeyHeader,
    idempotent_call,
    run_once,
)
from tesai.clusters import dashboard, ray_api, service
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
    DashboardSessionOut,
    ExtendCluster,
    JobOut,
    JobSubmit,
    NodeOut,
    QuoteOut,
)
from tesai.db import SessionDep
from tesai.errors import NotFound, TokenInvalid, Unauthorized
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


@router.post(
    "/clusters/{cluster_id}/dashboard-session",
    responses={409: {"description": "the head is not ready"}},
)
async def open_dashboard_session(
    cluster_id: uuid.UUID, principal: CurrentPrincipal, runtime: RuntimeDep
) -> DashboardSessionOut:
    """A URL that opens the cluster's Ray dashboard in a browser tab.

    It carries a one-time ticket valid 60 s; opening it sets a read-only cookie for this
    cluster's proxy (at most 1 h, never beyond the cluster) and redirects to the dashboard.
    Needs a signed-in session (an API key gets 403: send it as a header to Ray tooling).
    """
    if "customer" not in principal.user.roles:
        raise MissingRole("This needs the customer role", role="customer")
    if principal.kind != "user":
        raise dashboard.ApiKeyCannotOpenDashboard(
            "Open the dashboard from a signed-in session; API keys work as a header"
        )
    origin = runtime.settings.dashboard_origin
    if origin is None:
        raise dashboard.DashboardOriginNotConfigured(
            "Dashboards open in a browser on their own origin: set TESAI_DASHBOARD_URL. "
            "Ray tooling reaches the dashboard with a token meanwhile"
        )
    await _upstream(runtime, principal.user.id, cluster_id)  # 404 / 409 before a ticket
    now = int(utcnow().timestamp())
    key = runtime_signing_key(runtime.state, runtime.settings)
    ticket = dashboard.issue_ticket(
        key, runtime.settings, principal.user.id, cluster_id, principal.session_id, now
    )
    path = f"{dashboard.proxy_path(cluster_id)}?{urlencode({'ticket': ticket})}"
    return DashboardSessionOut(
        url=f"{origin}{path}",
        expires_at=datetime.fromtimestamp(now + dashboard.TICKET_TTL_S, UTC),
    )


async def _redeem_ticket(
    request: Request, runtime: Runtime, cluster_id: uuid.UUID, path: str, ticket: str
) -> Response:
    """Trade a ticket for the session cookie and redirect to the page without the ticket."""
    _require_dashboard_origin(request, runtime)
    key = runtime_signing_key(runtime.state, runtime.settings)
    claims = dashboard.verify_ticket(key, runtime.settings, ticket, cluster_id)
    if not await runtime.cache.set(
        dashboard.ticket_used_key(claims.jti),
        b"1",
        ttl_s=dashboard.TICKET_TTL_S + 60,
        only_new=True,
    ):
        raise TokenInvalid("This dashboard link was already used; open it again from the console")
    user = await session_principal(runtime, claims.user_id, claims.family_id)
    async with runtime.sessionmaker() as session:
        cluster = await service.get_cluster(session, user.user.id, cluster_id)
    now = int(utcnow().timestamp())
    expires_at = dashboard.session_expiry(now, cluster.ends_at)
    if expires_at <= now:
        raise ClusterNotReady("The cluster has ended")
    cookie = dashboard.issue_session(key, runtime.settings, claims, expires_at)
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "ticket"]
    target = dashboard.proxy_path(cluster_id) + path + (f"?{urlencode(rest)}" if rest else "")
    # A page that moves on by itself rather than a 303: the tab came from the console's
    # origin, and browsers withhold SameSite=Strict cookies all along a redirect chain that
    # started on another site; the refresh starts on this origin, so the cookie goes with it.
    href = html.escape(target, quote=True)
    response = HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="0;url={href}">'
        f"<title>Opening the Ray dashboard…</title></head>"
        f'<body><p><a href="{href}">Open the Ray dashboard</a></p></body></html>',
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )
    response.set_cookie(
        dashboard.COOKIE_NAME,
        cookie,
        max_age=expires_at - now,
        path=dashboard.proxy_path(cluster_id),
        secure=request.url.scheme == "https"
        or str(runtime.settings.dashboard_origin).startswith("https:"),
        httponly=True,
        samesite="strict",
    )
    return response


def _require_dashboard_origin(request: Request, runtime: Runtime) -> None:
    """Tickets and cookies count only on the dashboard origin (``tesai.clusters.dashboard``)."""
    if not dashboard.on_dashboard_origin(runtime.settings, request.headers.get("host")):
        raise TokenInvalid("Dashboard links and cookies work on the dashboard origin only")


async def _proxy_user(
    request: Request, runtime: Runtime, principal: Principal | None, cluster_id: uuid.UUID
) -> uuid.UUID:
    """Who is calling the proxy: the Authorization header, else (reads only) the cookie."""
    if principal is not None:
        if "customer" not in principal.user.roles:
            raise MissingRole("This needs the customer role", role="customer")
        return principal.user.id
    cookie = request.cookies.get(dashboard.COOKIE_NAME)
    if cookie is None:
        raise Unauthorized("Authentication required")
    _require_dashboard_origin(request, runtime)
    if request.method not in dashboard.READ_METHODS:
        raise dashboard.DashboardSessionReadOnly(
            "The dashboard cookie only allows reading; send Authorization: Bearer to write"
        )
    key = runtime_signing_key(runtime.state, runtime.settings)
    claims = dashboard.verify_session(key, runtime.settings, cookie, cluster_id)
    user = await session_principal(runtime, claims.user_id, claims.family_id)
    if "customer" not in user.user.roles:
        raise MissingRole("This needs the customer role", role="customer")
    return user.user.id


@router.api_route(
    "/clusters/{cluster_id}/ray/{path:path}", methods=PROXY_METHODS, include_in_schema=False
)
async def ray_proxy(
    cluster_id: uuid.UUID,
    path: str,
    request: Request,
    principal: OptionalPrincipal,
    runtime: RuntimeDep,
) -> Response:
    """Forward to the cluster's Ray dashboard with the cluster's Ray token.

    Credentials: the Authorization header (any method), or the dashboard cookie (GET and
    HEAD only); ``?ticket=`` on a GET sets that cookie (see ``tesai.clusters.dashboard``).
    """
    ticket = request.query_params.get("ticket")
    if ticket is not None and request.method == "GET":
        return await _redeem_ticket(request, runtime, cluster_id, path, ticket)
    user_id = await _proxy_user(request, runtime, principal, cluster_id)
    up = await _upstream(runtime, user_id, cluster_id)
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
    headers = ray_api.response_headers(r.headers)
    if not dashboard.on_dashboard_origin(runtime.settings, request.headers.get("host")):
        # Pages from a provider's machine never run on the console's origin.
        headers = {k: v for k, v in headers.items() if k.lower() != "content-security-policy"}
        headers["content-security-policy"] = "sandbox"
    return Response(r.content, status_code=r.status_code, headers=headers)
