"""Spend guardrails: a customer's monthly spend cap and warnings before limits are hit.

Two limits, both in integer micro-USDC:
- the cluster budget (``clusters.budget_micro``, set at creation; the reconciler stops a
  cluster whose budget is used up with reason ``budget_exhausted``);
- the account's monthly spend cap (``spend_caps``, set by the customer; none by default).

**Month-to-date spend** is what the customer was charged for usage metered in the current
calendar month (UTC): the usage buckets of the customer's cluster holds whose minute falls
in the month, settled or not, plus the platform fee on top (``money.customer_charge`` per
hold, the same rule settlement and the reconciler's budget check use). Usage buckets are the
authoritative source: every metered second lands in one in the same transaction that moves
the meter's watermark, and settlement turns exactly those buckets into ledger postings, so
the ledger alone would lag by the settlement interval.

**Open holds** are what the customer's holds can still spend: each hold's balance less the
charge of its not-yet-settled usage (already counted as spent), never below zero.

Rules:
- creating or extending a cluster is refused (``SpendCapExceeded``, 409) when month-to-date
  spend + open holds + the new hold would pass the cap; the cap row is locked while checking,
  so two creations at once cannot both slip under it;
- ``store_warnings`` (run by the ``billing.spend_guardrails`` task) stores a notification at
  80 % and 95 % of every live cluster's budget and of every monthly cap, and at 100 % of the
  cap; the accounts at or over their cap are returned with their live clusters, which the
  task stops with reason ``spend_cap_reached``;
- ``notify_stopped_clusters`` tells customers about clusters stopped for their budget or cap.

Every notification is stored once (unique per user, kind, subject, threshold and month):
the task may run twice or concurrently.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.audit.service import record as audit
from tesai.billing import metering
from tesai.billing.ledger import AccountKind
from tesai.billing.models import LedgerAccount, NodeMeter, SpendCap, UsageBucket
from tesai.billing.money import customer_charge, format_usdc
from tesai.clusters.models import Cluster, ClusterEvent, ClusterStatus
from tesai.clusters.states import LIVE, REASONS
from tesai.errors import Conflict
from tesai.kit.time import utcnow
from tesai.notifications.service import NewNotification, notify
from tesai.settings import Settings

WARN_AT = (80, 95)
"""Percent of a budget or cap at which a warning is stored."""
CAP_REACHED = 100
STOP_REASONS = ("budget_exhausted", "spend_cap_reached")
"""Cluster stop reasons the customer is notified of."""
STOPPED_LOOKBACK = timedelta(days=1)
"""How far back ``notify_stopped_clusters`` looks for stops it has not told about yet."""


class SpendCapExceeded(Conflict):
    """The new hold would take the account past its monthly spend cap."""

    code = "spend_cap_exceeded"


# --- pure rules ------------------------------------------------------------------------------


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) containing ``now``: ``[start, end)``."""
    now = now.astimezone(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def period_of(now: datetime) -> str:
    """``2026-11``: the month a monthly-cap warning belongs to."""
    return month_bounds(now)[0].strftime("%Y-%m")


def crossed(spent_micro: int, limit_micro: int, thresholds: tuple[int, ...] = WARN_AT) -> list[int]:
    """The thresholds (percent of ``limit_micro``) that ``spent_micro`` has reached."""
    if limit_micro <= 0:
        return []
    return [t for t in thresholds if spent_micro * 100 >= limit_micro * t]


def would_exceed(
    cap_micro: int, month_to_date_micro: int, open_holds_micro: int, new_micro: int
) -> bool:
    return month_to_date_micro + open_holds_micro + new_micro > cap_micro


# --- reading spend ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CapStatus:
    user_id: uuid.UUID
    monthly_cap_micro: int | None
    period: str
    period_start: datetime
    period_end: datetime
    month_to_date_micro: int
    open_holds_micro: int

    @property
    def used_pct(self) -> float | None:
        if not self.monthly_cap_micro:
            return None
        return round(100 * self.month_to_date_micro / self.monthly_cap_micro, 2)


async def _hold_accounts(
    session: AsyncSession, user_ids: list[uuid.UUID]
) -> dict[int, tuple[uuid.UUID, int]]:
    """Every hold account of these customers: id → (owner, balance)."""
    if not user_ids:
        return {}
    rows = await session.execute(
        select(LedgerAccount.id, LedgerAccount.owner_user_id, LedgerAccount.balance).where(
            LedgerAccount.owner_user_id.in_(user_ids),
            LedgerAccount.kind == AccountKind.CUSTOMER_HELD,
        )
    )
    return {int(i): (owner, int(bal)) for i, owner, bal in rows.tuples() if owner is not None}


def _minutes_in_progress(
    holds: list[int], start: datetime | None = None, end: datetime | None = None
) -> Select[int, int]:
    """Usage of the minutes in progress on the meters of these holds (not buckets yet)."""
    query = select(NodeMeter.hold_account_id, NodeMeter.open_amount).where(
        NodeMeter.hold_account_id.in_(holds), NodeMeter.open_amount > 0
    )
    if start is not None and end is not None:
        query = query.where(NodeMeter.open_minute >= start, NodeMeter.open_minute < end)
    return query


async def month_to_date(
    session: AsyncSession, settings: Settings, user_ids: list[uuid.UUID], now: datetime
) -> dict[uuid.UUID, int]:
    """Each customer's usage charge in the calendar month of ``now`` (see module docstring)."""
    holds = await _hold_accounts(session, user_ids)
    out = dict.fromkeys(user_ids, 0)
    if not holds:
        return out
    start, end = month_bounds(now)
    used = (
        select(UsageBucket.hold_account_id.label("hold"), UsageBucket.amount_micro.label("amount"))
        .where(
            UsageBucket.hold_account_id.in_(list(holds)),
            UsageBucket.minute >= start,
            UsageBucket.minute < end,
        )
        .union_all(_minutes_in_progress(list(holds), start, end))
        .subquery()
    )
    rows = await session.execute(select(used.c.hold, func.sum(used.c.amount)).group_by(used.c.hold))
    for hold_id, amount in rows.tuples():
        owner = holds[int(hold_id)][0]
        out[owner] += customer_charge(int(amount or 0), settings.platform_fee_bps)
    return out


async def open_holds(session: AsyncSession, settings: Settings, user_id: uuid.UUID) -> int:
    """What the customer's holds can still spend (balance less unsettled usage charge)."""
    holds = await _hold_accounts(session, [user_id])
    if not holds:
        return 0
    pending = (
        select(UsageBucket.hold_account_id.label("hold"), UsageBucket.amount_micro.label("amount"))
        .where(UsageBucket.hold_account_id.in_(list(holds)), UsageBucket.settled.is_(False))
        .union_all(_minutes_in_progress(list(holds)))
        .subquery()
    )
    unsettled = dict(
        (
            await session.execute(
                select(pending.c.hold, func.sum(pending.c.amount)).group_by(pending.c.hold)
            )
        )
        .tuples()
        .all()
    )
    total = 0
    for hold_id, (_, balance) in holds.items():
        owed = customer_charge(int(unsettled.get(hold_id) or 0), settings.platform_fee_bps)
        total += max(0, balance - owed)
    return total


async def get_cap(session: AsyncSession, user_id: uuid.UUID, *, lock: bool = False) -> int | None:
    cap = await session.get(SpendCap, user_id, with_for_update=lock)
    return None if cap is None else cap.monthly_cap_micro


async def cap_status(
    session: AsyncSession, settings: Settings, user_id: uuid.UUID, now: datetime | None = None
) -> CapStatus:
    """The customer's cap, month-to-date spend and open holds."""
    now = now or utcnow()
    start, end = month_bounds(now)
    return CapStatus(
        user_id=user_id,
        monthly_cap_micro=await get_cap(session, user_id),
        period=period_of(now),
        period_start=start,
        period_end=end,
        month_to_date_micro=(await month_to_date(session, settings, [user_id], now))[user_id],
        open_holds_micro=await open_holds(session, settings, user_id),
    )


# --- changing the cap, checking new holds ----------------------------------------------------


async def set_cap(
    session: AsyncSession, settings: Settings, user_id: uuid.UUID, cap_micro: int | None
) -> CapStatus:
    """Set (``cap_micro`` > 0) or clear (None) the customer's monthly spend cap; audited.

    A cap below what is already spent takes effect on the next guardrail run: the account's
    live clusters are stopped.
    """
    before = await get_cap(session, user_id, lock=True)
    if cap_micro is None:
        await session.execute(delete(SpendCap).where(SpendCap.user_id == user_id))
    else:
        stmt = insert(SpendCap).values(user_id=user_id, monthly_cap_micro=cap_micro)
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[SpendCap.user_id],
                set_={"monthly_cap_micro": cap_micro, "updated_at": func.now()},
            )
        )
    session.expire_all()
    await audit(
        session,
        action="money.spend_cap_set" if cap_micro is not None else "money.spend_cap_cleared",
        actor_user_id=user_id,
        subject_type="user",
        subject_id=str(user_id),
        details={"before_micro": before, "after_micro": cap_micro},
    )
    return await cap_status(session, settings, user_id)


async def check_new_hold(
    session: AsyncSession, settings: Settings, user_id: uuid.UUID, amount_micro: int
) -> None:
    """Refuse a new or extended hold of ``amount_micro`` that would pass the monthly cap.

    Locks the cap row until the caller's transaction ends, so concurrent creations by one
    customer are checked one after the other. Raises ``SpendCapExceeded`` (409) with the
    numbers; does nothing when the customer has no cap.
    """
    room = (await lock_caps(session, settings, [user_id])).get(user_id)
    refused = room.refusal(amount_micro) if room is not None else None
    if refused is not None:
        raise refused


@dataclass
class CapRoom:
    """What a customer's monthly spend cap leaves for new holds, as of its locked cap row."""

    user_id: uuid.UUID
    cap_micro: int
    month_to_date_micro: int
    open_holds_micro: int
    period: str

    def refusal(self, amount_micro: int) -> SpendCapExceeded | None:
        """The refusal of a new hold of ``amount_micro`` (None: it fits)."""
        spent, held, cap = self.month_to_date_micro, self.open_holds_micro, self.cap_micro
        if not would_exceed(cap, spent, held, amount_micro):
            return None
        return SpendCapExceeded(
            f"This needs a hold of {format_usdc(amount_micro)} USDC: with "
            f"{format_usdc(spent)} USDC spent this month and {format_usdc(held)} USDC in open "
            f"holds, that is {format_usdc(spent + held + amount_micro)} USDC, over your monthly "
            f"spend cap of {format_usdc(cap)} USDC. Raise or clear the cap, or ask for less.",
            monthly_cap_micro=cap,
            month_to_date_micro=spent,
            open_holds_micro=held,
            requested_micro=amount_micro,
            period=self.period,
        )

    def take(self, amount_micro: int) -> None:
        """A new hold of ``amount_micro`` was placed."""
        self.open_holds_micro += amount_micro


async def lock_caps(
    session: AsyncSession, settings: Settings, user_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, CapRoom]:
    """The customers' cap rows, locked in customer order until the transaction ends (one
    statement), with their spend so far; customers without a cap are left out."""
    caps = dict(
        (
            await session.execute(
                select(SpendCap.user_id, SpendCap.monthly_cap_micro)
                .where(SpendCap.user_id.in_(sorted(set(user_ids))))
                .order_by(SpendCap.user_id)
                .with_for_update()
            )
        )
        .tuples()
        .all()
    )
    if not caps:
        return {}
    now = utcnow()
    spent = await month_to_date(session, settings, list(caps), now)
    return {
        user: CapRoom(
            user, cap, spent[user], await open_holds(session, settings, user), period_of(now)
        )
        for user, cap in caps.items()
    }


# --- the periodic scan -----------------------------------------------------------------------


@dataclass
class OverCap:
    detail: str
    """The numbers, for the cluster event: ``12.000000 of 10.000000 USDC spent in 2026-11``."""
    cluster_ids: list[uuid.UUID] = field(default_factory=list)


@dataclass
class GuardrailScan:
    warnings_stored: int = 0
    caps_checked: int = 0
    budgets_checked: int = 0
    over_cap: dict[uuid.UUID, OverCap] = field(default_factory=dict)
    """Customers at or over their cap → their live clusters (to stop)."""


async def _cap_warnings(
    session: AsyncSession, settings: Settings, now: datetime, scan: GuardrailScan
) -> None:
    caps = dict(
        (await session.execute(select(SpendCap.user_id, SpendCap.monthly_cap_micro))).tuples().all()
    )
    scan.caps_checked = len(caps)
    if not caps:
        return
    spent = await month_to_date(session, settings, list(caps), now)
    period = period_of(now)
    for user_id, cap in caps.items():
        used = spent.get(user_id, 0)
        numbers = {"monthly_cap_micro": cap, "month_to_date_micro": used}
        for t in crossed(used, cap, (*WARN_AT, CAP_REACHED)):
            if t == CAP_REACHED:
                message = (
                    f"Your monthly spend cap of {format_usdc(cap)} USDC is reached "
                    f"({format_usdc(used)} USDC spent in {period}): your running clusters "
                    "are being stopped and new ones are refused until the cap is raised "
                    "or the month ends."
                )
            else:
                message = (
                    f"You have spent {format_usdc(used)} USDC in {period}: {t} % of your "
                    f"monthly spend cap of {format_usdc(cap)} USDC."
                )
            scan.warnings_stored += await notify(
                session,
                NewNotification(
                    user_id=user_id,
                    kind="spend_cap_reached" if t == CAP_REACHED else "spend_cap_warning",
                    severity="critical" if t >= 95 else "warning",
                    subject_type="account",
                    subject_id=str(user_id),
                    threshold=t,
                    period=period,
                    message=message,
                    data=numbers,
                ),
            )
        if used >= cap:
            scan.over_cap[user_id] = OverCap(
                f"{format_usdc(used)} of {format_usdc(cap)} USDC spent in {period}."
            )
    if scan.over_cap:
        rows = await session.execute(
            select(Cluster.customer_id, Cluster.id).where(
                Cluster.customer_id.in_(list(scan.over_cap)), Cluster.status.in_(list(LIVE))
            )
        )
        for customer_id, cluster_id in rows.tuples():
            scan.over_cap[customer_id].cluster_ids.append(cluster_id)


async def _budget_warnings(session: AsyncSession, settings: Settings, scan: GuardrailScan) -> None:
    clusters = list(
        (
            await session.execute(
                select(Cluster.id, Cluster.customer_id, Cluster.name, Cluster.budget_micro).where(
                    Cluster.status.in_(list(LIVE)), Cluster.budget_micro.is_not(None)
                )
            )
        ).tuples()
    )
    scan.budgets_checked = len(clusters)
    spent = await metering.spent_by_cluster(
        session, settings.platform_fee_bps, [c[0] for c in clusters]
    )
    for cluster_id, customer_id, name, budget in clusters:
        used = spent.get(cluster_id, 0)
        for t in crossed(used, budget or 0):
            scan.warnings_stored += await notify(
                session,
                NewNotification(
                    user_id=customer_id,
                    kind="cluster_budget_warning",
                    severity="critical" if t >= 95 else "warning",
                    subject_type="cluster",
                    subject_id=str(cluster_id),
                    threshold=t,
                    message=(
                        f"Cluster {name!r} has used {format_usdc(used)} USDC: {t} % of its "
                        f"budget of {format_usdc(budget or 0)} USDC. It stops at 100 %."
                    ),
                    data={"budget_micro": budget, "spent_micro": used},
                ),
            )


async def store_warnings(session: AsyncSession, settings: Settings, now: datetime) -> GuardrailScan:
    """Store the 80/95 % warnings of budgets and caps and the 100 % cap notice (once each);
    return the accounts at or over their cap with their live clusters, to be stopped."""
    scan = GuardrailScan()
    await _cap_warnings(session, settings, now, scan)
    await _budget_warnings(session, settings, scan)
    return scan


def stopped_notification(
    customer_id: uuid.UUID, cluster_id: uuid.UUID, name: str, reason: str, data: dict[str, object]
) -> NewNotification:
    """The notice that a cluster is being stopped for its budget or the account's cap."""
    return NewNotification(
        user_id=customer_id,
        kind="cluster_stopped",
        severity="critical",
        subject_type="cluster",
        subject_id=str(cluster_id),
        threshold=CAP_REACHED,
        message=f"Cluster {name!r} is being stopped: {REASONS.get(reason, reason)}",
        data={"reason": reason, **data},
    )


async def notify_stopped_clusters(session: AsyncSession, now: datetime) -> int:
    """Notify customers of clusters stopped for ``budget_exhausted`` or ``spend_cap_reached``
    (by the reconciler, settlement or this module) in the last day; returns how many new."""
    rows = await session.execute(
        select(ClusterEvent.cluster_id, ClusterEvent.reason, Cluster.customer_id, Cluster.name)
        .join(Cluster, Cluster.id == ClusterEvent.cluster_id)
        .where(
            ClusterEvent.reason.in_(STOP_REASONS),
            ClusterEvent.to_status == ClusterStatus.terminating.value,
            ClusterEvent.at >= now - STOPPED_LOOKBACK,
        )
    )
    stored = 0
    for cluster_id, reason, customer_id, name in rows.tuples():
        stored += await notify(
            session,
            stopped_notification(
                customer_id, cluster_id, name, reason, {"cluster_id": str(cluster_id)}
            ),
        )
    return stored
