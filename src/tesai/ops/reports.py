"""Incident timelines and SLA reports, derived from what is already stored.

Sources: ``cluster_events`` (fault and operator events with their node and device ids),
``device_events`` (every status change with its reason), ``cluster_nodes`` (when a node ran
and stopped) and ``billing_node_meters`` (seconds actually billed per node). Nothing here
writes. The arithmetic over event lists is pure (``status_time``, ``periods``) and tested
without a database.

Unbilled seconds of an incident: the node's unhealthy time while it ran (run time minus
billed seconds) plus, on the cluster side, the gap until its replacement ran. The credit is
what those seconds would have cost the customer (the node's price plus the platform fee).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.accounts.models import User
from tesai.accounts.service import UserNotFound
from tesai.audit.service import record as audit
from tesai.billing.models import NodeMeter
from tesai.billing.money import accrue, customer_charge
from tesai.clusters.models import ClusterEvent, ClusterNode, ClusterStatus
from tesai.clusters.service import events_of, get_cluster, nodes_of
from tesai.devices.models import Device, DeviceEvent, DeviceStatus
from tesai.devices.service import get_device
from tesai.kit.time import utcnow
from tesai.ops.errors import InvalidWindow
from tesai.ops.models import ProviderSla
from tesai.ops.schemas import (
    FaultStats,
    Incident,
    IncidentTimeline,
    ProviderSlaOut,
    ProviderSlaSet,
    SlaReport,
)
from tesai.settings import Settings

CLUSTER_FAULTS = frozenset(
    {"node_lost", "head_lost", "join_failed", "no_replacement", "provisioning_deadline"}
)
CLUSTER_OPERATOR = frozenset({"moved_by_operator", "admin_terminated"})
DEVICE_OPERATOR = frozenset({"drain_requested", "drained", "undrained", "disabled_by_admin"})
UP = frozenset({DeviceStatus.online.value, DeviceStatus.busy.value, DeviceStatus.draining.value})
"""In the pool and expected to answer: time here is uptime."""
DOWN = frozenset({DeviceStatus.offline.value})
"""Expected up but silent: time here is downtime. Other states count neither way."""
MAX_WINDOW = timedelta(days=366)
SLOP = timedelta(seconds=5)
"""Events of one fault are written a few moments apart (device offline, then node lost)."""


def _secs(a: datetime, b: datetime) -> int:
    return max(0, int((b - a).total_seconds()))


# --- pure cores ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    at: datetime
    from_status: str | None
    to_status: str
    reason: str


@dataclass
class StatusTime:
    up_seconds: int = 0
    down_seconds: int = 0
    faults: list[Change] = field(default_factory=list)
    repairs: list[int] = field(default_factory=list)
    """Seconds from each fault in the window to the device's return (recovered ones)."""


def status_time(
    initial: str | None, changes: Sequence[Change], since: datetime, until: datetime
) -> StatusTime:
    """Up and down seconds of one device in ``[since, until)``, its faults (an up state →
    offline) and how long each took to repair. ``initial`` is its status at ``since``
    (None: it did not exist yet); ``changes`` are in time order within the window or after."""
    out = StatusTime()
    status, t = initial, since
    down_since: datetime | None = None
    for c in changes:
        at = min(max(c.at, since), until)
        if status in UP:
            out.up_seconds += _secs(t, at)
        elif status in DOWN:
            out.down_seconds += _secs(t, at)
        if since <= c.at < until and c.to_status in DOWN and c.from_status in UP:
            out.faults.append(c)
            down_since = c.at
        if down_since is not None and c.from_status in DOWN and c.to_status not in DOWN:
            out.repairs.append(_secs(down_since, c.at))
            down_since = None
        status, t = c.to_status, at
    if status in UP:
        out.up_seconds += _secs(t, until)
    elif status in DOWN:
        out.down_seconds += _secs(t, until)
    return out


def periods(
    changes: Iterable[tuple[datetime, str | None, str | None]], state: str, end: datetime
) -> list[tuple[datetime, datetime]]:
    """Intervals spent in ``state`` from ``(at, from, to)`` changes in order; an interval
    still open closes at ``end``."""
    out: list[tuple[datetime, datetime]] = []
    start: datetime | None = None
    for at, from_status, to_status in changes:
        if from_status == to_status:
            continue
        if to_status == state and start is None:
            start = at
        elif from_status == state and start is not None:
            out.append((start, at))
            start = None
    if start is not None:
        out.append((start, max(start, end)))
    return out


# --- incident timelines -----------------------------------------------------------------------


async def _billed(session: AsyncSession, node_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    if not node_ids:
        return {}
    rows = await session.execute(
        select(NodeMeter.node_id, NodeMeter.billed_seconds).where(NodeMeter.node_id.in_(node_ids))
    )
    return dict(rows.tuples().all())


def _unhealthy(node: ClusterNode, until: datetime, billed: int) -> int:
    """Seconds the node ran before ``until`` without being billed."""
    if node.running_at is None:
        return 0
    return max(0, _secs(node.running_at, until) - billed)


def _credit(settings: Settings, seconds: int, price_per_hour_micro: int) -> int:
    return customer_charge(accrue(0, seconds, price_per_hour_micro), settings.platform_fee_bps)


def _node_id(event: ClusterEvent) -> uuid.UUID | None:
    raw = (event.data or {}).get("node_id")
    try:
        return uuid.UUID(raw) if raw else None
    except ValueError:
        return None


async def cluster_incidents(
    session: AsyncSession, settings: Settings, cluster_id: uuid.UUID
) -> IncidentTimeline:
    """Every fault and operator event of a cluster with its impact and billing credit.

    Raises ``ClusterNotFound`` (404).
    """
    cluster = await get_cluster(session, None, cluster_id)
    now = utcnow()
    end = cluster.terminated_at or now
    events = await events_of(session, cluster.id)
    nodes = {n.id: n for n in await nodes_of(session, cluster.id)}
    billed = await _billed(session, list(nodes))
    degraded = periods(
        ((e.at, e.from_status, e.to_status) for e in events), ClusterStatus.degraded.value, end
    )
    replaced_by: dict[uuid.UUID, ClusterNode] = {}
    for e in events:
        if e.reason == "node_replaced" and (e.data or {}).get("replaces"):
            new = nodes.get(_node_id(e) or uuid.UUID(int=0))
            if new is not None:
                replaced_by[uuid.UUID(e.data["replaces"])] = new
    incidents: list[Incident] = []
    seen: set[tuple[str, uuid.UUID]] = set()
    for e in events:
        if e.reason not in CLUSTER_FAULTS and e.reason not in CLUSTER_OPERATOR:
            continue
        node_id = _node_id(e)
        if e.reason in ("node_lost", "head_lost") and node_id is None:
            continue  # the status change that goes with the node's own event
        if node_id is not None:
            if (e.reason, node_id) in seen:
                continue  # a move's second event: the node left
            seen.add((e.reason, node_id))
        incident = Incident(
            at=e.at,
            kind="operator" if e.reason in CLUSTER_OPERATOR else "fault",
            reason=e.reason,
            message=e.message,
            cluster_id=cluster.id,
            node_id=node_id,
        )
        period = next((p for p in degraded if p[0] - SLOP <= e.at <= p[1]), None)
        if period is not None:
            incident.impact_seconds = _secs(period[0], period[1])
            incident.recovered_at = period[1] if period[1] < end or cluster.terminated_at else None
        node = nodes.get(node_id) if node_id is not None else None
        if node is not None:
            incident.device_id = node.device_id
            if e.reason == "head_lost":
                alive = [
                    n
                    for n in nodes.values()
                    if n.created_at <= e.at + SLOP
                    and (n.released_at is None or n.released_at >= e.at - SLOP)
                    and (n.running_at is not None or n.id == node.id)
                ]
                incident.nodes_affected = len(alive)
                incident.gpus_affected = sum(n.gpus for n in alive)
            else:
                incident.nodes_affected = 1
                incident.gpus_affected = node.gpus
            unbilled = _unhealthy(node, e.at, billed.get(node.id, 0))
            new = replaced_by.get(node.id)
            if new is not None and e.reason != "join_failed":
                unbilled += _secs(e.at, new.running_at or end)
                if incident.recovered_at is None and new.running_at is not None:
                    incident.recovered_at = new.running_at
            incident.unbilled_seconds = unbilled
            incident.credit_micro = _credit(settings, unbilled, node.price_per_hour_micro)
        incidents.append(incident)
    return IncidentTimeline(
        subject_type="cluster",
        subject_id=cluster.id,
        status=cluster.status.value,
        incidents=incidents,
        impact_seconds=sum(_secs(a, b) for a, b in degraded),
        unbilled_seconds=sum(i.unbilled_seconds for i in incidents),
        credit_micro=sum(i.credit_micro for i in incidents),
        counts_by_reason=dict(Counter(i.reason for i in incidents)),
    )


async def device_incidents(
    session: AsyncSession, settings: Settings, device_id: uuid.UUID
) -> IncidentTimeline:
    """Every fault (offline, rejected) and operator event of a device, how long it stayed
    down, the cluster nodes it took with it and their unbilled time. Raises
    ``DeviceNotFound`` (404)."""
    device = await get_device(session, device_id)
    now = utcnow()
    events = list(
        (
            await session.execute(
                select(DeviceEvent)
                .where(DeviceEvent.device_id == device.id)
                .order_by(DeviceEvent.at, DeviceEvent.id)
            )
        ).scalars()
    )
    nodes = list(
        (
            await session.execute(
                select(ClusterNode).where(
                    ClusterNode.device_id == device.id, ClusterNode.lost_at.is_not(None)
                )
            )
        ).scalars()
    )
    billed = await _billed(session, [n.id for n in nodes])
    incidents: list[Incident] = []
    down_total = 0
    for i, e in enumerate(events):
        fault = e.to_status in (DeviceStatus.offline.value, DeviceStatus.rejected.value) and (
            e.from_status != e.to_status
        )
        if not fault and e.reason not in DEVICE_OPERATOR:
            continue
        incident = Incident(
            at=e.at,
            kind="fault" if fault else "operator",
            reason=e.reason,
            message=e.message,
            device_id=device.id,
        )
        if fault:
            back = next((x for x in events[i + 1 :] if x.from_status == e.to_status), None)
            incident.recovered_at = back.at if back is not None else None
            incident.impact_seconds = _secs(e.at, back.at if back is not None else now)
            if e.to_status == DeviceStatus.offline.value:
                down_total += incident.impact_seconds
            hit = [
                n
                for n in nodes
                if n.lost_at is not None
                and e.at - SLOP <= n.lost_at <= (back.at if back is not None else now) + SLOP
            ]
            incident.nodes_affected = len(hit)
            incident.gpus_affected = sum(n.gpus for n in hit)
            if len(hit) == 1:
                incident.cluster_id = hit[0].cluster_id
                incident.node_id = hit[0].id
            for n in hit:
                assert n.lost_at is not None
                seconds = _unhealthy(n, n.lost_at, billed.get(n.id, 0))
                incident.unbilled_seconds += seconds
                incident.credit_micro += _credit(settings, seconds, n.price_per_hour_micro)
        incidents.append(incident)
    return IncidentTimeline(
        subject_type="device",
        subject_id=device.id,
        status=device.status.value,
        incidents=incidents,
        impact_seconds=down_total,
        unbilled_seconds=sum(i.unbilled_seconds for i in incidents),
        credit_micro=sum(i.credit_micro for i in incidents),
        counts_by_reason=dict(Counter(i.reason for i in incidents)),
    )


# --- SLA --------------------------------------------------------------------------------------


def check_window(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """The report window (default: the last 30 days); ``InvalidWindow`` (422) if it ends
    before it starts or spans over a year."""
    until = until or utcnow()
    if (since is not None and since.tzinfo is None) or until.tzinfo is None:
        raise InvalidWindow("since and until need a timezone (e.g. 2026-01-01T00:00:00Z)")
    if since is None:
        try:
            since = until - timedelta(days=30)
        except OverflowError as exc:
            raise InvalidWindow("until is too early") from exc
    if since >= until:
        raise InvalidWindow("since must be before until")
    if until - since > MAX_WINDOW:
        raise InvalidWindow("the window spans at most 366 days")
    return since, until


async def sla_report(
    session: AsyncSession,
    settings: Settings,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    provider_id: uuid.UUID | None = None,
) -> SlaReport:
    """Uptime against the promise per provider over a window, and fault statistics."""
    since, until = check_window(since, until)
    dq = select(Device.id, Device.provider_id)
    if provider_id is not None:
        dq = dq.where(Device.provider_id == provider_id)
    owner = dict((await session.execute(dq)).tuples().all())
    ids = list(owner)
    initial: dict[uuid.UUID, str] = {}
    changes: dict[uuid.UUID, list[Change]] = {d: [] for d in ids}
    if ids:
        before = await session.execute(
            select(DeviceEvent.device_id, DeviceEvent.to_status)
            .where(DeviceEvent.device_id.in_(ids), DeviceEvent.at < since)
            .order_by(DeviceEvent.device_id, DeviceEvent.at.desc(), DeviceEvent.id.desc())
            .distinct(DeviceEvent.device_id)
        )
        initial = dict(before.tuples().all())
        rows = await session.execute(
            select(DeviceEvent)
            .where(DeviceEvent.device_id.in_(ids), DeviceEvent.at >= since)
            .order_by(DeviceEvent.at, DeviceEvent.id)
        )
        for e in rows.scalars():
            changes[e.device_id].append(Change(e.at, e.from_status, e.to_status, e.reason))
    promised = dict(
        (await session.execute(select(ProviderSla.provider_id, ProviderSla.promised_uptime)))
        .tuples()
        .all()
    )
    providers = set(owner.values())
    emails = (
        dict(
            (await session.execute(select(User.id, User.email).where(User.id.in_(providers))))
            .tuples()
            .all()
        )
        if providers
        else {}
    )
    per: dict[uuid.UUID, list[StatusTime]] = {}
    for d in ids:
        per.setdefault(owner[d], []).append(status_time(initial.get(d), changes[d], since, until))
    out: list[ProviderSlaOut] = []
    all_faults: Counter[str] = Counter()
    all_repairs: list[int] = []
    for pid, times in per.items():
        up = sum(t.up_seconds for t in times)
        down = sum(t.down_seconds for t in times)
        faults = Counter(f.reason for t in times for f in t.faults)
        repairs = [r for t in times for r in t.repairs]
        all_faults.update(faults)
        all_repairs.extend(repairs)
        uptime = up / (up + down) if up + down else None
        target = promised.get(pid, settings.sla_promised_uptime)
        out.append(
            ProviderSlaOut(
                provider_id=pid,
                email=emails.get(pid),
                devices=len(times),
                up_seconds=up,
                down_seconds=down,
                uptime=None if uptime is None else round(uptime, 6),
                promised_uptime=target,
                met=None if uptime is None else uptime >= target,
                faults=sum(faults.values()),
                faults_by_reason=dict(faults),
                mttr_seconds=sum(repairs) / len(repairs) if repairs else None,
            )
        )
    out.sort(key=lambda p: (p.uptime if p.uptime is not None else 2.0, str(p.provider_id)))
    return SlaReport(
        since=since,
        until=until,
        providers=out,
        faults=await _fault_stats(
            session,
            since,
            until,
            ids if provider_id else None,
            all_faults,
            sum(all_repairs) / len(all_repairs) if all_repairs else None,
        ),
    )


async def _fault_stats(
    session: AsyncSession,
    since: datetime,
    until: datetime,
    device_ids: list[uuid.UUID] | None,
    device_faults: Counter[str],
    device_mttr_seconds: float | None,
) -> FaultStats:
    q = select(ClusterEvent).where(
        ClusterEvent.at >= since,
        ClusterEvent.at < until,
        (ClusterEvent.reason.in_(CLUSTER_FAULTS))
        | (ClusterEvent.to_status == "degraded")
        | (ClusterEvent.from_status == "degraded"),
    )
    if device_ids is not None:
        # A provider's report: the clusters its devices served.
        q = q.where(
            ClusterEvent.cluster_id.in_(
                select(ClusterNode.cluster_id).where(ClusterNode.device_id.in_(device_ids))
            )
        )
    events = list((await session.execute(q.order_by(ClusterEvent.at, ClusterEvent.id))).scalars())
    counts: Counter[str] = Counter(
        e.reason
        for e in events
        if e.reason in CLUSTER_FAULTS
        and not (e.reason in ("node_lost", "head_lost") and not (e.data or {}).get("node_id"))
    )
    by_cluster: dict[uuid.UUID, list[tuple[datetime, str | None, str | None]]] = {}
    for e in events:
        by_cluster.setdefault(e.cluster_id, []).append((e.at, e.from_status, e.to_status))
    degraded = sum(
        _secs(a, b) for ch in by_cluster.values() for a, b in periods(ch, "degraded", until)
    )
    return FaultStats(
        device_faults_by_reason=dict(device_faults),
        cluster_faults_by_reason=dict(counts),
        device_mttr_seconds=device_mttr_seconds,
        cluster_degraded_seconds=degraded,
    )


async def set_promised_uptime(
    session: AsyncSession, provider_id: uuid.UUID, promised_uptime: float, *, admin_id: uuid.UUID
) -> ProviderSlaSet:
    """Set a provider's promised uptime; ``UserNotFound`` (404) unless it is a provider."""
    user = await session.get(User, provider_id)
    if user is None or not user.is_provider:
        raise UserNotFound("No such provider")
    row = await session.get(ProviderSla, provider_id, with_for_update=True)
    if row is None:
        session.add(ProviderSla(provider_id=provider_id, promised_uptime=promised_uptime))
    else:
        row.promised_uptime = promised_uptime
    await audit(
        session,
        action="ops.provider_sla",
        actor_user_id=admin_id,
        subject_type="user",
        subject_id=provider_id,
        details={"promised_uptime": promised_uptime},
    )
    await session.flush()
    return ProviderSlaSet(provider_id=provider_id, promised_uptime=promised_uptime)
