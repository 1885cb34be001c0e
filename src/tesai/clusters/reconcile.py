"""The cluster reconciler: a periodic task that moves every live cluster towards its goal.

Each run (every ``cluster_reconcile_interval_s``):
1. reads live clusters and their nodes in a short transaction;
2. reads what the nodes' agents last reported, and what the control plane itself last saw of
   each node in its head's Ray state (``tesai.clusters.evidence``), from the cache, outside
   any transaction;
3. decides per cluster with the pure ``tesai.clusters.plan.next_steps``;
4. applies each cluster's steps in its own transaction, taking the cluster row with
   ``FOR UPDATE SKIP LOCKED`` and dropping the plan when the row's ``version`` moved on — so
   two task workers running it at once never apply a step twice.

Metering and settlement are the metering tick's (``tesai.clusters.usage``): the reconciler
starts a node's meter when the cluster runs (which it does only once the control plane has
seen every node alive itself; a node it has not seen lately is not billed), accounts a
node's last seconds when it stops billing it, shows each node's billed seconds, sets how
far the meters may bill (the paid end, or where the budget or hold runs out:
``limit_billing``), stops a cluster whose money cannot pay another second, and settles a
cluster's last usage before it releases the hold. Replacements cost no more per hour than
the node they replace (docs/money.md).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson
import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.billing import metering
from tesai.billing import service as billing
from tesai.billing.errors import InsufficientFunds
from tesai.billing.models import NodeMeter
from tesai.billing.money import SpendState, accrue, customer_charge, spend_limit, spend_state
from tesai.clusters import evidence as ray_evidence
from tesai.clusters.autoscale import ScalingNode, ScalingView, decide
from tesai.clusters.evidence import Evidence, node_resource_name
from tesai.clusters.head_address import dashboard_url
from tesai.clusters.healing import open_slot, read_open_slots
from tesai.clusters.models import (
    Cluster,
    ClusterEvent,
    ClusterNode,
    ClusterStatus,
    Job,
    JobStatus,
    NodeRole,
    NodeState,
)
from tesai.clusters.plan import (
    ClusterView,
    NodeView,
    OpenSlot,
    Plan,
    Step,
    job_after_head_loss,
    next_steps,
    retry_delay_s,
    uploaded_packages,
)
from tesai.clusters.pool import load_pool, to_placement_request
from tesai.clusters.schemas import ClusterRequest
from tesai.clusters.service import hold_ref, record_event, secret_box
from tesai.clusters.states import BILLED
from tesai.clusters.usage import skip_unobserved, skip_unverified, stall_cap
from tesai.db import run_after_commit
from tesai.devices import keys as device_keys
from tesai.devices.liveness import healthy_window_s
from tesai.devices.models import Device, DeviceCommand, DeviceStatus
from tesai.devices.service import create_command, record_transition
from tesai.kit.secretbox import SecretBox
from tesai.kit.time import utcnow
from tesai.scheduling import placement as pl
from tesai.settings import Settings
from tesai.tasks import TaskContext

log = structlog.get_logger(__name__)

ACTIVE = (
    ClusterStatus.pending,
    ClusterStatus.provisioning,
    ClusterStatus.running,
    ClusterStatus.degraded,
    ClusterStatus.terminating,
)
DEAD_DEVICE = (DeviceStatus.offline, DeviceStatus.disabled, DeviceStatus.rejected)


def resource_name(cluster_id: uuid.UUID) -> str:
    """The Ray custom resource every node of the cluster carries."""
    return f"tesai_cluster_{cluster_id.hex[:12]}"


def join_args(
    cluster: Cluster, node: ClusterNode, token: str, head_address: str | None
) -> dict[str, Any]:
    return {
        "cluster_id": str(cluster.id),
        "node_id": str(node.id),
        "role": node.role.value,
        "node_index": node.index,
        "token": token,
        "ray_version": cluster.ray_version,
        "head_address": head_address,
        "num_gpus": node.gpus,
        "resources": {resource_name(cluster.id): 1, node_resource_name(node.id): 1},
        "labels": {"tesai.cluster": str(cluster.id), "tesai.gpu_model": cluster.gpu_model or "cpu"},
    }


def _fresh(report: dict[str, Any] | None, settings: Settings, now_s: float) -> bool:
    """The device heartbeat within 1.5 intervals: its node time counts as healthy."""
    window = healthy_window_s(settings.heartbeat_interval_s)
    return report is not None and now_s - float(report["at"]) <= window


def _node_report(report: dict[str, Any] | None, cluster_id: uuid.UUID) -> dict[str, Any] | None:
    if report is None:
        return None
    for n in report.get("nodes", []):
        if n.get("cluster_id") == str(cluster_id):
            node: dict[str, Any] = n
            return node
    return None


async def _reports(
    ctx: TaskContext, device_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    raws = await ctx.cache.mget([device_keys.telemetry(str(d)) for d in device_ids])
    return {d: orjson.loads(r) for d, r in zip(device_ids, raws, strict=True) if r is not None}


class JoinFailure(NamedTuple):
    """How an agent answered a node's join command that failed."""

    reason: str
    """The short code (``ray_start_failed``, ``ray_auth_failed``, …)."""
    message: str
    """What Ray said (its error lines and log tail, from ``NodeState.message``), or ""."""


async def _join_failures(
    session: AsyncSession, starting: list[ClusterNode]
) -> dict[uuid.UUID, JoinFailure]:
    """Nodes whose agent answered their join command with a failure, and what it said."""
    if not starting:
        return {}
    node_ids = [str(n.id) for n in starting]
    rows = await session.execute(
        select(DeviceCommand.args["node_id"].astext, DeviceCommand.result).where(
            DeviceCommand.kind == "join_cluster",
            DeviceCommand.result.is_not(None),
            DeviceCommand.args["node_id"].astext.in_(node_ids),
        )
    )
    failures = {}
    for node_id, result in rows.tuples():
        if result and not result.get("ok", True):
            data = result.get("data")
            message = data.get("message") if isinstance(data, dict) else None
            failures[uuid.UUID(node_id)] = JoinFailure(
                str(result.get("detail") or "join_failed")[:200], str(message or "")
            )
    return failures


def build_view(
    cluster: Cluster,
    nodes: list[ClusterNode],
    device_status: dict[uuid.UUID, DeviceStatus],
    reports: dict[uuid.UUID, dict[str, Any]],
    now: datetime,
    join_failures: dict[uuid.UUID, JoinFailure] | None = None,
    spend: SpendState | None = None,
    *,
    settings: Settings,
    open_slots: tuple[OpenSlot, ...] = (),
    evidence: Evidence | None = None,
) -> ClusterView:
    """The plain observations ``next_steps`` decides from. ``evidence``: what the control
    plane saw of the nodes in their head's Ray state (none: no node counts as seen)."""
    seen = evidence or Evidence()
    now_s = now.timestamp()
    window_s = settings.ray_evidence_window_s
    views = []
    for n in nodes:
        rep = _node_report(reports.get(n.device_id), cluster.id)
        failure = (join_failures or {}).get(n.id)
        if failure is not None:
            rep = {"state": "failed", "reason": failure.reason}
        views.append(
            NodeView(
                id=n.id,
                device_id=n.device_id,
                role=n.role,
                state=n.state,
                device_live=device_status.get(n.device_id) not in DEAD_DEVICE,
                join_sent=n.state is not NodeState.assigned,
                reported=rep.get("state") if rep else None,
                report_reason=rep.get("reason") if rep else None,
                ray_address=rep.get("ray_address") if rep else None,
                dashboard_port=rep.get("dashboard_port") if rep else None,
                alive_nodes=rep.get("alive_nodes") if rep else None,
                verified=seen.fresh(n.id, now_s, window_s),
                lapsed=seen.lapsed(
                    n.id, now_s, window_s, n.running_at.timestamp() if n.running_at else None
                ),
                canary_failed=n.id in seen.canary_failed,
            )
        )
    return ClusterView(
        id=cluster.id,
        status=cluster.status,
        nodes=views,
        now=now,
        provisioning_deadline=cluster.provisioning_deadline,
        ends_at=cluster.ends_at,
        budget_left_micro=(
            None
            if cluster.budget_micro is None
            else cluster.budget_micro - (spend.spent_micro if spend else 0)
        ),
        out_of_money=spend is not None and spend.exhausted,
        open_slots=open_slots,
        retry_base_s=settings.replacement_retry_s,
        retry_max_s=settings.replacement_retry_max_s,
        status_reason=cluster.status_reason,
    )


async def reconcile(ctx: TaskContext) -> dict[str, int]:
    """One pass over every active cluster (see module docstring)."""
    now = utcnow()
    async with ctx.sessionmaker() as session:
        clusters = list(
            (await session.execute(select(Cluster).where(Cluster.status.in_(ACTIVE)))).scalars()
        )
        if not clusters:
            return {"clusters": 0, "steps": 0}
        ids = [c.id for c in clusters]
        nodes = list(
            (
                await session.execute(
                    select(ClusterNode).where(
                        ClusterNode.cluster_id.in_(ids), ClusterNode.released_at.is_(None)
                    )
                )
            ).scalars()
        )
        device_ids = list({n.device_id for n in nodes})
        join_failures = await _join_failures(
            session, [n for n in nodes if n.state is NodeState.starting]
        )
        meters = await metering.cluster_meters(
            session, [c.id for c in clusters if c.status in BILLED]
        )
        statuses = dict(
            (
                await session.execute(
                    select(Device.id, Device.status).where(Device.id.in_(device_ids))
                )
            )
            .tuples()
            .all()
        )
        lost = await read_open_slots(session, ids)
    reports = await _reports(ctx, list({*device_ids, *(slot.device_id for slot in lost)}))
    evidence = await ray_evidence.read(ctx.cache, [n.id for n in nodes])
    by_cluster: dict[uuid.UUID, list[ClusterNode]] = {}
    for n in nodes:
        by_cluster.setdefault(n.cluster_id, []).append(n)
    slots: dict[uuid.UUID, list[OpenSlot]] = {}
    for slot in lost:
        slots.setdefault(slot.cluster_id, []).append(open_slot(slot, reports.get(slot.device_id)))
    steps = 0
    fee_bps = ctx.settings.platform_fee_bps
    for cluster in clusters:
        spend = None
        if cluster.id in meters:
            limit = spend_limit(cluster.hold_micro, cluster.budget_micro)
            spend = spend_state(meters[cluster.id], limit, fee_bps)
        view = build_view(
            cluster,
            by_cluster.get(cluster.id, []),
            statuses,
            reports,
            now,
            join_failures,
            spend,
            settings=ctx.settings,
            open_slots=tuple(slots.get(cluster.id, ())),
            evidence=evidence,
        )
        plan = next_steps(view)
        try:
            steps += await apply(
                ctx, cluster.id, cluster.version, plan, view, reports, join_failures, evidence
            )
        except Exception:
            log.exception("cluster_reconcile_failed", cluster_id=str(cluster.id))
    return {"clusters": len(clusters), "steps": steps}


async def apply(
    ctx: TaskContext,
    cluster_id: uuid.UUID,
    version: int,
    plan: Plan,
    view: ClusterView,
    reports: dict[uuid.UUID, dict[str, Any]],
    join_failures: dict[uuid.UUID, JoinFailure] | None = None,
    evidence: Evidence | None = None,
) -> int:
    """Apply one cluster's plan and metering in one transaction, guarded by ``version``."""
    async with ctx.sessionmaker() as session:
        cluster = (
            await session.execute(
                select(Cluster)
                .where(Cluster.id == cluster_id, Cluster.version == version)
                .with_for_update(skip_locked=True)
            )
        ).scalar_one_or_none()
        if cluster is None:
            return 0  # another worker holds it, or it changed since we read it
        nodes = {
            n.id: n
            for n in (
                await session.execute(
                    select(ClusterNode)
                    .where(ClusterNode.cluster_id == cluster_id, ClusterNode.released_at.is_(None))
                    .with_for_update()
                )
            ).scalars()
        }
        box = secret_box(ctx.settings)
        applier = _Applier(
            ctx, session, cluster, nodes, view, reports, box, join_failures, evidence
        )
        for step in plan.steps:
            await applier.apply(step)
        await applier.autoscale()
        if cluster.status in BILLED:
            await show_billed_time(session, list(nodes.values()))
            await limit_billing(session, ctx.settings, cluster)
        if cluster.status in (ClusterStatus.terminated, ClusterStatus.failed):
            await finalize(session, ctx.settings, cluster, view.now)
        await session.commit()
        await run_after_commit(session)
        return len(plan.steps)


async def meter_nodes(
    session: AsyncSession,
    settings: Settings,
    nodes: list[ClusterNode],
    reports: dict[uuid.UUID, dict[str, Any]],
    now: datetime,
    evidence: Evidence,
) -> None:
    """Accrue each running node's time since its meter's watermark (the metering tick's
    work, done here for a node about to stop): healthy (its device heartbeat within 1.5
    intervals, and the control plane's own sighting of it in its head's Ray state within
    the evidence window) time is billed from the device's first heartbeat after a gap, and
    the first sighting after a gap, at the earliest; the rest is not; a stall bills at most
    a few intervals of the gap nobody observed. A few set-based statements for all the
    nodes (see ``tesai.clusters.usage``)."""
    cap = stall_cap(settings)
    now_s = now.timestamp()
    running = [n for n in nodes if n.state is NodeState.running]
    if not running:
        return
    ids = [n.id for n in running]
    await metering.meter_nodes(session, now=now - cap, node_ids=ids, unhealthy=ids)
    floor_s = (now - cap).timestamp()
    run_starts = {
        n.device_id: float(report["since"])
        for n in running
        if (report := reports.get(n.device_id)) is not None
        and float(report.get("since", floor_s)) > floor_s
    }
    await skip_unobserved(session, run_starts, ids)
    seen_starts = {n.id: evidence.since[n.id] for n in running if n.id in evidence.since}
    await skip_unverified(session, {n: at for n, at in seen_starts.items() if at > floor_s})
    window_s = settings.ray_evidence_window_s
    unhealthy = [
        n.id
        for n in running
        if not _fresh(reports.get(n.device_id), settings, now_s)
        or not evidence.fresh(n.id, now_s, window_s)
    ]
    await metering.meter_nodes(session, now=now, node_ids=ids, unhealthy=unhealthy)
    await show_billed_time(session, running)


async def limit_billing(session: AsyncSession, settings: Settings, cluster: Cluster) -> SpendState:
    """Bill the cluster's running nodes no further than its paid end (``ends_at``; an
    extension moves it) nor past the second its budget or hold would be passed (see
    ``metering.limit_cluster_billing``); run on every pass, as usage, nodes and extensions
    change when that second falls."""
    return await metering.limit_cluster_billing(
        session,
        cluster_id=cluster.id,
        ends_at=cluster.ends_at,
        limit_micro=spend_limit(cluster.hold_micro, cluster.budget_micro),
        fee_bps=settings.platform_fee_bps,
    )


async def show_billed_time(session: AsyncSession, nodes: list[ClusterNode]) -> None:
    """Copy each running node's billed seconds from its meter onto the node (what the
    console and the CLI show as its healthy time)."""
    running = {n.id: n for n in nodes if n.state is NodeState.running}
    if not running:
        return
    rows = await session.execute(
        select(NodeMeter.node_id, NodeMeter.billed_seconds).where(
            NodeMeter.node_id.in_(list(running))
        )
    )
    for node_id, billed in rows.tuples():
        if running[node_id].healthy_seconds != billed:
            running[node_id].healthy_seconds = int(billed)


async def stop_node_meter(
    session: AsyncSession,
    settings: Settings,
    node: ClusterNode,
    reports: dict[uuid.UUID, dict[str, Any]],
    now: datetime,
    evidence: Evidence,
) -> None:
    """Account the node's last seconds, then stop billing it.

    The settlement lock comes first: the metering tick holds it while it updates every
    meter, so a transaction that locked a meter and then waited for the lock (a cluster's
    end settles under it) would deadlock with the tick.
    """
    await metering.settlement_lock(session)
    await meter_nodes(session, settings, [node], reports, now, evidence)
    await metering.stop_meter(session, node.id)


async def finalize(
    session: AsyncSession, settings: Settings, cluster: Cluster, now: datetime
) -> None:
    """A cluster ended: settle every bucket its nodes left and return the rest of the hold.

    The release comes last: every meter of the cluster is stopped (its minute in progress
    becomes a bucket) and every bucket settled, as far as the hold goes (the sweep leaves
    none unsettled), so usage is paid before anything is handed back. Idempotent: the keys
    name the cluster, so a replay moves nothing twice.
    """
    await metering.settlement_lock(session)  # before any meter (see stop_node_meter)
    running = (
        await session.scalars(
            select(NodeMeter.node_id).where(NodeMeter.cluster_id == cluster.id, NodeMeter.active)
        )
    ).all()
    for node_id in running:
        await metering.stop_meter(session, node_id)
    # Every bucket of the cluster: up to its meters' last watermark (the clock of the
    # process that metered may run ahead of this one's).
    last = await session.scalar(
        select(func.max(NodeMeter.metered_until)).where(NodeMeter.cluster_id == cluster.id)
    )
    await metering.settle_usage_batch(
        session,
        before=max(now, last or now) + timedelta(minutes=1),
        fee_bps=settings.platform_fee_bps,
        idempotency_key=f"cluster-final-settle:{cluster.id}",
    )
    left = await metering.unsettled_buckets(session, cluster.id)
    if left:
        raise RuntimeError(f"{left} usage buckets of cluster {cluster.id} are unsettled")
    await billing.release_hold(
        session,
        user_id=cluster.customer_id,
        ref=hold_ref(cluster.id),
        idempotency_key=f"cluster-release:{cluster.id}",
    )


class _Applier:
    def __init__(
        self,
        ctx: TaskContext,
        session: AsyncSession,
        cluster: Cluster,
        nodes: dict[uuid.UUID, ClusterNode],
        view: ClusterView,
        reports: dict[uuid.UUID, dict[str, Any]],
        box: SecretBox,
        join_failures: dict[uuid.UUID, JoinFailure] | None = None,
        evidence: Evidence | None = None,
    ) -> None:
        self.ctx = ctx
        self.session = session
        self.cluster = cluster
        self.nodes = nodes
        self.view = view
        self.reports = reports
        self.box = box
        self.join_failures = join_failures or {}
        self.evidence = evidence or Evidence()
        """What the control plane saw of the nodes (none: nothing of theirs is billed)."""

    async def _send_leave(self, node: ClusterNode) -> None:
        """Tell the node's agent to stop this cluster's Ray node (applied once, even if late)."""
        await create_command(
            self.session,
            self.ctx.cache,
            node.device_id,
            "leave_cluster",
            {"cluster_id": str(self.cluster.id), "node_id": str(node.id), "node_index": node.index},
        )

    async def apply(self, step: Step) -> None:
        handler = getattr(self, f"_{step.kind}")
        await handler(step)

    async def _send_join(self, step: Step) -> None:
        node = self.nodes.get(step.node_id)  # type: ignore[arg-type]
        if node is None or node.state is not NodeState.assigned:
            return
        token = self.box.open(self.cluster.ray_token_sealed)
        await create_command(
            self.session,
            self.ctx.cache,
            node.device_id,
            "join_cluster",
            join_args(self.cluster, node, token, step.head_address),
        )
        node.state = NodeState.starting

    async def _mark_node_running(self, step: Step) -> None:
        node = self.nodes.get(step.node_id)  # type: ignore[arg-type]
        if node is None:
            return
        device_report = self.reports.get(node.device_id) or {}
        rep = _node_report(device_report, self.cluster.id) or {}
        node.state = NodeState.running
        node.running_at = node.running_at or self.view.now
        if self.cluster.running_at is not None:
            await self._start_meter(node)
        node.ray_address = rep.get("ray_address")
        # Where the proxy reaches the head: the address the agent's heartbeats came from,
        # never a host it names (tesai.clusters.head_address); only the port is its word.
        node.dashboard_url = dashboard_url(device_report.get("peer"), rep.get("dashboard_port"))

    async def _start_meter(self, node: ClusterNode) -> None:
        """Bill the node from now on. The paid duration runs from the cluster's
        ``running_at`` to its ``ends_at``, so a node that runs before the cluster does (a
        head waiting for its workers) starts billing with it (``_set_status``)."""
        provider_id = (
            await self.session.execute(
                select(Device.provider_id).where(Device.id == node.device_id)
            )
        ).scalar_one()
        await metering.start_meter(
            self.session,
            node_id=node.id,
            cluster_id=self.cluster.id,
            device_id=node.device_id,
            customer_user_id=self.cluster.customer_id,
            provider_user_id=provider_id,
            price_per_hour_micro=node.price_per_hour_micro,
            started_at=self.view.now,
            billable_until=self.cluster.ends_at,
        )

    async def _mark_node_lost(self, step: Step) -> None:
        node = self.nodes.get(step.node_id)  # type: ignore[arg-type]
        if node is None:
            return
        await stop_node_meter(
            self.session, self.ctx.settings, node, self.reports, self.view.now, self.evidence
        )
        node.state = NodeState.lost
        node.state_reason = step.reason
        node.lost_at = self.view.now
        node.released_at = self.view.now
        detail = f"node {node.id} on device {node.device_id}"
        data = {"node_id": str(node.id), "device_id": str(node.device_id)}
        # A failed start says why in the agent's reason and Ray's own lines: the event keeps
        # both (its message the first line, its data the whole bounded tail).
        failure = self.join_failures.get(node.id)
        if failure is not None:
            first = failure.message.splitlines()[0] if failure.message else ""
            detail = f"{detail}: {failure.reason}" + (f": {first}" if first else "")
            data |= {"failure": failure.reason, "ray_log": failure.message}
        elif step.detail:
            detail = f"{detail}: {step.detail}"
        reason = step.reason or "node_lost"
        record_event(self.session, self.cluster, reason, detail=detail, data=data)
        # The agent may come back: tell it to stop this cluster's Ray node then.
        await self._send_leave(node)
        if node.role is NodeRole.head:
            await self._head_lost()

    async def _head_lost(self) -> None:
        """The Ray cluster died with its head. Workers leave it and go back to ``assigned``:
        once the replacement head runs, the plan sends them joins to it. Jobs that were
        pending or running are resubmitted per their retry policy or fail."""
        for other in self.nodes.values():
            if other.role is NodeRole.worker and other.state in (
                NodeState.starting,
                NodeState.running,
            ):
                await self._send_leave(other)
                other.state = NodeState.assigned
        jobs = (
            await self.session.execute(
                select(Job)
                .where(
                    Job.cluster_id == self.cluster.id,
                    Job.status.in_([JobStatus.pending.value, JobStatus.running.value]),
                )
                .with_for_update()
            )
        ).scalars()
        for job in jobs:
            outcome = job_after_head_loss(
                job.attempts, job.max_retries, bool(uploaded_packages(job.runtime_env))
            )
            job.message = outcome.message
            data = {"job_id": str(job.id), "submission_id": job.submission_id}
            if outcome.resubmit:
                # A fresh submission id: the new head's job table starts empty, and a retry
                # that already reached it is recognised by this id.
                job.submission_id = f"tesai-{uuid.uuid4().hex[:16]}"
                job.attempts += 1
                job.status = JobStatus.pending.value
                job.resubmit = True
                record_event(
                    self.session, self.cluster, "job_resubmitted", detail=outcome.message, data=data
                )
            else:
                job.status = JobStatus.failed.value
                job.finished_at = self.view.now
                record_event(
                    self.session, self.cluster, "job_failed", detail=outcome.message, data=data
                )

    async def _place_replacement(self, step: Step) -> None:
        """A replacement for a node just lost (or being moved), or for an open slot (a node
        lost earlier with no device free for it). When none can be placed, the
        ``no_replacement`` event names the node: later passes try again, backing off
        (``tesai.clusters.healing``). A slot whose own device is back goes to it first."""
        assert step.node_id is not None
        lost = self.nodes.get(step.node_id) or await self._open_slot(step.node_id)
        if lost is None:
            return
        slot = next((s for s in self.view.open_slots if s.node_id == lost.id), None)
        settings = self.ctx.settings
        hour_ago = self.view.now - timedelta(hours=1)
        recent = (
            await self.session.execute(
                select(ClusterEvent.id).where(
                    ClusterEvent.cluster_id == self.cluster.id,
                    ClusterEvent.reason == "node_replaced",
                    ClusterEvent.at >= hour_ago,
                )
            )
        ).all()
        if len(recent) >= settings.max_replacements_per_hour:
            self._no_replacement(lost, slot, "replacement cap reached")
            return
        own = slot is not None and slot.own_device_back_at is not None
        # The hold was computed with the lost node's price: a replacement costs no more.
        picked = await self._pick_device(
            lost.gpus,
            max_hourly_micro=lost.price_per_hour_micro,
            prefer=lost.device_id if own else None,
        )
        if isinstance(picked, str):
            self._no_replacement(lost, slot, picked)
            return
        device, price = picked
        node = await self._add_node(device, lost.role, lost.gpus, price)
        self.cluster.replacements += 1
        record_event(
            self.session,
            self.cluster,
            "node_replaced",
            detail=f"device {device.id} replaces {lost.device_id}",
            data={"node_id": str(node.id), "device_id": str(device.id), "replaces": str(lost.id)},
        )

    async def _open_slot(self, node_id: uuid.UUID) -> ClusterNode | None:
        """The lost node of this cluster that no replacement names yet, read under the
        cluster's lock (a worker that held it before may have just filled the slot)."""
        node = await self.session.get(ClusterNode, node_id)
        if node is None or node.cluster_id != self.cluster.id or node.state is not NodeState.lost:
            return None
        taken = await self.session.scalar(
            select(ClusterEvent.id)
            .where(
                ClusterEvent.cluster_id == self.cluster.id,
                ClusterEvent.reason == "node_replaced",
                ClusterEvent.data["replaces"].astext == str(node_id),
            )
            .limit(1)
        )
        return node if taken is None else None

    def _no_replacement(self, lost: ClusterNode, slot: OpenSlot | None, why: str) -> None:
        """Record a try that placed nothing, naming the node: the tries of a lost node's slot
        are these events (``tesai.clusters.healing``)."""
        detail = why
        if lost.state is NodeState.lost:
            tries = (slot.tries if slot is not None else 0) + 1
            settings = self.ctx.settings
            wait = retry_delay_s(
                tries, base_s=settings.replacement_retry_s, max_s=settings.replacement_retry_max_s
            )
            detail = f"{why} (try {tries}; next in {wait:.0f} s, or when its device is back)"
        record_event(
            self.session,
            self.cluster,
            "no_replacement",
            detail=detail,
            data={"node_id": str(lost.id), "device_id": str(lost.device_id)},
        )

    async def _pick_device(
        self,
        gpus: int,
        *,
        max_hourly_micro: int | None = None,
        prefer: uuid.UUID | None = None,
    ) -> tuple[Device, int] | str:
        """A free device for one more node like the cluster's, locked; or why there is none.

        Devices of this cluster and those lost from it recently (flapping) are left out;
        with ``max_hourly_micro``, so are devices whose node would cost more per hour (a
        replacement stays within the price its slot's hold was computed with). ``prefer``
        (a lost node's own device, back for it) is tried first, the same rules applying
        but for its recent loss.
        """
        flap_since = self.view.now - timedelta(seconds=self.ctx.settings.flap_exclusion_s)
        excluded = {
            str(d)
            for d in (
                await self.session.execute(
                    select(ClusterNode.device_id).where(
                        ClusterNode.cluster_id == self.cluster.id,
                        (ClusterNode.released_at.is_(None)) | (ClusterNode.lost_at >= flap_since),
                    )
                )
            ).scalars()
        }
        req = ClusterRequest.model_validate(self.cluster.request)
        if max_hourly_micro is not None:
            per_unit = max_hourly_micro // max(gpus, 1)
            cap = req.max_price_per_gpu_hour_micro
            req = req.model_copy(
                update={
                    "max_price_per_gpu_hour_micro": per_unit if cap is None else min(cap, per_unit)
                }
            )
        if req.gpu_model is None:
            preq = to_placement_request(
                req.model_copy(update={"nodes": 1}), excluded=frozenset(excluded)
            )
        else:
            preq = to_placement_request(
                req.model_copy(update={"gpus_per_node": gpus, "nodes": None}),
                gpus=gpus,
                excluded=frozenset(excluded),
            )
        pool = await load_pool(self.session, self.view.now)
        result: pl.Placement | pl.Shortfall | None = None
        if prefer is not None:
            own = [d for d in pool if d.id == str(prefer)]
            back = replace(preq, excluded_device_ids=preq.excluded_device_ids - {str(prefer)})
            result = pl.place_reference(own, back)
        if result is None or isinstance(result, pl.Shortfall):
            result = pl.place_reference(pool, preq)
        if isinstance(result, pl.Shortfall):
            return result.message
        placed = result.devices[0]
        if max_hourly_micro is not None and placed.hourly_price_micro > max_hourly_micro:
            return "no free device within the price the cluster's hold was computed with"
        device = await self.session.get(Device, uuid.UUID(placed.device_id), with_for_update=True)
        if device is None or device.status is not DeviceStatus.online:
            return "the chosen device changed state; retrying on the next pass"
        return device, placed.hourly_price_micro

    async def _add_node(self, device: Device, role: NodeRole, gpus: int, price: int) -> ClusterNode:
        last = (
            await self.session.execute(
                select(func.max(ClusterNode.index)).where(ClusterNode.cluster_id == self.cluster.id)
            )
        ).scalar_one()
        node = ClusterNode(
            id=uuid.uuid4(),
            cluster_id=self.cluster.id,
            device_id=device.id,
            index=(last or 0) + 1,
            role=role,
            state=NodeState.assigned,
            gpus=gpus,
            price_per_hour_micro=price,
            healthy_seconds=0,
        )
        self.session.add(node)
        await self.session.flush()
        self.nodes[node.id] = node
        record_transition(
            self.session, device, DeviceStatus.busy, "rented", f"cluster {self.cluster.id}"
        )
        return node

    async def _release_node(self, node: ClusterNode, reason: str) -> None:
        """Stop billing one node (paying what it earned), tell its agent, free its device."""
        await stop_node_meter(
            self.session, self.ctx.settings, node, self.reports, self.view.now, self.evidence
        )
        await self._send_leave(node)
        node.state = NodeState.released
        node.state_reason = reason
        node.released_at = self.view.now
        device = await self.session.get(Device, node.device_id, with_for_update=True)
        if device is not None and device.status is DeviceStatus.busy:
            record_transition(
                self.session, device, DeviceStatus.online, "released", f"cluster {self.cluster.id}"
            )

    async def autoscale(self) -> None:
        """One autoscaling step for a running cluster rented with min/max units."""
        c = self.cluster
        if c.status is not ClusterStatus.running or c.min_gpus is None or c.max_gpus is None:
            return
        live = [n for n in self.nodes.values() if n.released_at is None]
        head = next((n for n in live if n.role is NodeRole.head), None)
        if head is None:
            return
        report = _node_report(self.reports.get(head.device_id), c.id) or {}
        demand = bool(report.get("pending_demand"))
        idle = {
            int(label.split(":", 1)[1])
            for label in report.get("idle_node_ids") or []
            if isinstance(label, str) and label.startswith("index:") and label[6:].isdigit()
        }
        now = self.view.now
        c.demand_since = (c.demand_since or now) if demand else None
        for n in live:
            n.idle_since = (n.idle_since or now) if n.index in idle else None
        cpu = c.gpu_model is None
        units_per_node = 1 if cpu else max(head.gpus, 1)
        settings = self.ctx.settings
        decision = decide(
            ScalingView(
                min_units=c.min_gpus,
                max_units=c.max_gpus,
                units_per_node=units_per_node,
                nodes=[
                    ScalingNode(
                        n.id, n.index, n.role is NodeRole.head, 1 if cpu else n.gpus, n.idle_since
                    )
                    for n in live
                ],
                demand=demand,
                demand_since=c.demand_since,
                now=now,
                scale_up_after_s=settings.autoscale_up_after_s,
                idle_timeout_s=settings.autoscale_idle_timeout_s,
            )
        )
        if decision.action == "add":
            await self._scale_up(0 if cpu else units_per_node, decision.reason)
        elif decision.action == "remove" and decision.node_id in self.nodes:
            node = self.nodes[decision.node_id]
            await self._release_node(node, "scaled_down")
            c.gpus -= 1 if cpu else node.gpus
            c.hourly_price_micro -= node.price_per_hour_micro
            record_event(self.session, c, "scaled_down", detail=decision.reason)

    async def _scale_up(self, gpus: int, reason: str) -> None:
        c = self.cluster
        # Money moves into the hold, which the tick debits: the settlement lock comes first,
        # before any device or account row (the order every apply keeps).
        await metering.settlement_lock(self.session)
        picked = await self._pick_device(gpus)
        if isinstance(picked, str):
            record_event(self.session, c, "scale_up_refused", detail=picked)
            c.demand_since = None  # wait a full period before trying again
            return
        device, price = picked
        remaining = max(0, int(((c.ends_at or self.view.now) - self.view.now).total_seconds()))
        amount = customer_charge(accrue(0, remaining, price), self.ctx.settings.platform_fee_bps)
        if amount > 0:
            try:
                async with self.session.begin_nested():
                    await billing.extend_hold(
                        self.session,
                        user_id=c.customer_id,
                        amount_micro=amount,
                        ref=hold_ref(c.id),
                        idempotency_key=f"cluster-scale:{c.id}:{device.id}:{c.version}",
                    )
            except InsufficientFunds:
                record_event(
                    self.session,
                    c,
                    "scale_up_refused",
                    detail="not enough funds to hold the extra node",
                )
                c.demand_since = None
                return
        node = await self._add_node(device, NodeRole.worker, gpus, price)
        c.gpus += 1 if c.gpu_model is None else gpus
        c.hourly_price_micro += price
        c.hold_micro += amount
        record_event(
            self.session,
            c,
            "scaled_up",
            detail=reason,
            data={"node_id": str(node.id), "device_id": str(device.id)},
        )

    async def _set_status(self, step: Step) -> None:
        assert step.status is not None
        target = step.status
        if target is self.cluster.status:
            return
        record_event(self.session, self.cluster, step.reason or "", to=target, detail=step.detail)
        now = self.view.now
        if target is ClusterStatus.running and self.cluster.running_at is None:
            self.cluster.running_at = now
            self.cluster.ends_at = now + timedelta(seconds=self.cluster.duration_s)
            for node in self.nodes.values():
                if node.state is NodeState.running and node.released_at is None:
                    await self._start_meter(node)
        if target in (ClusterStatus.terminated, ClusterStatus.failed):
            self.cluster.terminated_at = now

    async def _send_leave_all(self, step: Step) -> None:
        for node in self.nodes.values():
            if node.state is NodeState.released:
                continue
            await self._send_leave(node)

    async def _release_all(self, step: Step) -> None:
        now = self.view.now
        for node in self.nodes.values():
            if node.released_at is not None:
                continue
            # Pay for healthy time up to now before the node stops counting.
            await stop_node_meter(
                self.session, self.ctx.settings, node, self.reports, now, self.evidence
            )
            node.state = NodeState.released
            node.released_at = now
            device = await self.session.get(Device, node.device_id, with_for_update=True)
            if device is not None and device.status is DeviceStatus.busy:
                record_transition(
                    self.session,
                    device,
                    DeviceStatus.online,
                    "released",
                    f"cluster {self.cluster.id}",
                )
