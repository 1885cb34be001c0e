"""Talking to a cluster's Ray head: the authenticated reverse proxy and the Job REST API.

Customers never reach Ray ports. Requests to ``/api/v1/clusters/{id}/ray/<path>`` (HTTP and
WebSocket) are checked against our authentication, then forwarded to the head's dashboard
with the cluster's own Ray token in place of the customer's credential. Plain ``ray job
submit --address https://HOST/api/v1/clusters/ID/ray`` works through it, because the Ray SDK
appends its endpoints to the address.

The head's address is the control plane's own record, checked before every connection
(``tesai.clusters.head_address``); redirects are never followed, so the token goes nowhere
else. Every call here is network I/O: callers look the head up in a short session first and
call with no transaction open.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

from tesai.clusters.errors import ClusterNotReady
from tesai.clusters.head_address import HeadAddressRefused, check_dashboard_url
from tesai.clusters.models import Cluster, ClusterNode, ClusterStatus, NodeRole, NodeState
from tesai.clusters.service import get_cluster, secret_box
from tesai.runtime import Runtime

log = structlog.get_logger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
REQUEST_DROPPED = HOP_BY_HOP | {
    "host",
    # The customer's credentials stay here; the head gets the cluster's token instead.
    "authorization",
    "x-api-key",
    "x-ray-authorization",
    "cookie",
    "content-length",
    "content-encoding",
}
RESPONSE_DROPPED = HOP_BY_HOP | {
    "content-length",
    "content-encoding",
    # Ray's ``/api/authenticate`` answers with a cookie holding the cluster's token.
    "set-cookie",
}


@dataclass(frozen=True)
class Upstream:
    cluster_id: uuid.UUID
    base_url: str
    """The head's dashboard, e.g. ``http://10.0.0.5:8265``."""
    token: str


async def upstream_for(
    session: AsyncSession, runtime: Runtime, customer_id: uuid.UUID | None, cluster_id: uuid.UUID
) -> Upstream:
    """Where the cluster's Ray dashboard is; 404 for another customer's cluster, 409 when
    the head is not up yet, 409 ``head_address_refused`` (with its ``reason``) when the
    address on record is one the control plane must not connect to."""
    cluster: Cluster = await get_cluster(session, customer_id, cluster_id)
    if cluster.status not in (
        ClusterStatus.running,
        ClusterStatus.degraded,
        ClusterStatus.provisioning,
    ):
        raise ClusterNotReady(f"Cluster is {cluster.status.value}")
    head = (
        await session.execute(
            select(ClusterNode).where(
                ClusterNode.cluster_id == cluster_id,
                ClusterNode.role == NodeRole.head,
                ClusterNode.state == NodeState.running,
                ClusterNode.released_at.is_(None),
            )
        )
    ).scalar_one_or_none()
    if head is None:
        raise ClusterNotReady("The cluster's head node is not running yet")
    try:
        base_url = check_dashboard_url(runtime.settings, head.dashboard_url)
    except HeadAddressRefused as exc:
        log.warning(
            "ray_proxy_refused",
            cluster_id=str(cluster_id),
            device_id=str(head.device_id),
            reason=exc.extra.get("reason"),
        )
        raise
    token = secret_box(runtime.settings).open(cluster.ray_token_sealed)
    return Upstream(cluster_id, base_url, token)


async def find_upstream(
    runtime: Runtime, customer_id: uuid.UUID | None, cluster_id: uuid.UUID
) -> Upstream:
    """``upstream_for`` in a short session of its own (closed before any call to the head)."""
    async with runtime.sessionmaker() as session:
        return await upstream_for(session, runtime, customer_id, cluster_id)


def http_client(runtime: Runtime) -> httpx.AsyncClient:
    """One pooled client per process for talking to Ray heads (never follows redirects,
    ignores proxy settings of the environment)."""
    client = runtime.state.get("ray_http")
    if client is None:
        client = httpx.AsyncClient(
            timeout=runtime.settings.ray_proxy_timeout_s, trust_env=False, follow_redirects=False
        )
        runtime.state["ray_http"] = client
    assert isinstance(client, httpx.AsyncClient)
    return client


class _ConnectWithoutRedirects(ws_connect):
    """``websockets``' client connect, refusing to follow redirects: the token goes only to
    the address the control plane chose."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


SOCKET_MAX_MESSAGE = 16 * 1024 * 1024
"""Largest WebSocket message taken from a head (Ray's log tail sends lines in chunks)."""


async def open_socket(
    runtime: Runtime, up: Upstream, path: str, query: str, subprotocols: Sequence[str]
) -> ClientConnection:
    """Open a WebSocket to ``path`` on the head's dashboard with the cluster's token.

    Raises ``websockets.InvalidStatus`` when the head refuses the handshake, ``OSError`` or
    ``TimeoutError`` when it cannot be reached."""
    url = "ws" + up.base_url.removeprefix("http") + "/" + path + (f"?{query}" if query else "")
    connection: ClientConnection = await _ConnectWithoutRedirects(
        url,
        additional_headers={"Authorization": f"Bearer {up.token}"},
        subprotocols=[Subprotocol(p) for p in subprotocols] or None,
        proxy=None,
        # Uncompressed, as Ray's own client asks: a head (aiohttp) that compresses its log
        # tail closes it without sending a line.
        compression=None,
        open_timeout=runtime.settings.ray_proxy_timeout_s,
        max_size=SOCKET_MAX_MESSAGE,
    )
    return connection


def forward_headers(headers: Iterable[tuple[str, str]], token: str) -> dict[str, str]:
    """The customer's request headers for the head: theirs minus hop-by-hop and credentials,
    plus the cluster's token."""
    out = {k: v for k, v in headers if k.lower() not in REQUEST_DROPPED}
    out["Authorization"] = f"Bearer {token}"
    return out


def response_headers(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in RESPONSE_DROPPED}


async def submit_job(
    runtime: Runtime,
    up: Upstream,
    entrypoint: str,
    runtime_env: dict[str, Any] | None,
    metadata: dict[str, str] | None,
    submission_id: str,
) -> dict[str, Any]:
    return await post_job(
        http_client(runtime), up, entrypoint, runtime_env, metadata, submission_id
    )


async def post_job(
    client: httpx.AsyncClient,
    up: Upstream,
    entrypoint: str,
    runtime_env: dict[str, Any] | None,
    metadata: dict[str, str] | None,
    submission_id: str,
) -> dict[str, Any]:
    """``POST /api/jobs/`` on the head; raises ``httpx.HTTPStatusError`` when Ray refuses."""
    body: dict[str, Any] = {"entrypoint": entrypoint, "submission_id": submission_id}
    if runtime_env:
        body["runtime_env"] = runtime_env
    if metadata:
        body["metadata"] = metadata
    r = await client.post(
        f"{up.base_url}/api/jobs/", json=body, headers={"Authorization": f"Bearer {up.token}"}
    )
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


async def job_info(runtime: Runtime, up: Upstream, submission_id: str) -> dict[str, Any] | None:
    r = await http_client(runtime).get(
        f"{up.base_url}/api/jobs/{submission_id}", headers={"Authorization": f"Bearer {up.token}"}
    )
    if r.status_code == 404:
        return None
    r.raise_for_status()
    info: dict[str, Any] = r.json()
    return info


async def job_logs(runtime: Runtime, up: Upstream, submission_id: str) -> str:
    r = await http_client(runtime).get(
        f"{up.base_url}/api/jobs/{submission_id}/logs",
        headers={"Authorization": f"Bearer {up.token}"},
    )
    if r.status_code == 404:
        return ""
    r.raise_for_status()
    logs: str = r.json().get("logs", "")
    return logs


async def list_jobs(runtime: Runtime, up: Upstream) -> list[dict[str, Any]]:
    """Every job the head knows (``GET /api/jobs/``: Ray's ``JobDetails``), however it was
    submitted; raises ``httpx.HTTPError`` when the head does not answer or refuses."""
    r = await http_client(runtime).get(
        f"{up.base_url}/api/jobs/", headers={"Authorization": f"Bearer {up.token}"}
    )
    r.raise_for_status()
    rows = r.json()
    if not isinstance(rows, list):
        raise httpx.DecodingError("Ray's job list is not a list")
    return [j for j in rows if isinstance(j, dict)]


async def stop_job(runtime: Runtime, up: Upstream, submission_id: str) -> bool:
    r = await http_client(runtime).post(
        f"{up.base_url}/api/jobs/{submission_id}/stop",
        headers={"Authorization": f"Bearer {up.token}"},
    )
    if r.status_code == 404:
        return False
    r.raise_for_status()
    stopped: bool = r.json().get("stopped", False)
    return stopped
