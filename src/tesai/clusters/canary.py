"""Canary rounds: the control plane's own evidence that each node of a running cluster runs
tasks, not only that its head's Ray state lists it ``ALIVE`` (``tesai.clusters.evidence``).

A raylet that is frozen, or a node that registers with the head and runs nothing, stays
``ALIVE`` in Ray's state until Ray's health checks give up, or for good. So, at random
times per running cluster (``canary_interval_s``, memoryless, ten times as often while a node
of the cluster is failing), a round:

1. reads the head's Ray state through the control plane's own path to the head (the address
   from its own records, checked before every connection; the cluster's token; no redirects:
   as ``evidence``), and notes which Ray node holds each cluster node's node resource
   (``tesai_node_<node id>``, the one the control plane gave it at join);
2. draws a fresh 256-bit seed, kept here until the round's job is submitted;
3. submits one small job (``POST /api/jobs/``, ``submission_id`` ``tesai-canary-<hex>``,
   ``entrypoint_num_cpus: 0``) whose driver runs one zero-CPU task per node and prints, per
   node, the Ray node id the task ran on (``get_runtime_context().get_node_id()``) and
   ``HMAC-SHA256(seed, node resource | that Ray node id)``;
4. waits for the job (``canary_timeout_s`` for the answers once the driver runs, twice that in
   all), stopping it at the deadline, and reads its logs (``MAX_LOG_BYTES`` at most);
5. judges each node (``judge``): passed only with exactly one answer, from the Ray node the
   state API said holds its resource, equal to the HMAC this round's seed gives. An answer
   from an earlier round (another seed), from another Ray node, or none in time fails
   (``canary_failed``). A driver that never started fails the head alone.

A failed node's evidence is withdrawn (``evidence.CANARY_FAILED``): it is not billed, and a
running cluster turns ``degraded`` (``canary_failed``) as for ``node_unverified``; a node
that newly fails is an offence of its device (``tesai.devices.reputation``). A later passing
round restores it, billed again from that round on (its run of sightings restarts there).
A round that cannot reach the head, or whose logs cannot be read, decides nothing: the head's
state answers for that (``evidence``).

Why the tasks are pinned by node affinity to the Ray node holding the resource, with no
resource demand at all, and not by ``resources={"tesai_node_<…>": 0.001}``: the node
resource is one unit, and customers are told to spread work with it, so a customer task
holding the whole unit would keep the canary pending, fail an honest node, and get that
node's time unbilled. A task that asks for nothing cannot be starved that way; the Ray node
id from the state API still ties the answer to the node resource, and the answer's own node
id is checked against it.

What a round proves, and what it still trusts (a dishonest head provider, who runs the driver
and can answer for any node; token holders, who can read the seed once the job is
submitted), is in docs/architecture.md, "What we verify and what we trust". Canary jobs
never show in a customer's job list (``SUBMISSION_PREFIX``, ``tesai.clusters.job_list``) and
are never billed: clusters bill node time, never jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import secrets
import shlex
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
import structlog
from sqlalchemy import select

from tesai.clusters import evidence
from tesai.clusters.head_address import HeadAddressRefused, check_dashboard_url
from tesai.clusters.models import Cluster, ClusterNode, ClusterStatus, NodeRole, NodeState
from tesai.clusters.service import secret_box
from tesai.devices.reputation import CANARY_FAILED, record_offence
from tesai.kit.cache import Writes
from tesai.settings import Settings
from tesai.tasks import TaskContext

log = structlog.get_logger(__name__)

SUBMISSION_PREFIX: Final = "tesai-canary-"
"""Every canary job's ``submission_id`` starts so: never listed as a customer's job."""
DUE: Final = "clusters:canary_due"
"""Sorted set: cluster id → when its next round is due."""
PASSED: Final = "clusters:canary_passed"
"""Sorted set: cluster node id → when it last passed a round."""
LEASE_PREFIX: Final = "clusters:canary_lease:"
"""``<prefix><cluster id>``: held while a round of that cluster runs (one at a time)."""
START: Final = "TESAI_CANARY_START"
ANSWER: Final = "TESAI_CANARY"
MAX_LOG_BYTES: Final = 256 * 1024
"""Largest job log read back; a larger one (someone wrote into it) decides nothing."""
POLL_S: Final = 1.0
"""How often a round asks the head for its job's status."""
CHECKED: Final = (ClusterStatus.running, ClusterStatus.degraded)
"""Clusters that get rounds (a degraded one too: its failed node must be able to pass)."""
FAILING_RATE: Final = 10.0
"""Rounds come this many times as often while a node of the cluster is failing."""

Verdict = Literal[
    "passed", "no_answer", "wrong_node", "wrong_answer", "repeated_answer", "no_driver"
]


# --- pure: when, what to ask, what counts as an answer --------------------------------------


def draw_wait(mean_s: float, rng: random.Random) -> float:
    """Seconds until a cluster's next round: exponential with mean ``mean_s`` (memoryless:
    when a round comes cannot be told from the last one), between a tenth and five times
    the mean."""
    wait = rng.expovariate(1.0 / mean_s) if mean_s > 0 else 0.0
    return min(max(wait, mean_s / 10), mean_s * 5)


@dataclass(frozen=True)
class CanaryRound:
    """One round's question: the seed, and the Ray node expected to answer for each node."""

    submission_id: str
    seed: bytes
    nodes: Mapping[str, str]
    """Node resource → the id of the Ray node the head's state says holds it."""


def new_round(nodes: Mapping[str, str]) -> CanaryRound:
    """A round with a fresh random seed and submission id."""
    return CanaryRound(
        SUBMISSION_PREFIX + secrets.token_hex(8), secrets.token_bytes(32), dict(nodes)
    )


def expected_answer(seed: bytes, resource: str, ray_node_id: str) -> str:
    """What the task for ``resource`` must return when it runs on ``ray_node_id``."""
    return hmac.new(seed, f"{resource}|{ray_node_id}".encode(), hashlib.sha256).hexdigest()


def holders(payload: Any, resources: Sequence[str]) -> dict[str, str]:
    """Node resource → the id of the one ALIVE Ray node holding it, in a Ray state API node
    list; a resource on no ALIVE node, or on several, is left out (no canary can tell which
    to ask). Raises ``ValueError`` when the answer is not a node list."""
    try:
        rows = payload["data"]["result"]["result"]
    except (KeyError, TypeError) as exc:
        raise ValueError("not a Ray state API node list") from exc
    if not isinstance(rows, list):
        raise ValueError("not a Ray state API node list")
    wanted = set(resources)
    found: dict[str, list[str]] = {}
    for row in rows:
        if not isinstance(row, dict) or row.get("state") != "ALIVE":
            continue
        node_id, held = row.get("node_id"), row.get("resources_total")
        if not isinstance(node_id, str) or not isinstance(held, dict):
            continue
        for name, amount in held.items():
            if name in wanted and amount:
                found.setdefault(name, []).append(node_id)
    return {name: ids[0] for name, ids in found.items() if len(ids) == 1}


DRIVER: Final = """
import hashlib, hmac, json, os, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

R = json.loads(@ROUND@)
ray.init(log_to_driver=False)
print("TESAI_CANARY_START", R["id"], flush=True)


@ray.remote(num_cpus=0, max_retries=0)
def canary(seed, resource):
    node = ray.get_runtime_context().get_node_id()
    mac = hmac.new(bytes.fromhex(seed), (resource + "|" + node).encode(), hashlib.sha256)
    return node, mac.hexdigest()


asked = {}
for resource, node in R["nodes"].items():
    pin = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    asked[canary.options(scheduling_strategy=pin).remote(R["seed"], resource)] = resource
pending = list(asked)
deadline = time.monotonic() + R["wait_s"]
while pending and deadline > time.monotonic():
    done, pending = ray.wait(pending, num_returns=1, timeout=deadline - time.monotonic())
    for ref in done:
        try:
            node, answer = ray.get(ref)
        except Exception:
            continue
        print("TESAI_CANARY", R["id"], asked[ref], node, answer, flush=True)
os._exit(0)
"""
"""The round's driver, run on the head: ``@ROUND@`` becomes the round as a JSON string.
It exits at once after its wait: a task pinned to a frozen node must not keep it."""


def entrypoint(rnd: CanaryRound, wait_s: float) -> str:
    """The shell command of the round's job."""
    data = {
        "id": rnd.submission_id,
        "seed": rnd.seed.hex(),
        "nodes": dict(rnd.nodes),
        "wait_s": wait_s,
    }
    script = DRIVER.replace("@ROUND@", repr(json.dumps(data, sort_keys=True)))
    return "python -c " + shlex.quote(script)


def judge(rnd: CanaryRound, logs: str, head_resource: str | None) -> dict[str, Verdict]:
    """Each node's verdict (by node resource) from the job's logs.

    Only lines naming this round count. A node passes with exactly one answer, from the Ray
    node expected, equal to ``expected_answer``; several answers for one node mean someone
    wrote into the log (``repeated_answer``). When the driver never started, the round
    says nothing of the workers: the head (``head_resource``) fails alone."""
    started = False
    answers: dict[str, list[tuple[str, str]]] = {}
    for line in logs.splitlines():
        parts = line.split()
        if parts == [START, rnd.submission_id]:
            started = True
        elif len(parts) == 5 and parts[0] == ANSWER and parts[1] == rnd.submission_id:
            answers.setdefault(parts[2], []).append((parts[3], parts[4]))
    if not started:
        if head_resource is None or head_resource not in rnd.nodes:
            return {}
        return {head_resource: "no_driver"}
    verdicts: dict[str, Verdict] = {}
    for resource, ray_node in rnd.nodes.items():
        got = answers.get(resource, [])
        if not got:
            verdicts[resource] = "no_answer"
        elif len(got) > 1:
            verdicts[resource] = "repeated_answer"
        elif got[0][0] != ray_node:
            verdicts[resource] = "wrong_node"
        elif not hmac.compare_digest(got[0][1], expected_answer(rnd.seed, resource, ray_node)):
            verdicts[resource] = "wrong_answer"
        else:
            verdicts[resource] = "passed"
    return verdicts


# --- scheduling -----------------------------------------------------------------------------


def lease_key(cluster_id: str) -> str:
    return f"{LEASE_PREFIX}{cluster_id}"


def round_limit_s(settings: Settings) -> float:
    """The longest a round may take: its job, and a few requests to the head beyond it."""
    return 2 * settings.canary_timeout_s + 4 * settings.ray_evidence_timeout_s


async def schedule(ctx: TaskContext, rng: random.Random | None = None) -> dict[str, int]:
    """Start the rounds that are due (the periodic tick): a running cluster without a due
    time gets one drawn; a due one is leased (one round per cluster at a time) and its
    round enqueued. Safe to run twice or concurrently: the lease decides."""
    rng = rng or random.SystemRandom()
    settings = ctx.settings
    now = time.time()
    async with ctx.sessionmaker() as session:
        ids = {
            str(i)
            for i in await session.scalars(select(Cluster.id).where(Cluster.status.in_(CHECKED)))
        }
    if ids:
        waits = {c: now + draw_wait(settings.canary_interval_s, rng) for c in ids}
        await ctx.cache.zadd(DUE, waits, only_new=True)
    due = await ctx.cache.zrangebyscore(DUE, float("-inf"), now)
    gone = [c for c, _ in due if c not in ids]
    if gone:
        await ctx.cache.zrem(DUE, *gone)
    limit_s = round_limit_s(settings)
    started = 0
    for cluster_id, _ in due:
        if cluster_id not in ids:
            continue
        if not await ctx.cache.set(lease_key(cluster_id), "1", ttl_s=limit_s, only_new=True):
            continue
        # The round sets the next time when it ends; a round that is lost retries after this.
        await ctx.cache.zadd(DUE, {cluster_id: now + limit_s})
        await ctx.dispatcher.enqueue("clusters.canary_round", cluster_id=cluster_id)
        started += 1
    await _forget_old(ctx, now)
    return {"clusters": len(ids), "started": started}


async def _forget_old(ctx: TaskContext, now: float) -> None:
    for key in (evidence.CANARY_FAILED, PASSED):
        old = await ctx.cache.zrangebyscore(key, float("-inf"), now - evidence.FORGET_AFTER_S)
        if old:
            await ctx.cache.zrem(key, *(n for n, _ in old))


# --- one round ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetNode:
    node_id: uuid.UUID
    device_id: uuid.UUID
    role: NodeRole
    resource: str


@dataclass(frozen=True)
class Target:
    """A cluster to ask, read in one short session."""

    cluster_id: uuid.UUID
    dashboard_url: str | None
    token: str
    nodes: Sequence[TargetNode]

    @property
    def head_resource(self) -> str | None:
        return next((n.resource for n in self.nodes if n.role is NodeRole.head), None)


async def load_target(ctx: TaskContext, cluster_id: uuid.UUID) -> Target | None:
    """The cluster's running nodes, its head's recorded address and its token; None when it
    is not running, or its head is not."""
    async with ctx.sessionmaker() as session:
        cluster = await session.get(Cluster, cluster_id)
        if cluster is None or cluster.status not in CHECKED:
            return None
        nodes = list(
            await session.scalars(
                select(ClusterNode).where(
                    ClusterNode.cluster_id == cluster_id,
                    ClusterNode.released_at.is_(None),
                    ClusterNode.state == NodeState.running,
                )
            )
        )
        sealed = cluster.ray_token_sealed
    head = next((n for n in nodes if n.role is NodeRole.head), None)
    if head is None:
        return None
    return Target(
        cluster_id,
        head.dashboard_url,
        secret_box(ctx.settings).open(sealed),
        [TargetNode(n.id, n.device_id, n.role, evidence.node_resource_name(n.id)) for n in nodes],
    )


class _Head:
    """The head's Jobs API, with the cluster's token; every call is bounded in time."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, token: str) -> None:
        self.client = client
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"}

    async def submit(self, rnd: CanaryRound, wait_s: float) -> None:
        body = {
            "entrypoint": entrypoint(rnd, wait_s),
            "submission_id": rnd.submission_id,
            "entrypoint_num_cpus": 0,
            "metadata": {"tesai": "canary"},
        }
        r = await self.client.post(f"{self.base_url}/api/jobs/", json=body, headers=self.headers)
        r.raise_for_status()

    async def status(self, submission_id: str) -> str:
        r = await self.client.get(f"{self.base_url}/api/jobs/{submission_id}", headers=self.headers)
        r.raise_for_status()
        info = r.json()
        return str(info.get("status")) if isinstance(info, dict) else ""

    async def logs(self, submission_id: str) -> str:
        """The job's logs; raises ``ValueError`` past ``MAX_LOG_BYTES`` or when not Ray's
        answer, ``httpx.HTTPError`` when the head does not answer."""
        url = f"{self.base_url}/api/jobs/{submission_id}/logs"
        async with self.client.stream("GET", url, headers=self.headers) as r:
            r.raise_for_status()
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > MAX_LOG_BYTES:
                    raise ValueError(f"the job's logs pass {MAX_LOG_BYTES} bytes")
        logs = json.loads(body).get("logs")
        if not isinstance(logs, str):
            raise ValueError("not Ray's job logs")
        return logs

    async def stop(self, submission_id: str) -> None:
        await self.client.post(
            f"{self.base_url}/api/jobs/{submission_id}/stop", headers=self.headers
        )

    async def delete(self, submission_id: str) -> bool:
        r = await self.client.delete(
            f"{self.base_url}/api/jobs/{submission_id}", headers=self.headers
        )
        return r.is_success


TERMINAL: Final = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


async def _ask(head: _Head, rnd: CanaryRound, settings: Settings) -> str:
    """Submit the round's job, wait for it (stopping it at the deadline) and return its
    logs. Raises ``httpx.HTTPError`` or ``ValueError`` when the head cannot be asked."""
    deadline = time.monotonic() + 2 * settings.canary_timeout_s
    await head.submit(rnd, settings.canary_timeout_s)
    try:
        while True:
            await asyncio.sleep(POLL_S)
            if await head.status(rnd.submission_id) in TERMINAL:
                break
            if time.monotonic() >= deadline:
                # What the driver printed by now is the answer: the rest did not answer.
                await head.stop(rnd.submission_id)
                break
        return await head.logs(rnd.submission_id)
    finally:
        with contextlib.suppress(httpx.HTTPError):
            await _forget(head, rnd.submission_id)


async def _forget(head: _Head, submission_id: str) -> None:
    """Delete the round's job from the head's list once it is final (a stopped job takes a
    moment), so rounds do not pile up there; best effort."""
    for _ in range(5):
        if await head.status(submission_id) in TERMINAL and await head.delete(submission_id):
            return
        await asyncio.sleep(POLL_S)


async def run_round(ctx: TaskContext, cluster_id: uuid.UUID) -> dict[str, Any]:
    """One canary round of a cluster (the module docstring); the lease is released and the
    next round's time drawn however it ends."""
    settings = ctx.settings
    failing = False
    try:
        target = await load_target(ctx, cluster_id)
        if target is None:
            return {"asked": 0}
        verdicts = await _round(ctx, target)
        failing = any(v != "passed" for v in verdicts.values())
        await apply_verdicts(ctx, target, verdicts)
        return {
            "asked": len(verdicts),
            "failed": sum(v != "passed" for v in verdicts.values()),
        }
    finally:
        mean = settings.canary_interval_s / (FAILING_RATE if failing else 1.0)
        wait = draw_wait(mean, random.SystemRandom())
        await ctx.cache.zadd(DUE, {str(cluster_id): time.time() + wait})
        await ctx.cache.delete(lease_key(str(cluster_id)))


async def _round(ctx: TaskContext, target: Target) -> dict[str, Verdict]:
    """Ask the head and judge; no verdict at all when the head cannot be asked."""
    settings = ctx.settings
    cid = str(target.cluster_id)
    try:
        base_url = check_dashboard_url(settings, target.dashboard_url)
    except HeadAddressRefused as exc:
        log.info("canary_refused", cluster_id=cid, reason=exc.extra.get("reason"))
        return {}
    async with httpx.AsyncClient(
        timeout=settings.ray_evidence_timeout_s, trust_env=False, follow_redirects=False
    ) as client:
        try:
            payload = await evidence.head_node_list(client, base_url, target.token)
            held = holders(payload, [n.resource for n in target.nodes])
            if not held:
                return {}
            rnd = new_round(held)
            logs = await _ask(_Head(client, base_url, target.token), rnd, settings)
        except (httpx.HTTPError, ValueError) as exc:
            log.info(
                "canary_unavailable", cluster_id=cid, error=f"{type(exc).__name__}: {exc}"[:200]
            )
            return {}
    verdicts = judge(rnd, logs, target.head_resource)
    node_of = {n.resource: str(n.node_id) for n in target.nodes}
    log.info(
        "canary_round",
        cluster_id=cid,
        submission_id=rnd.submission_id,
        passed=sum(v == "passed" for v in verdicts.values()),
        failed=[f"{node_of.get(r, r)}:{v}" for r, v in verdicts.items() if v != "passed"],
    )
    return verdicts


async def apply_verdicts(ctx: TaskContext, target: Target, verdicts: Mapping[str, Verdict]) -> None:
    """Withdraw the evidence of the nodes that failed, restore those that passed after a
    failure (billed from now on), and record an offence of each device whose node newly
    failed. The cache first: billing must stop even if recording the offence fails."""
    by_resource = {n.resource: n for n in target.nodes}
    judged = [(by_resource[r], v) for r, v in verdicts.items() if r in by_resource]
    if not judged:
        return
    now = time.time()
    prior = await ctx.cache.zscores(evidence.CANARY_FAILED, [str(n.node_id) for n, _ in judged])
    failed = [(n, v) for n, v in judged if v != "passed"]
    newly = [
        (n, v) for (n, v), at in zip(judged, prior, strict=True) if v != "passed" and at is None
    ]
    restored = [
        str(n.node_id)
        for (n, v), at in zip(judged, prior, strict=True)
        if v == "passed" and at is not None
    ]
    writes = Writes()
    passed = [str(n.node_id) for n, v in judged if v == "passed"]
    if passed:
        writes.zadd(PASSED, dict.fromkeys(passed, now))
    if failed:
        writes.zadd(evidence.CANARY_FAILED, {str(n.node_id): now for n, _ in failed})
    if restored:
        # Billed again from this round at the earliest (``usage.skip_unverified``).
        writes.zadd(evidence.RAY_SEEN_SINCE, dict.fromkeys(restored, now))
    await ctx.cache.apply(writes)
    if restored:
        await ctx.cache.zrem(evidence.CANARY_FAILED, *restored)
    if newly:
        await record_failures(ctx, target.cluster_id, newly)


async def record_failures(
    ctx: TaskContext, cluster_id: uuid.UUID, failed: Sequence[tuple[TargetNode, Verdict]]
) -> None:
    """An offence (``canary_failed``) of each device whose node newly failed, in one short
    transaction (devices locked in id order)."""
    try:
        async with ctx.sessionmaker() as session, session.begin():
            for node, verdict in sorted(failed, key=lambda f: f[0].device_id):
                detail = f"Node {node.node_id} of cluster {cluster_id}: {verdict}."
                await record_offence(session, ctx.settings, node.device_id, CANARY_FAILED, detail)
    except Exception:
        log.exception("canary_offence_not_recorded", cluster_id=str(cluster_id))
