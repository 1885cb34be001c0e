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

from sqlalchemy import ColumnElement, and_, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.audit.models import AuditEvent
from tesai.billing.errors import IdempotencyKeyReused, InsufficientFunds
from tesai.billing.models import LedgerAccount, LedgerPosting, LedgerTransaction
from tesai.db import insert_rows
from tesai.errors import AppError


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


Plan = Callable[[dict[AccountRef, int]], tuple[list[Leg], dict[str, Any]]]
"""A movement's plan: the locked balances of its accounts → its legs and its result (raise an
``AppError`` to refuse)."""


@dataclass
class Movement:
    """The result of one money movement (the same object for a replay)."""

    transaction_id: int
    kind: str
    result: dict[str, Any] = field(default_factory=dict)
    replayed: bool = False


async def account_id(session: AsyncSession, account: AccountRef) -> int:
    """The id of ``account``, created (at zero) when it does not exist yet."""
    found = await session.scalar(select(LedgerAccount.id).where(_matches(account)))
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
    found = await session.scalar(select(LedgerAccount.id).where(_matches(account)))
    assert found is not None
    return found


async def balance_of(session: AsyncSession, account: AccountRef) -> int:
    """Current balance (0 for an account that does not exist yet)."""
    value = await session.scalar(select(LedgerAccount.balance).where(_matches(account)))
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


def _matches(account: AccountRef) -> ColumnElement[bool]:
    # Platform accounts have no owner; "IS NULL" (not IS NOT DISTINCT FROM) keeps the
    # unique index usable.
    owner = (
        LedgerAccount.owner_user_id.is_(None)
        if account.owner_user_id is None
        else LedgerAccount.owner_user_id == account.owner_user_id
    )
    return and_(owner, LedgerAccount.kind == account.kind, LedgerAccount.ref == account.ref)


async def lock_accounts(
    session: AsyncSession, accounts: Sequence[AccountRef], *, create: bool = True
) -> dict[AccountRef, tuple[int, int]]:
    """Lock ``accounts`` in id order (creating missing ones); returns (id, balance) each.

    One round trip when the accounts exist, three when some are new (one INSERT creates
    them all); the id order means two movements touching the same accounts never deadlock.
    ``create=False`` leaves missing accounts out of the answer.
    """
    wanted = list(dict.fromkeys(accounts))
    owned = [a for a in wanted if a.owner_user_id is not None]
    platform = [a for a in wanted if a.owner_user_id is None]
    params = {
        "owners": [a.owner_user_id for a in owned],
        "kinds": [a.kind for a in owned],
        "refs": [a.ref for a in owned],
        "pkinds": [a.kind for a in platform],
        "prefs": [a.ref for a in platform],
    }

    async def read() -> dict[AccountRef, tuple[int, int]]:
        rows = await session.execute(_LOCK_ACCOUNTS, params)
        return {AccountRef(o, k, r): (int(i), int(b)) for i, o, k, r, b in rows.tuples()}

    found = await read()
    missing = [a for a in wanted if a not in found]
    if not missing or not create:
        return found
    # In a fixed order, so two transactions creating the same new accounts wait for each
    # other instead of deadlocking.
    missing.sort(key=lambda a: (str(a.owner_user_id), a.kind, a.ref))
    await session.execute(
        insert(LedgerAccount).on_conflict_do_nothing(),
        [
            {
                "owner_user_id": a.owner_user_id,
                "kind": a.kind,
                "ref": a.ref,
                "allow_negative": a.kind in NEGATIVE_ALLOWED,
            }
            for a in missing
        ],
    )
    return await read()


# One statement shape whatever the number of accounts (so it is prepared once): the ids by
# the unique (owner, kind, ref) index, platform accounts (no owner) apart, then locked in id
# order.
_LOCK_ACCOUNTS = text(
    """
SELECT a.id, a.owner_user_id, a.kind, a.ref, a.balance FROM ledger_accounts a
WHERE a.id = ANY(ARRAY(
  SELECT o.id FROM unnest(CAST(:owners AS uuid[]), CAST(:kinds AS text[]),
                          CAST(:refs AS text[])) AS w(owner, kind, ref)
  JOIN ledger_accounts o ON o.owner_user_id = w.owner AND o.kind = w.kind AND o.ref = w.ref
  UNION ALL
  SELECT p.id FROM unnest(CAST(:pkinds AS text[]), CAST(:prefs AS text[])) AS w(kind, ref)
  JOIN ledger_accounts p ON p.owner_user_id IS NULL AND p.kind = w.kind AND p.ref = w.ref
))
ORDER BY a.id
FOR UPDATE"""
)


async def post(
    session: AsyncSession,
    *,
    kind: str,
    key: str,
    request_hash: str,
    plan: Plan,
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
    # Locks first: a twin request holding the same accounts commits before we look for its
    # key, so we see its movement instead of moving money a second time.
    locked = await lock_accounts(session, accounts)
    checkpoint("accounts")
    replay = await find_replay(session, kind=kind, key=key, request_hash=request_hash)
    if replay is not None:
        return replay
    legs, result = plan({acc: bal for acc, (_, bal) in locked.items()})
    if sum(leg.amount for leg in legs) != 0:
        raise ValueError(f"unbalanced plan for {kind}: {legs}")
    ids = {acc: i for acc, (i, _) in locked.items()}
    for leg in legs:
        if leg.account not in ids:
            raise ValueError(f"{kind}: leg on an account not named in accounts: {leg.account}")
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


@dataclass(frozen=True)
class PostRequest:
    """One movement for ``post_batch``; the same fields as ``post`` takes."""

    kind: str
    key: str
    request_hash: str
    plan: Plan
    accounts: Sequence[AccountRef]
    memo: str = ""
    refs: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] | None = None
    """Audit row fields (action, actor_user_id, subject_type, subject_id, details)."""


async def post_batch(
    session: AsyncSession, requests: Sequence[PostRequest]
) -> list[Movement | AppError]:
    """Make many movements in a handful of statements, each exactly once per key.

    The same rules as ``post``, set-based: one query finds replays, one locks every
    account (id order), plans run in order against running balances (so a refusal is
    decided exactly as one-by-one would), one INSERT writes the transactions, one the
    postings and one the audit rows. A refused movement's slot holds its error; the
    others still happen. Keys must be distinct within one batch.
    """
    keys = [r.key for r in requests]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate idempotency keys in one batch")
    # Locks first (see ``post``): a twin batch commits before we look for its keys.
    # Missing accounts are created only for the movements that happen (a refused hold
    # leaves no empty account behind); they plan with a balance of zero.
    all_accounts = [acc for r in requests for acc in r.accounts]
    locked = await lock_accounts(session, all_accounts, create=False) if all_accounts else {}
    checkpoint("accounts")
    rows = (
        await session.execute(
            select(
                LedgerTransaction.idempotency_key,
                LedgerTransaction.id,
                LedgerTransaction.kind,
                LedgerTransaction.request_hash,
                LedgerTransaction.refs,
            ).where(LedgerTransaction.idempotency_key.in_(keys))
        )
    ).all()
    existing = {r[0]: r for r in rows}
    out: list[Movement | AppError | None] = [None] * len(requests)
    todo: list[int] = []
    for i, req in enumerate(requests):
        found = existing.get(req.key)
        if found is None:
            todo.append(i)
        elif found.request_hash != req.request_hash or found.kind != req.kind:
            out[i] = IdempotencyKeyReused(
                "This idempotency key was already used for a different request", key=req.key
            )
        else:
            out[i] = Movement(found.id, found.kind, dict(found.refs.get("result", {})), True)
    balances = {acc: locked[acc][1] if acc in locked else 0 for acc in all_accounts}
    planned: list[tuple[int, list[Leg], dict[str, Any]]] = []
    for i in todo:
        req = requests[i]
        try:
            legs, result = req.plan({acc: balances[acc] for acc in req.accounts})
        except AppError as exc:
            out[i] = exc
            continue
        if sum(leg.amount for leg in legs) != 0:
            raise ValueError(f"unbalanced plan for {req.kind}: {legs}")
        for leg in legs:
            balances[leg.account] += leg.amount
        planned.append((i, legs, result))
    if planned:
        new = {leg.account for _, legs, _ in planned for leg in legs} - locked.keys()
        if new:
            locked |= await lock_accounts(session, list(new))
        tx_ids = list(
            (
                await session.scalars(
                    insert(LedgerTransaction).returning(
                        LedgerTransaction.id, sort_by_parameter_order=True
                    ),
                    [
                        {
                            "kind": requests[i].kind,
                            "idempotency_key": requests[i].key,
                            "request_hash": requests[i].request_hash,
                            "memo": requests[i].memo,
                            "refs": {**requests[i].refs, "result": result},
                        }
                        for i, _, result in planned
                    ],
                )
            ).all()
        )
        checkpoint("claimed")
        postings = [
            {"transaction_id": tx, "account_id": locked[leg.account][0], "amount": leg.amount}
            for tx, (_, legs, _) in zip(tx_ids, planned, strict=True)
            for leg in legs
            if leg.amount != 0
        ]
        if postings:
            await insert_rows(session, LedgerPosting, postings)
        checkpoint("posted")
        audit_rows = [
            {
                "actor_kind": "user" if req.audit.get("actor_user_id") else "system",
                **req.audit,
                "details": {**req.audit.get("details", {}), "ledger_transaction_id": tx},
            }
            for tx, (i, _, _) in zip(tx_ids, planned, strict=True)
            if (req := requests[i]).audit is not None
        ]
        if audit_rows:
            await insert_rows(session, AuditEvent, audit_rows)
        for tx, (i, _, result) in zip(tx_ids, planned, strict=True):
            out[i] = Movement(tx, requests[i].kind, result)
    done = [m for m in out if m is not None]
    assert len(done) == len(requests)
    return done
