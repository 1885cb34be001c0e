"""What the control plane itself has seen of each cluster node: the evidence that a node is
alive, and so may make its cluster ``running`` and be billed.

An agent's heartbeat says what its Ray node is doing, and an agent can lie: it can report a
node running, and a whole cluster alive, while it runs no Ray at all. So liveness and billing
follow what the control plane gathers on its own: a periodic task (``gather``, every
``ray_evidence_interval_s``) reads the node list of every live head's Ray state API
(``GET /api/v0/nodes``) through the control plane's own path to the head — the address from
its own records, checked before every connection (``tesai.clusters.head_address``), with the
cluster's Ray token — and records, per cluster node, when it last saw it ``ALIVE`` there.

A cluster node is known in Ray by the custom resource the control plane gave it when it sent
the join (``tesai_node_<node id>``, ``tesai.clusters.reconcile.node_resource_name``): the head's
list is matched by that name, never by anything the agent reports.

Two sorted sets hold it (``RAY_SEEN``, ``RAY_SEEN_SINCE``): a node's last sighting, and the
start of its current run of sightings (no gap longer than ``ray_evidence_window_s``) — its
meter bills from then at the earliest (``tesai.clusters.usage``), as a device's run of
heartbeats does. ``WATCHED_SINCE`` is when the current run of gathering began (the first
run, or the first after a gap longer than the window: the control plane's own restart or
outage, a lost cache), ``GATHERED_AT`` its latest run: a node nobody looked for is not
billed, but not held to have gone missing either — its silence counts from when gathering
resumed, and not at all while gathering is not running.

What this proves, and what it does not (a dishonest head provider), is written out in
docs/architecture.md, "What we verify and what we trust".
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import structlog
from sqlalchemy import select

from tesai.clusters.head_address import HeadAddressRefused, check_dashboard_url
from tesai.clusters.models import Cluster, ClusterNode, ClusterStatus, NodeRole, NodeState
from tesai.clusters.service import secret_box
from tesai.devices.liveness import run_start
from tesai.kit.cache import Cache, Writes
from tesai.settings import Settings
from tesai.tasks import TaskContext

log = structlog.get_logger(__name__)

RAY_SEEN: Final = "clusters:ray_seen"
"""Sorted set: cluster node id → when the control plane last saw it ALIVE in its head's Ray
state."""
RAY_SEEN_SINCE: Final = "clusters:ray_seen_since"
"""Sorted set: cluster node id → when its current run of sightings began."""
WATCHED_SINCE: Final = "clusters:ray_watched_since"
"""When the current run of gathering began."""
GATHERED_AT: Final = "clusters:ray_gathered_at"
"""When gathering last ran."""
FORGET_AFTER_S: Final = 86_400.0
"""Sightings older than this are dropped from the sets (their nodes are long released)."""
HEADS_AT_ONCE: Final = 32
"""Heads read concurrently by one gathering run."""

WATCHED: Final = (ClusterStatus.provisioning, ClusterStatus.running, ClusterStatus.degraded)


def node_resource_name(node_id: uuid.UUID) -> str:
    """The Ray custom resource naming one node, so jobs can spread work by node; the head's
    node list is matched by it."""
    return f"tesai_node_{node_id.hex[:12]}"


# --- pure: what the head's list says, what a sighting means --------------------------------


def alive_resources(payload: Any) -> set[str]:
    """The custom resource names of the ALIVE nodes in a Ray state API answer
    (``GET /api/v0/nodes``: ``{"data": {"result": {"result": [NodeState, …]}}}``).

    Raises ``ValueError`` when the answer is not that shape."""
    try:
        rows = payload["data"]["result"]["result"]
    except (KeyError, TypeError) as exc:
        raise ValueError("not a Ray state API node list") from exc
    if not isinstance(rows, list):
        raise ValueError("not a Ray state API node list")
    names: set[str] = set()
    for row in rows:
        if not isinstance(row, dict) or row.get("state") != "ALIVE":
            continue
        resources = row.get("resources_total")
        if isinstance(resources, dict):
            names.update(k for k, v in resources.items() if isinstance(k, str) and v)
    return names


def seen_nodes(expected: Mapping[uuid.UUID, str], alive: set[str]) -> list[uuid.UUID]:
    """The cluster nodes (node id → its node resource) that the head lists ALIVE."""
    return [node_id for node_id, resource in expected.items() if resource in alive]


@dataclass(frozen=True)
class Evidence:
    """The sightings of some nodes, read from the cache at one moment."""

    seen: Mapping[uuid.UUID, float] = field(default_factory=dict)
    """Node id → when it was last seen ALIVE (absent: never, as far as this cache knows)."""
    since: Mapping[uuid.UUID, float] = field(default_factory=dict)
    """Node id → when its current run of sightings began."""
    watched_since: float | None = None
    """When the current run of gathering began (None: it has not run since the cache
    began)."""
    gathered_at: float | None = None
    """When gathering last ran."""

    def fresh(self, node_id: uuid.UUID, now: float, window_s: float) -> bool:
        """Seen ALIVE within ``window_s`` before ``now``: the node counts as alive and billed."""
        at = self.seen.get(node_id)
        return at is not None and now - at <= window_s

    def lapsed(
        self, node_id: uuid.UUID, now: float, window_s: float, running_since: float | None
    ) -> bool:
        """Looked for, and not seen, for longer than ``window_s``: since its last sighting,
        since it ran, or since gathering last resumed, whichever is latest. While gathering
        does not run there is no verdict either way."""
        if (
            self.watched_since is None
            or self.gathered_at is None
            or now - self.gathered_at > window_s
        ):
            return False
        start = max(
            self.seen.get(node_id, float("-inf")),
            self.watched_since,
            running_since if running_since is not None else float("-inf"),
        )
        return now - start > window_s


def unverified(
    evidence: Evidence, node_ids: Iterable[uuid.UUID], *, now: float, window_s: float
) -> list[uuid.UUID]:
    """The nodes with no sighting within ``window_s`` before ``now``: not billed."""
    return [n for n in node_ids if not evidence.fresh(n, now, window_s)]


# --- the cache ------------------------------------------------------------------------------


async def read(cache: Cache, node_ids: Sequence[uuid.UUID]) -> Evidence:
    """The sightings of ``node_ids`` (three round trips)."""
    members = [str(n) for n in node_ids]
    watched, gathered = await cache.mget([WATCHED_SINCE, GATHERED_AT])
    watched_since = float(watched) if watched else None
    gathered_at = float(gathered) if gathered else None
    if not members:
        return Evidence(watched_since=watched_since, gathered_at=gathered_at)
    seen = await cache.zscores(RAY_SEEN, members)
    since = await cache.zscores(RAY_SEEN_SINCE, members)
    return Evidence(
        seen={n: s for n, s in zip(node_ids, seen, strict=True) if s is not None},
        since={n: s for n, s in zip(node_ids, since, strict=True) if s is not None},
        watched_since=watched_since,
        gathered_at=gathered_at,
    )


async def record(
    cache: Cache, node_ids: Sequence[uuid.UUID], *, now: float, window_s: float
) -> None:
    """Note that the control plane saw ``node_ids`` ALIVE at ``now``: a node not seen within
    ``window_s`` before starts a new run of sightings."""
    if not node_ids:
        return
    members = [str(n) for n in node_ids]
    last = await cache.zscores(RAY_SEEN, members)
    started = await cache.zscores(RAY_SEEN_SINCE, members)
    starts = {
        m: run_start(at, since, now, window_s)
        for m, at, since in zip(members, last, started, strict=True)
    }
    await cache.apply(
        Writes().zadd(RAY_SEEN, {m: now for m in members}).zadd(RAY_SEEN_SINCE, starts)
    )


async def recent_run_starts(cache: Cache, since: float) -> dict[uuid.UUID, float]:
    """Nodes whose run of sightings began after ``since``, with that start."""
    rows = await cache.zrangebyscore(RAY_SEEN_SINCE, since, float("inf"))
    return {uuid.UUID(n): start for n, start in rows}


async def _watching(cache: Cache, now: float, window_s: float) -> None:
    """Note a gathering run at ``now``; the first, or the first after a gap longer than
    the window, begins a new run of gathering."""
    last = await cache.get(GATHERED_AT)
    writes = Writes().set(GATHERED_AT, repr(now))
    if last is None or now - float(last) > window_s:
        writes.set(WATCHED_SINCE, repr(now))
    await cache.apply(writes)


async def _forget_old(cache: Cache, now: float) -> None:
    old = [n for n, _ in await cache.zrangebyscore(RAY_SEEN, float("-inf"), now - FORGET_AFTER_S)]
    if old:
        await cache.zrem(RAY_SEEN, *old)
        await cache.zrem(RAY_SEEN_SINCE, *old)


# --- gathering ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveHead:
    """A cluster whose head runs, and the nodes to look for in its Ray state."""

    cluster_id: uuid.UUID
    dashboard_url: str | None
    """The control plane's own record of the head's dashboard (checked before use)."""
    token: str
    expected: Mapping[uuid.UUID, str]
    """Node id → its node resource, for every node that was sent its join."""


async def live_heads(ctx: TaskContext) -> list[LiveHead]:
    """The clusters to read, in one short read-only session."""
    async with ctx.sessionmaker() as session:
        rows = (
            await session.execute(
                select(Cluster.id, Cluster.ray_token_sealed, ClusterNode)
                .join(ClusterNode, ClusterNode.cluster_id == Cluster.id)
                .where(
                    Cluster.status.in_(WATCHED),
                    ClusterNode.released_at.is_(None),
                    ClusterNode.state.in_((NodeState.starting, NodeState.running)),
                )
            )
        ).tuples()
        by_cluster: dict[uuid.UUID, tuple[str, list[ClusterNode]]] = {}
        for cluster_id, sealed, node in rows:
            by_cluster.setdefault(cluster_id, (sealed, []))[1].append(node)
    box = secret_box(ctx.settings)
    heads = []
    for cluster_id, (sealed, nodes) in by_cluster.items():
        head = next(
            (n for n in nodes if n.role is NodeRole.head and n.state is NodeState.running), None
        )
        if head is None:
            continue
        heads.append(
            LiveHead(
                cluster_id,
                head.dashboard_url,
                box.open(sealed),
                {n.id: node_resource_name(n.id) for n in nodes},
            )
        )
    return heads


async def head_node_list(client: httpx.AsyncClient, base_url: str, token: str) -> Any:
    """The head's Ray state API node list (``GET /api/v0/nodes``), as JSON; raises
    ``httpx.HTTPError`` when the head does not answer or refuses, ``ValueError`` when the
    answer is not JSON."""
    r = await client.get(
        f"{base_url}/api/v0/nodes",
        params={"limit": 10_000},
        headers={"Authorization": f"Bearer {token}"},
    )
    r.raise_for_status()
    return r.json()


async def _read_head(
    client: httpx.AsyncClient, settings: Settings, head: LiveHead, gate: asyncio.Semaphore
) -> list[uuid.UUID]:
    """The nodes of ``head``'s cluster its Ray state lists ALIVE; none when the head cannot
    be read (its address refused, no answer, not Ray's answer)."""
    try:
        base_url = check_dashboard_url(settings, head.dashboard_url)
    except HeadAddressRefused as exc:
        # Every run would say it again: info, not a warning (the proxy warns per request).
        log.info(
            "ray_evidence_refused", cluster_id=str(head.cluster_id), reason=exc.extra.get("reason")
        )
        return []
    try:
        async with gate:
            payload = await head_node_list(client, base_url, head.token)
        alive = alive_resources(payload)
    except (httpx.HTTPError, ValueError) as exc:
        log.info(
            "ray_evidence_unavailable",
            cluster_id=str(head.cluster_id),
            error=f"{type(exc).__name__}: {exc}"[:200],
        )
        return []
    return seen_nodes(head.expected, alive)


async def gather(ctx: TaskContext) -> dict[str, int]:
    """Read every live head's Ray node list and record the nodes seen ALIVE (the module
    docstring). Safe to run twice or concurrently: each run records only what it saw."""
    settings = ctx.settings
    now = time.time()
    await _watching(ctx.cache, now, settings.ray_evidence_window_s)
    heads = await live_heads(ctx)
    seen: list[uuid.UUID] = []
    if heads:
        gate = asyncio.Semaphore(HEADS_AT_ONCE)
        async with httpx.AsyncClient(
            timeout=settings.ray_evidence_timeout_s, trust_env=False, follow_redirects=False
        ) as client:
            found = await asyncio.gather(*(_read_head(client, settings, h, gate) for h in heads))
        seen = [n for nodes in found for n in nodes]
        # Stamped with the run's start: a sighting never claims more than was seen.
        await record(ctx.cache, seen, now=now, window_s=settings.ray_evidence_window_s)
    await _forget_old(ctx.cache, now)
    return {"heads": len(heads), "seen": len(seen)}
