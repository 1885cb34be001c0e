"""Read models for statements: balances, ledger history, usage, earnings."""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.billing.ledger import AccountKind
from tesai.billing.models import LedgerAccount, LedgerPosting, LedgerTransaction, UsageBucket


@dataclass(frozen=True)
class Balances:
    available_micro: int
    held_micro: int
    holds: dict[str, int]
    earnings_micro: int
    pending_payout_micro: int


async def balances(session: AsyncSession, user_id: uuid.UUID) -> Balances:
    rows = (
        await session.execute(
            select(LedgerAccount.kind, LedgerAccount.ref, LedgerAccount.balance).where(
                LedgerAccount.owner_user_id == user_id
            )
        )
    ).all()
    by_kind: dict[str, int] = {}
    holds: dict[str, int] = {}
    for kind, ref, balance in rows:
        by_kind[kind] = by_kind.get(kind, 0) + int(balance)
        if kind == AccountKind.CUSTOMER_HELD and balance:
            holds[ref] = int(balance)
    return Balances(
        available_micro=by_kind.get(AccountKind.CUSTOMER_AVAILABLE, 0),
        held_micro=by_kind.get(AccountKind.CUSTOMER_HELD, 0),
        holds=holds,
        earnings_micro=by_kind.get(AccountKind.PROVIDER_EARNINGS, 0),
        pending_payout_micro=by_kind.get(AccountKind.PROVIDER_PENDING_PAYOUT, 0),
    )


@dataclass(frozen=True)
class LedgerLine:
    posting_id: int
    transaction_id: int
    at: datetime
    kind: str
    account: str
    ref: str
    amount_micro: int
    memo: str


async def ledger_history(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    kinds: tuple[str, ...] | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[LedgerLine]:
    """The user's postings, newest first; page with ``before_id``."""
    query = (
        select(
            LedgerPosting.id,
            LedgerPosting.transaction_id,
            LedgerTransaction.created_at,
            LedgerTransaction.kind,
            LedgerAccount.kind,
            LedgerAccount.ref,
            LedgerPosting.amount,
            LedgerTransaction.memo,
        )
        .join(LedgerAccount, LedgerAccount.id == LedgerPosting.account_id)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
        .where(LedgerAccount.owner_user_id == user_id)
        .order_by(LedgerPosting.id.desc())
        .limit(limit)
    )
    if kinds:
        query = query.where(LedgerAccount.kind.in_(kinds))
    if before_id is not None:
        query = query.where(LedgerPosting.id < before_id)
    return [LedgerLine(*(r)) for r in (await session.execute(query)).all()]


def ledger_csv(lines: list[LedgerLine]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["posting_id", "transaction_id", "at", "kind", "account", "ref", "amount_micro", "memo"]
    )
    for line in lines:
        writer.writerow(
            [
                line.posting_id,
                line.transaction_id,
                line.at.isoformat(),
                line.kind,
                line.account,
                line.ref,
                line.amount_micro,
                line.memo,
            ]
        )
    return out.getvalue()


@dataclass(frozen=True)
class UsageLine:
    cluster_id: uuid.UUID
    node_id: uuid.UUID
    device_id: uuid.UUID
    seconds: int
    price_per_hour_micro: int
    amount_micro: int
    settled_micro: int
    """What was paid of ``amount_micro`` so far (a hold that ran short pays less)."""


async def usage_by_node(
    session: AsyncSession,
    *,
    hold_account_ids: list[int] | None = None,
    earnings_account_ids: list[int] | None = None,
) -> list[UsageLine]:
    """Seconds and amounts per cluster node, for a customer's holds or a provider's earnings."""
    settled = func.sum(UsageBucket.amount_micro - UsageBucket.unpaid_micro).filter(
        UsageBucket.settled.is_(True)
    )
    query = select(
        UsageBucket.cluster_id,
        UsageBucket.node_id,
        UsageBucket.device_id,
        func.sum(UsageBucket.seconds),
        func.max(UsageBucket.price_per_hour_micro),
        func.sum(UsageBucket.amount_micro),
        func.coalesce(settled, 0),
    ).group_by(UsageBucket.cluster_id, UsageBucket.node_id, UsageBucket.device_id)
    if hold_account_ids is not None:
        query = query.where(UsageBucket.hold_account_id.in_(hold_account_ids))
    if earnings_account_ids is not None:
        query = query.where(UsageBucket.earnings_account_id.in_(earnings_account_ids))
    return [
        UsageLine(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]))
        for r in (await session.execute(query.order_by(UsageBucket.cluster_id))).all()
    ]


async def account_ids(session: AsyncSession, user_id: uuid.UUID, kind: str) -> list[int]:
    return list(
        (
            await session.scalars(
                select(LedgerAccount.id).where(
                    LedgerAccount.owner_user_id == user_id, LedgerAccount.kind == kind
                )
            )
        ).all()
    )


@dataclass(frozen=True)
class MonthlyStatement:
    month: str
    """``YYYY-MM`` (UTC)."""
    deposited_micro: int
    granted_micro: int
    charged_micro: int
    """Usage paid out of holds (provider price plus platform fee)."""
    released_micro: int
    """Unused holds returned to available."""


_MONTHLY_SQL = """
SELECT to_char(date_trunc('month', t.created_at AT TIME ZONE 'UTC'), 'YYYY-MM') AS month,
       coalesce(sum(p.amount) FILTER (WHERE t.kind = 'deposit'), 0),
       coalesce(sum(p.amount) FILTER (WHERE t.kind = 'grant'), 0),
       coalesce(-sum(p.amount) FILTER (WHERE t.kind IN ('settle', 'settle_batch')
                                       AND a.kind = 'customer_held'), 0),
       coalesce(sum(p.amount) FILTER (WHERE t.kind = 'release'
                                      AND a.kind = 'customer_available'), 0)
FROM ledger_postings p
JOIN ledger_accounts a ON a.id = p.account_id
JOIN ledger_transactions t ON t.id = p.transaction_id
WHERE a.owner_user_id = :user AND a.kind IN ('customer_available', 'customer_held')
GROUP BY 1 ORDER BY 1 DESC
"""


async def monthly_statements(session: AsyncSession, user_id: uuid.UUID) -> list[MonthlyStatement]:
    """One line per month: what came in, what usage cost, what was returned."""
    rows = await session.execute(text(_MONTHLY_SQL), {"user": user_id})
    return [MonthlyStatement(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]
