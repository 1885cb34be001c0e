"""Ledger, idempotency and metering tables.

The ledger is double entry: a ``LedgerTransaction`` owns postings whose amounts sum to zero,
each posting moving money in or out of one ``LedgerAccount``. The database enforces what
matters (see ``tesai.billing.ddl``): per-transaction zero sum at commit, no negative balance
on accounts that must stay ≥ 0, and append-only postings. ``LedgerAccount.balance`` is kept
by a database trigger from the postings, never written by Python.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tesai.db import Base


class LedgerAccount(Base):
    """One balance: a customer's available funds, one hold, a provider's earnings, …

    ``ref`` tells apart several accounts of one kind and owner (one held account per
    cluster hold: ``ref = "cluster:<id>"``); it is ``""`` for the single account of a kind.
    """

    __tablename__ = "ledger_accounts"
    __table_args__ = (
        UniqueConstraint("owner_user_id", "kind", "ref", postgresql_nulls_not_distinct=True),
        CheckConstraint("allow_negative OR balance >= 0", name="non_negative"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    owner_user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="RESTRICT"), index=True
    )
    """None for platform accounts."""
    kind: Mapped[str] = mapped_column(String(32))
    ref: Mapped[str] = mapped_column(String(128), default="")
    balance: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Micro-USDC; maintained by a trigger on ``ledger_postings``."""
    allow_negative: Mapped[bool] = mapped_column(Boolean, default=False)
    """Only platform treasury and credits may go below zero (money leaving or created)."""
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class LedgerTransaction(Base):
    """One money movement; its postings sum to zero (checked by the database at commit)."""

    __tablename__ = "ledger_transactions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    """Unique forever: a ledger movement happens once per key, whatever retries."""
    request_hash: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the operation's parameters; a reused key with other ones is a conflict."""
    memo: Mapped[str] = mapped_column(String(500), default="")
    refs: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)
    db_xact: Mapped[int | None] = mapped_column(BigInteger)
    """The database transaction that wrote it (set by a trigger); postings must share it."""


class LedgerPosting(Base):
    """One leg of a transaction. Append-only (a trigger rejects UPDATE and DELETE).

    ``transaction_id`` and ``account_id`` are checked by the statement trigger that applies
    the postings (one check per INSERT statement rather than a foreign-key lookup per row:
    a settlement writes tens of thousands of postings at once); ledger transactions and
    accounts are never deleted (triggers), so the references stay valid.
    """

    __tablename__ = "ledger_postings"
    __table_args__ = (Index("ix_ledger_postings_account_id_id", "account_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    transaction_id: Mapped[int] = mapped_column(BigInteger, index=True)
    account_id: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    """Signed micro-USDC: positive adds to the account's balance."""


class IdempotencyRecord(Base):
    """The stored answer to a money-moving API request, replayed for the same key.

    Kept at least ``idempotency_retention_days``; a periodic task deletes older ones. The
    ledger's own per-operation keys (``LedgerTransaction.idempotency_key``) are never deleted.
    """

    __tablename__ = "idempotency_records"

    scope: Mapped[str] = mapped_column(String(100), primary_key=True)
    """Who used the key and where: ``<user id>:<METHOD> <path>``."""
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[Any] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)


class NodeMeter(Base):
    """Billing state of one cluster node: who pays, who earns, and how far it is counted.

    ``metered_until`` is the watermark of time already accounted (closed minutes as usage
    buckets, the minute in progress in ``open_*``), so replaying an observation after a
    crash counts nothing twice; ``billed_seconds`` is the running total used for exact
    cumulative rounding (see ``tesai.billing.metering``).
    """

    __tablename__ = "billing_node_meters"

    node_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    cluster_id: Mapped[uuid.UUID] = mapped_column(index=True)
    """Indexed for what a cluster has spent (budgets); never changes, so the tick's updates
    stay HOT."""
    device_id: Mapped[uuid.UUID]
    # Who pays and who earns, as their ledger accounts (the accounts name their owners): the
    # tick rewrites every meter row, so it carries nothing it does not read.
    hold_account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"))
    earnings_account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"))
    price_per_hour_micro: Mapped[int] = mapped_column(BigInteger)
    metered_until: Mapped[datetime]
    billable_until: Mapped[datetime | None]
    """No time after this is billed (None: no limit): the cluster's paid end, or the second
    its budget or hold runs out if that is sooner (``tesai.billing.money.billable_end``).
    Time past it moves the watermark without billing, like unhealthy time."""
    billed_seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    open_minute: Mapped[datetime | None]
    """The minute in progress at the watermark (None when nothing of it is accounted yet):
    its usage waits here until the minute closes and becomes a bucket."""
    open_seconds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    open_amount: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # What the last move replaced: the interval it accounted started at ``metered_from``,
    # with ``prev_open_*`` in progress (read back by the tick's own statement).
    metered_from: Mapped[datetime | None]
    prev_open_minute: Mapped[datetime | None]
    prev_open_seconds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    prev_open_amount: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class UsageBucket(Base):
    """Healthy seconds of one node within one closed minute, and what they cost.

    Written once, when the minute closes (usually settled in the same statement); only a
    bucket left unsettled is updated later, by the settlement sweep. ``amount_micro`` is what
    the provider earns for these seconds (price × seconds with cumulative rounding); the
    platform fee is added on top at settlement.
    """

    __tablename__ = "usage_buckets"
    __table_args__ = (
        Index("ix_usage_buckets_unsettled", "hold_account_id", postgresql_where="NOT settled"),
        CheckConstraint("seconds >= 0 AND seconds <= 60", name="seconds_in_minute"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # Few indexes on purpose: the tick writes one row per running node each minute. One
    # bucket per node and minute follows from the meter's watermark (a bucket is written
    # only by the statement that moves its meter past the minute, see
    # ``tesai.billing.metering``), so no unique index is paid for on every insert. The
    # unsettled index stays small: almost every bucket is written settled.
    cluster_id: Mapped[uuid.UUID]
    node_id: Mapped[uuid.UUID]
    device_id: Mapped[uuid.UUID]
    hold_account_id: Mapped[int] = mapped_column(BigInteger)
    earnings_account_id: Mapped[int] = mapped_column(BigInteger)
    minute: Mapped[datetime]
    seconds: Mapped[int] = mapped_column(Integer)
    price_per_hour_micro: Mapped[int] = mapped_column(BigInteger)
    amount_micro: Mapped[int] = mapped_column(BigInteger)
    settled: Mapped[bool] = mapped_column(Boolean, default=False)
    settlement_transaction_id: Mapped[int | None] = mapped_column(BigInteger)
    unpaid_micro: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """The part of ``amount_micro`` its hold could not pay when it was settled (the
    shortfall; 0 almost always): settled buckets are paid as far as the hold allowed."""


class HoldTotals(Base):
    """Running totals of what one hold has paid for usage, kept by the settlement that
    pays it (under the settlement lock).

    They make the platform fee round once over the hold's whole usage: each settlement
    charges ``fee_on(provider_micro after) − fee_micro`` (``money.settle_hold``), so a
    hold's fees add up to the fee of its total, as the hold was computed.
    """

    __tablename__ = "billing_hold_totals"

    hold_account_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("ledger_accounts.id"), primary_key=True
    )
    provider_micro: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Paid to providers from the hold so far."""
    fee_micro: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Paid to the platform from the hold so far."""
    shortfall_micro: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Provider usage the hold could not pay (the sum of its buckets' ``unpaid_micro``)."""


class SpendCap(Base):
    """A customer's monthly spend cap (see ``tesai.billing.guardrails``); no row: no cap."""

    __tablename__ = "spend_caps"
    __table_args__ = (CheckConstraint("monthly_cap_micro > 0", name="positive"),)

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    monthly_cap_micro: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
