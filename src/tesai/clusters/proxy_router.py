"""HTTP routes of the Ray proxy: ``/api/v1/clusters/{id}/ray/<path>``, HTTP and WebSocket, and
the dashboard sessions that open it in a browser tab.

Everything Ray's own tooling does goes through here unchanged: ``ray job submit``
(``--working-dir`` packages are streamed to the head under their own size limit,
``Settings.ray_upload_max_bytes``), ``ray job logs -f`` and the log tail of ``ray job submit``
without ``--no-wait`` (a WebSocket, carried both ways), ``ray job list/status/stop``, the
dashboard. The customer authenticates with the ``Authorization`` header (access token or API
key) on every request and WebSocket; the dashboard cookie (``tesai.clusters.dashboard``)
allows HTTP reads only. Toward the head, the customer's credentials are replaced with the
cluster's Ray token, and only the address the control plane recorded for the head is used
(``tesai.clusters.head_address``). Ray Client (``ray://``, gRPC) is not carried: the Jobs API
is the supported path (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlencode

import httpx
import structlog
from fastapi import APIRouter, Request, Response, WebSocket
from fastapi.responses import HTMLResponse, StreamingResponse
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tesai.auth.deps import CurrentPrincipal, OptionalPrincipal, RuntimeDep
from tesai.auth.errors import MissingRole
from tesai.auth.principal import (
    API_KEY_PREFIX,
    Principal,
    authenticate_access_token,
    authenticate_api_key,
    session_principal,
)
from tesai.auth.tokens import runtime_signing_key
from tesai.clusters import dashboard, ray_api, service
from tesai.clusters.canary import SUBMISSION_PREFIX as CANARY_PREFIX
from tesai.clusters.errors import CanaryJobProtected, ClusterNotReady
from tesai.clusters.schemas import DashboardSessionOut
from tesai.errors import AppError, TokenInvalid, Unauthorized, problem_response
from tesai.kit.time import utcnow
from tesai.runtime import Runtime

router = APIRouter(tags=["clusters"])

log = structlog.get_logger(__name__)

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
    await ray_api.find_upstream(runtime, principal.user.id, cluster_id)  # 404 / 409 first
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


def _customer(principal: Principal) -> uuid.UUID:
    if "customer" not in principal.user.roles:
        raise MissingRole("This needs the customer role", role="customer")
    return principal.user.id


async def _proxy_user(
    request: Request, runtime: Runtime, principal: Principal | None, cluster_id: uuid.UUID
) -> uuid.UUID:
    """Who is calling the proxy: the Authorization header, else (reads only) the cookie."""
    if principal is not None:
        return _customer(principal)
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
    return _customer(user)


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length != "0"
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


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
    Bodies stream both ways: an upload is never held whole here (its size limit is the body
    limit middleware's: ``ray_upload_max_bytes`` for packages, ``max_body_bytes`` else).
    """
    ticket = request.query_params.get("ticket")
    if ticket is not None and request.method == "GET":
        return await _redeem_ticket(request, runtime, cluster_id, path, ticket)
    user_id = await _proxy_user(request, runtime, principal, cluster_id)
    if request.method not in ("GET", "HEAD") and CANARY_PREFIX in path:
        raise CanaryJobProtected("The control plane's canary jobs cannot be stopped or deleted")
    up = await ray_api.find_upstream(runtime, user_id, cluster_id)
    client = ray_api.http_client(runtime)
    headers = ray_api.forward_headers(request.headers.items(), up.token)
    content = None
    if _has_body(request):
        content = request.stream()
        if "content-length" in request.headers:
            headers["Content-Length"] = request.headers["content-length"]
    outgoing = client.build_request(
        request.method,
        f"{up.base_url}/{path}",
        params=list(request.query_params.multi_items()),
        content=content,
        headers=headers,
    )
    try:
        r = await client.send(outgoing, stream=True)
    except httpx.HTTPError as exc:
        raise ClusterNotReady(f"The cluster's head did not answer: {type(exc).__name__}") from exc
    out_headers = ray_api.response_headers(r.headers)
    if not dashboard.on_dashboard_origin(runtime.settings, request.headers.get("host")):
        # Pages from a provider's machine never run on the console's origin.
        out_headers = {
            k: v for k, v in out_headers.items() if k.lower() != "content-security-policy"
        }
        out_headers["content-security-policy"] = "sandbox"

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in r.aiter_bytes():
                yield chunk
        except httpx.HTTPError as exc:
            log.info("ray_proxy_stream_cut", cluster_id=str(cluster_id), error=type(exc).__name__)
        finally:
            await r.aclose()

    return StreamingResponse(body(), status_code=r.status_code, headers=out_headers)


# --- WebSockets (``ray job logs -f``, the log tail of ``ray job submit``) --------------------


async def _socket_user(websocket: WebSocket, runtime: Runtime) -> uuid.UUID:
    """The customer behind a WebSocket: the same header credentials as any API call (no
    cookie: a WebSocket is not one of the dashboard session's reads)."""
    api_key = websocket.headers.get("x-api-key")
    scheme, _, credential = websocket.headers.get("authorization", "").partition(" ")
    credential = credential.strip()
    if api_key:
        principal = await authenticate_api_key(runtime, api_key)
    elif scheme.lower() == "bearer" and credential:
        if credential.startswith(API_KEY_PREFIX):
            principal = await authenticate_api_key(runtime, credential)
        else:
            principal = await authenticate_access_token(runtime, credential)
    else:
        raise Unauthorized("Authentication required: send Authorization: Bearer <token>")
    return _customer(principal)


async def _refuse(websocket: WebSocket, response: Response, code: str) -> None:
    """Answer the handshake with an HTTP response (the ASGI denial extension) when the server
    can, else close it (1008, policy violation)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=1008, reason=code[:120])


@router.websocket("/clusters/{cluster_id}/ray/{path:path}")
async def ray_proxy_socket(websocket: WebSocket, cluster_id: uuid.UUID, path: str) -> None:
    """Carry a WebSocket to the cluster's Ray dashboard, authenticated like the HTTP proxy."""
    runtime: Runtime = websocket.app.state.runtime
    try:
        user_id = await _socket_user(websocket, runtime)
        up = await ray_api.find_upstream(runtime, user_id, cluster_id)
        upstream = await ray_api.open_socket(
            runtime, up, path, websocket.url.query, websocket.scope.get("subprotocols") or []
        )
    except AppError as exc:
        problem = problem_response(exc.to_problem(websocket.url.path), exc.headers)
        await _refuse(websocket, problem, exc.code)
        return
    except InvalidStatus as exc:
        # The head refused the handshake (an unknown job: 404): pass its answer on.
        answer = Response(exc.response.body or b"", status_code=exc.response.status_code)
        await _refuse(websocket, answer, f"ray_{exc.response.status_code}")
        return
    except (OSError, TimeoutError, ConnectionClosed) as exc:
        error = ClusterNotReady(f"The cluster's head did not answer: {type(exc).__name__}")
        problem = problem_response(error.to_problem(websocket.url.path))
        await _refuse(websocket, problem, error.code)
        return
    async with upstream:
        await _relay(websocket, upstream)


async def _relay(websocket: WebSocket, upstream: ClientConnection) -> None:
    """Copy messages both ways until either side closes; then close the other with the
    same code."""
    await websocket.accept(subprotocol=upstream.subprotocol)

    async def head_to_customer() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in upstream:
                if isinstance(message, str):
                    await websocket.send_text(message)
                else:
                    await websocket.send_bytes(message)

    async def customer_to_head() -> None:
        with contextlib.suppress(WebSocketDisconnect, ConnectionClosed):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await upstream.send(message["text"])
                elif message.get("bytes") is not None:
                    await upstream.send(message["bytes"])

    tasks = [
        asyncio.create_task(head_to_customer()),
        asyncio.create_task(customer_to_head()),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            log.warning("ray_proxy_socket_failed", error=repr(outcome)[:300])
    if tasks[0] in done:
        # The head ended it (a finished job's log tail): the customer hears the same.
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(
                code=_relayed_close_code(upstream.close_code),
                reason=(upstream.close_reason or "")[:120],
            )
    else:
        await upstream.close()


def _relayed_close_code(code: int | None) -> int:
    """The head's close code as one that may be sent: 1005 (none given) → 1000; 1006 and
    1015 (the connection broke) → 1011."""
    if code is None or code == 1005:
        return 1000
    if code in (1006, 1015):
        return 1011
    return code
