"""The posting engine: accounts, one balanced transaction per movement, idempotency.

``post`` is the only way money moves. It claims the idempotency key first (a unique row in
``ledger_transactions``; a concurrent twin waits on it and then sees the first result),
locks the touched accounts in id order (no deadlocks between movements), checks funds,
inserts the postings and flushes. Balances are updated by the database from the postings;
the database also rejects an unbalanced transaction at commit and a negative balance on an
account that must stay ≥ 0, so a bug here cannot corrupt the ledger.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.billing.errors import IdempotencyKeyReused, InsufficientFunds
from tesai.billing.models import LedgerAccount, LedgerPosting, LedgerTransaction


class AccountKind:
    CUSTOMER_AVAILABLE = "customer_available"
    CUSTOMER_HELD = "customer_held"
    PROVIDER_EARNINGS = "provider_earnings"
    PROVIDER_PENDING_PAYOUT = "provider_pending_payout"
    PLATFORM_FEES = "platform_fees"
    PLATFORM_TREASURY = "platform_treasury"
    """Mirror of the on-chain USDC: negative by what the platform holds for others."""
    PLATFORM_CREDITS = "platform_credits"
    """Source of granted credit (promotions, private deployments); negative by design."""


NEGATIVE_ALLOWED = frozenset({AccountKind.PLATFORM_TREASURY, AccountKind.PLATFORM_CREDITS})

# Fault injection for crash tests: called with a checkpoint name inside every movement.
# Production leaves it None.
FaultHook = Callable[[str], None]
_fault_hook: FaultHook | None = None


def set_fault_hook(hook: FaultHook | None) -> None:
    """Install (or remove) a function called at checkpoints inside ``post``; tests raise there."""
    global _fault_hook
    _fault_hook = hook


def checkpoint(name: str) -> None:
    if _fault_hook is not None:
        _fault_hook(name)


@dataclass(frozen=True)
class AccountRef:
    owner_user_id: uuid.UUID | None
    kind: str
    ref: str = ""


@dataclass(frozen=True)
class Leg:
    account: AccountRef
    amount: int


@dataclass
class Movement:
    """The result of one money movement (the same object for a replay)."""

    transaction_id: int
    kind: str
    result: dict[str, Any] = field(default_factory=dict)
    replayed: bool = False


async def account_id(session: AsyncSession, account: AccountRef) -> int:
    """The id of ``account``, created (at zero) when it does not exist yet."""
    found = await session.scalar(
        select(LedgerAccount.id).where(
            LedgerAccount.owner_user_id.is_not_distinct_from(account.owner_user_id),
            LedgerAccount.kind == account.kind,
            LedgerAccount.ref == account.ref,
        )
    )
    if found is not None:
        return found
    stmt = (
        insert(LedgerAccount)
        .values(
            owner_user_id=account.owner_user_id,
            kind=account.kind,
            ref=account.ref,
            allow_negative=account.kind in NEGATIVE_ALLOWED,
        )
        .on_conflict_do_nothing()
        .returning(LedgerAccount.id)
    )
    created = await session.scalar(stmt)
    if created is not None:
        return created
    found = await session.scalar(
        select(LedgerAccount.id).where(
            LedgerAccount.owner_user_id.is_not_distinct_from(account.owner_user_id),
            LedgerAccount.kind == account.kind,
            LedgerAccount.ref == account.ref,
        )
    )
    assert found is not None
    return found


async def balance_of(session: AsyncSession, account: AccountRef) -> int:
    """Current balance (0 for an account that does not exist yet)."""
    value = await session.scalar(
        select(LedgerAccount.balance).where(
            LedgerAccount.owner_user_id.is_not_distinct_from(account.owner_user_id),
            LedgerAccount.kind == account.kind,
            LedgerAccount.ref == account.ref,
        )
    )
    return int(value or 0)


async def find_replay(
    session: AsyncSession, *, kind: str, key: str, request_hash: str
) -> Movement | None:
    """The movement already made with ``key``, or None.

    Raises ``IdempotencyKeyReused`` when ``key`` was used with other parameters.
    """
    row = (
        await session.execute(
            select(
                LedgerTransaction.id,
                LedgerTransaction.kind,
                LedgerTransaction.request_hash,
                LedgerTransaction.refs,
            ).where(LedgerTransaction.idempotency_key == key)
        )
    ).first()
    if row is None:
        return None
    if row.request_hash != request_hash or row.kind != kind:
        raise IdempotencyKeyReused(
            "This idempotency key was already used for a different request", key=key
        )
    return Movement(row.id, row.kind, dict(row.refs.get("result", {})), replayed=True)


async def lock_balances(session: AsyncSession, ids: Sequence[int]) -> dict[int, int]:
    """Lock accounts in id order and return their balances."""
    rows = await session.execute(
        select(LedgerAccount.id, LedgerAccount.balance)
        .where(LedgerAccount.id.in_(sorted(set(ids))))
        .order_by(LedgerAccount.id)
        .with_for_update()
    )
    return {r[0]: int(r[1]) for r in rows}


async def post(
    session: AsyncSession,
    *,
    kind: str,
    key: str,
    request_hash: str,
    plan: Callable[[dict[AccountRef, int]], tuple[list[Leg], dict[str, Any]]],
    accounts: Sequence[AccountRef],
    memo: str = "",
    refs: dict[str, Any] | None = None,
) -> Movement:
    """Make one balanced movement, exactly once per ``key``; flushes, never commits.

    ``plan`` receives the locked balances of ``accounts`` and returns the legs (which must
    sum to zero) and a result dict, stored with the transaction and returned on replay. It
    raises (e.g. ``InsufficientFunds``) to refuse; nothing is then written and the key stays
    unused, so the same request may be retried once funds arrive. Raises
    ``IdempotencyKeyReused`` for a key used earlier with other parameters.
    """
    replay = await find_replay(session, kind=kind, key=key, request_hash=request_hash)
    if replay is not None:
        return replay
    ids = {acc: await account_id(session, acc) for acc in accounts}
    checkpoint("accounts")
    balances = await lock_balances(session, list(ids.values()))
    legs, result = plan({acc: balances[i] for acc, i in ids.items()})
    if sum(leg.amount for leg in legs) != 0:
        raise ValueError(f"unbalanced plan for {kind}: {legs}")
    for leg in legs:
        if leg.account not in ids:
            ids[leg.account] = await account_id(session, leg.account)
    # A twin request with the same key that committed while we waited for the locks wins:
    # the insert then does nothing and we answer with its result.
    stmt = (
        insert(LedgerTransaction)
        .values(
            kind=kind,
            idempotency_key=key,
            request_hash=request_hash,
            memo=memo,
            refs={**(refs or {}), "result": result},
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(LedgerTransaction.id)
    )
    tx_id = await session.scalar(stmt)
    if tx_id is None:
        replay = await find_replay(session, kind=kind, key=key, request_hash=request_hash)
        assert replay is not None
        return replay
    checkpoint("claimed")
    values = [
        {"transaction_id": tx_id, "account_id": ids[leg.account], "amount": leg.amount}
        for leg in legs
        if leg.amount != 0
    ]
    if values:
        await session.execute(insert(LedgerPosting), values)
    checkpoint("posted")
    return Movement(tx_id, kind, result)


def require_funds(available: int, needed: int, what: str) -> None:
    if needed > available:
        raise InsufficientFunds(
            f"Not enough {what}: {needed} micro-USDC needed, {available} available",
            needed_micro=needed,
            available_micro=available,
        )
