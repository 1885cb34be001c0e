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
the join (``tesai_node_<node id>``, ``node_resource_name``): the head's list is matched by that
name, never by anything the agent reports, and strictly (``match_nodes``): the Ray node that
claims it must claim no other node's resource (one Ray node standing in for two counts for
neither, ``node_resource_shared``) and run at the address its device's agent connects from
(``node_address_mismatch``; development, ``ray_proxy_allow_internal_heads``, lets an agent on
loopback run its node at any address). After each run, what the nodes' agents say is held
against what it saw: a node reported running and not seen is an offence of its device
(``tesai.clusters.lies``).

Two sorted sets hold it (``RAY_SEEN``, ``RAY_SEEN_SINCE``): a node's last sighting, and the
start of its current run of sightings (no gap longer than ``ray_evidence_window_s``) — its
meter bills from then at the earliest (``tesai.clusters.usage``), as a device's run of
heartbeats does. ``WATCHED_SINCE`` is when the current run of gathering began (the first
run, or the first after a gap longer than the window: the control plane's own restart or
outage, a lost cache), ``GATHERED_AT`` its latest run: a node nobody looked for is not
billed, but not held to have gone missing either — its silence counts from when gathering
resumed, and not at all while gathering is not running. A node listed ALIVE must also run
tasks: one that failed its latest canary round (``tesai.clusters.canary``, ``CANARY_FAILED``)
has no evidence until a round passes.

What this proves, and what it does not (a dishonest head provider), is written out in
docs/architecture.md, "What we verify and what we trust".
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import orjson
import structlog
from sqlalchemy import select

from tesai.clusters import lies
from tesai.clusters.head_address import (
    HeadAddressRefused,
    IPAddress,
    check_dashboard_url,
    parse_ip,
)
from tesai.clusters.models import Cluster, ClusterNode, ClusterStatus, NodeRole, NodeState
from tesai.clusters.service import secret_box
from tesai.devices import keys as device_keys
from tesai.devices.liveness import healthy_window_s, run_start
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
CANARY_FAILED: Final = "clusters:canary_failed"
"""Sorted set: cluster node id → when it failed its latest canary round
(``tesai.clusters.canary``): its sightings do not count until a round passes."""
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


NODE_RESOURCE: Final = re.compile(r"tesai_node_[0-9a-f]{12}")
"""The form of a node resource (``node_resource_name``); the agent's own ``tesai_node_<index>``
is not one."""
NODE_RESOURCE_SHARED: Final = "node_resource_shared"
"""The Ray node claiming a node's resource claims another node's too: it counts for neither."""
NODE_ADDRESS_MISMATCH: Final = "node_address_mismatch"
"""The Ray node claiming a node's resource runs at an address its device's agent does not
connect from."""


@dataclass(frozen=True)
class RayNode:
    """One node a head's Ray state lists ALIVE: where it runs and the node resources it claims."""

    ip: IPAddress | None
    """Its ``node_ip`` (None: missing, or not an IP address)."""
    claims: frozenset[str]
    """The node resources (``NODE_RESOURCE``) it has any of."""


def alive_ray_nodes(payload: Any) -> list[RayNode]:
    """The ALIVE nodes of a Ray state API answer (``GET /api/v0/nodes``:
    ``{"data": {"result": {"result": [NodeState, …]}}}``).

    Raises ``ValueError`` when the answer is not that shape."""
    try:
        rows = payload["data"]["result"]["result"]
    except (KeyError, TypeError) as exc:
        raise ValueError("not a Ray state API node list") from exc
    if not isinstance(rows, list):
        raise ValueError("not a Ray state API node list")
    nodes = []
    for row in rows:
        if not isinstance(row, dict) or row.get("state") != "ALIVE":
            continue
        resources = row.get("resources_total")
        claims = frozenset(
            k
            for k, v in (resources.items() if isinstance(resources, dict) else ())
            if isinstance(k, str) and NODE_RESOURCE.fullmatch(k) and v
        )
        ip = row.get("node_ip")
        nodes.append(RayNode(parse_ip(ip) if isinstance(ip, str) else None, claims))
    return nodes


@dataclass(frozen=True)
class ExpectedNode:
    """A cluster node the head's Ray state should list."""

    resource: str
    """Its node resource (``node_resource_name``)."""
    peer: IPAddress | None
    """The address its device's agent connects from (its latest heartbeat's peer)."""


@dataclass(frozen=True)
class Matched:
    """What a head's Ray state says of the nodes looked for in it."""

    seen: list[uuid.UUID] = field(default_factory=list)
    """Nodes listed ALIVE as they should be: alive, as far as the control plane can tell."""
    refused: dict[uuid.UUID, str] = field(default_factory=dict)
    """Nodes whose resource an ALIVE Ray node claims that does not count, and why
    (``NODE_RESOURCE_SHARED``, ``NODE_ADDRESS_MISMATCH``)."""


def same_host(ip: IPAddress | None, peer: IPAddress | None, *, allow_internal: bool) -> bool:
    """Whether a Ray node at ``ip`` runs where its device's agent connects from (``peer``).
    With ``allow_internal`` (development, every node on this machine: the setting
    ``ray_proxy_allow_internal_heads``) an agent that connects over loopback may run its Ray
    node at any address."""
    if ip is None or peer is None:
        return False
    return ip == peer or (allow_internal and peer.is_loopback)


def match_nodes(
    expected: Mapping[uuid.UUID, ExpectedNode],
    alive: Sequence[RayNode],
    *,
    allow_internal: bool = False,
) -> Matched:
    """Match the nodes looked for against a head's ALIVE Ray nodes. A node is seen when a Ray
    node claims its resource and no other node's (one Ray node cannot stand in for two) and
    runs at the address its device's agent connects from (``same_host``). Otherwise a node
    whose resource some Ray node claims is refused: ``NODE_RESOURCE_SHARED`` when one of
    them claims others too, else ``NODE_ADDRESS_MISMATCH``."""
    matched = Matched()
    for node_id, want in expected.items():
        holders = [r for r in alive if want.resource in r.claims]
        if not holders:
            continue
        if any(
            len(r.claims) == 1 and same_host(r.ip, want.peer, allow_internal=allow_internal)
            for r in holders
        ):
            matched.seen.append(node_id)
        elif any(len(r.claims) > 1 for r in holders):
            matched.refused[node_id] = NODE_RESOURCE_SHARED
        else:
            matched.refused[node_id] = NODE_ADDRESS_MISMATCH
    return matched


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
    canary_failed: Mapping[uuid.UUID, float] = field(default_factory=dict)
    """Node id → when it failed its latest canary round (``tesai.clusters.canary``)."""

    def fresh(self, node_id: uuid.UUID, now: float, window_s: float) -> bool:
        """Seen ALIVE within ``window_s`` before ``now``, and not failing the canary: the
        node counts as alive and billed."""
        at = self.seen.get(node_id)
        return at is not None and now - at <= window_s and node_id not in self.canary_failed

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
    """The sightings of ``node_ids``, and their failed canaries (four round trips)."""
    members = [str(n) for n in node_ids]
    watched, gathered = await cache.mget([WATCHED_SINCE, GATHERED_AT])
    watched_since = float(watched) if watched else None
    gathered_at = float(gathered) if gathered else None
    if not members:
        return Evidence(watched_since=watched_since, gathered_at=gathered_at)
    seen = await cache.zscores(RAY_SEEN, members)
    since = await cache.zscores(RAY_SEEN_SINCE, members)
    failed = await cache.zscores(CANARY_FAILED, members)
    return Evidence(
        seen={n: s for n, s in zip(node_ids, seen, strict=True) if s is not None},
        since={n: s for n, s in zip(node_ids, since, strict=True) if s is not None},
        watched_since=watched_since,
        gathered_at=gathered_at,
        canary_failed={n: s for n, s in zip(node_ids, failed, strict=True) if s is not None},
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
class HeadNode:
    """What the control plane's records say of one node looked for in a head's Ray state."""

    device_id: uuid.UUID
    head: bool
    running_at: float | None
    """When the node was marked running (on its agent's word, or on a sighting)."""


@dataclass(frozen=True)
class LiveHead:
    """A cluster whose head runs, and the nodes to look for in its Ray state."""

    cluster_id: uuid.UUID
    dashboard_url: str | None
    """The control plane's own record of the head's dashboard (checked before use)."""
    token: str
    expected: Mapping[uuid.UUID, str]
    """Node id → its node resource, for every node that was sent its join."""
    nodes: Mapping[uuid.UUID, HeadNode] = field(default_factory=dict)
    """Node id → the records of it, for the same nodes."""


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
                {
                    n.id: HeadNode(
                        n.device_id,
                        n.role is NodeRole.head,
                        n.running_at.timestamp()
                        if n.state is NodeState.running and n.running_at
                        else None,
                    )
                    for n in nodes
                },
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


@dataclass(frozen=True)
class HeadReading:
    """What one run read from one head."""

    answered: bool
    """Its Ray state answered with a node list."""
    matched: Matched = field(default_factory=Matched)
    refusal: str | None = None
    """Why its address was refused (a ``head_address_*`` code), if it was."""


async def _read_head(
    client: httpx.AsyncClient,
    settings: Settings,
    head: LiveHead,
    peers: Mapping[uuid.UUID, IPAddress | None],
    gate: asyncio.Semaphore,
) -> HeadReading:
    """What ``head``'s Ray state says of its cluster's nodes (``match_nodes``; ``peers``:
    where each device's agent connects from); nothing when the head cannot be read (its
    address refused, no answer, not Ray's answer)."""
    try:
        base_url = check_dashboard_url(settings, head.dashboard_url)
    except HeadAddressRefused as exc:
        # Every run would say it again: info, not a warning (the proxy warns per request).
        reason = exc.extra.get("reason")
        log.info("ray_evidence_refused", cluster_id=str(head.cluster_id), reason=reason)
        return HeadReading(False, refusal=str(reason))
    try:
        async with gate:
            payload = await head_node_list(client, base_url, head.token)
        alive = alive_ray_nodes(payload)
    except (httpx.HTTPError, ValueError) as exc:
        log.info(
            "ray_evidence_unavailable",
            cluster_id=str(head.cluster_id),
            error=f"{type(exc).__name__}: {exc}"[:200],
        )
        return HeadReading(False)
    expected = {
        node_id: ExpectedNode(
            resource, peers.get(node.device_id) if (node := head.nodes.get(node_id)) else None
        )
        for node_id, resource in head.expected.items()
    }
    matched = match_nodes(expected, alive, allow_internal=settings.ray_proxy_allow_internal_heads)
    if matched.refused:
        log.info(
            "ray_evidence_refused_nodes",
            cluster_id=str(head.cluster_id),
            refused={str(n): why for n, why in matched.refused.items()},
        )
    return HeadReading(True, matched)


async def _device_reports(cache: Cache, heads: Sequence[LiveHead]) -> dict[uuid.UUID, Any]:
    """The latest heartbeat of every device with a node in ``heads`` (one round trip)."""
    device_ids = list({n.device_id for h in heads for n in h.nodes.values()})
    raws = await cache.mget([device_keys.telemetry(str(d)) for d in device_ids])
    return {d: orjson.loads(r) for d, r in zip(device_ids, raws, strict=True) if r is not None}


def _claims(
    heads: Sequence[LiveHead],
    readings: Sequence[HeadReading],
    reports: Mapping[uuid.UUID, Any],
    seen: Evidence,
    *,
    now: float,
    settings: Settings,
) -> list[lies.Claim]:
    """What each running node's agent says of it, beside what this run saw."""
    window_s = settings.ray_evidence_window_s
    fresh_s = healthy_window_s(settings.heartbeat_interval_s)
    claims = []
    for head, reading in zip(heads, readings, strict=True):
        for node_id, node in head.nodes.items():
            report = reports.get(node.device_id)
            if node.running_at is None or report is None or now - report["at"] > fresh_s:
                continue
            states = [
                n.get("state")
                for n in report.get("nodes", [])
                if n.get("cluster_id") == str(head.cluster_id)
            ]
            if "running" not in states:
                continue
            claims.append(
                lies.Claim(
                    node_id=node_id,
                    device_id=node.device_id,
                    cluster_id=head.cluster_id,
                    head=node.head,
                    lapsed=seen.lapsed(node_id, now, window_s, node.running_at),
                    last_seen=seen.seen.get(node_id),
                    head_answered=reading.answered,
                    refused=reading.matched.refused.get(node_id)
                    or (reading.refusal if node.head else None),
                )
            )
    return claims


async def gather(ctx: TaskContext) -> dict[str, int]:
    """Read every live head's Ray node list and record the nodes seen ALIVE (the module
    docstring); then hold what the nodes' agents say against it (``tesai.clusters.lies``).
    Safe to run twice or concurrently: each run records only what it saw, and a lie once."""
    settings = ctx.settings
    now = time.time()
    await _watching(ctx.cache, now, settings.ray_evidence_window_s)
    heads = await live_heads(ctx)
    seen: list[uuid.UUID] = []
    if heads:
        reports = await _device_reports(ctx.cache, heads)
        peers = {d: parse_ip(r.get("peer")) for d, r in reports.items()}
        gate = asyncio.Semaphore(HEADS_AT_ONCE)
        async with httpx.AsyncClient(
            timeout=settings.ray_evidence_timeout_s, trust_env=False, follow_redirects=False
        ) as client:
            readings = await asyncio.gather(
                *(_read_head(client, settings, h, peers, gate) for h in heads)
            )
        seen = [n for r in readings for n in r.matched.seen]
        # Stamped with the run's start: a sighting never claims more than was seen.
        await record(ctx.cache, seen, now=now, window_s=settings.ray_evidence_window_s)
        looked_for = [n for h in heads for n in h.nodes]
        evidence = await read(ctx.cache, looked_for)
        claims = _claims(heads, readings, reports, evidence, now=now, settings=settings)
        await lies.record_caught(
            ctx, lies.caught_lies(claims, window_s=settings.ray_evidence_window_s)
        )
    await _forget_old(ctx.cache, now)
    return {"heads": len(heads), "seen": len(seen)}
