"""Talking to a cluster's Ray head: the authenticated reverse proxy and the Job REST API.

Customers never reach Ray ports. Requests to ``/api/v1/clusters/{id}/ray/<path>`` are checked
against our authentication, then forwarded to the head's dashboard with the cluster's own Ray
token in place of the customer's credential. Plain ``ray job submit --address
https://HOST/api/v1/clusters/ID/ray`` works through it, because the Ray SDK appends its
endpoints to the address.

Every call here is network I/O: callers look the head up in a short session first and call
with no transaction open.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.clusters.errors import ClusterNotReady
from tesai.clusters.models import Cluster, ClusterNode, ClusterStatus, NodeRole, NodeState
from tesai.clusters.service import get_cluster, secret_box
from tesai.runtime import Runtime

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
        "host",
        "authorization",
        "x-api-key",
        "cookie",
        "content-length",
        "content-encoding",
    }
)


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
    the head is not up yet."""
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
    if head is None or head.dashboard_url is None:
        raise ClusterNotReady("The cluster's head node is not running yet")
    token = secret_box(runtime.settings).open(cluster.ray_token_sealed)
    return Upstream(cluster_id, head.dashboard_url, token)


def http_client(runtime: Runtime) -> httpx.AsyncClient:
    """One pooled client per process for talking to Ray heads."""
    client = runtime.state.get("ray_http")
    if client is None:
        client = httpx.AsyncClient(timeout=runtime.settings.ray_proxy_timeout_s, trust_env=False)
        runtime.state["ray_http"] = client
    assert isinstance(client, httpx.AsyncClient)
    return client


def forward_headers(headers: list[tuple[str, str]], token: str) -> dict[str, str]:
    out = {k: v for k, v in headers if k.lower() not in HOP_BY_HOP}
    out["Authorization"] = f"Bearer {token}"
    return out


def response_headers(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


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
