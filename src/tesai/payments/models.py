"""Deposits (Solana Pay intents and the chain transfers that paid them) and payouts."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from tesai.db import Base, CreatedAtMixin, IdMixin


class DepositIntent(IdMixin, CreatedAtMixin, Base):
    """A Solana Pay transfer request for one customer, found on chain by its reference.

    States: ``open`` (waiting for a transfer) → ``credited`` (a transfer credited) or
    ``expired`` (no transfer before ``expires_at``; late transfers are still scanned for a
    grace period and credited, see ``tesai.payments.deposits``).

    A scan that fails on this intent (the chain cannot be read, one transaction cannot be
    recorded) leaves the others alone and writes why here; the next scan tries again.
    """

    __tablename__ = "deposit_intents"
    __table_args__ = (Index("ix_deposit_intents_status_expires", "status", "expires_at"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    reference: Mapped[str] = mapped_column(String(44), unique=True)
    """Base58 public key added as a read-only account to the payer's transfer instruction."""
    recipient: Mapped[str] = mapped_column(String(44))
    """The treasury's token account."""
    mint: Mapped[str] = mapped_column(String(44))
    amount_micro: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="open")
    expires_at: Mapped[datetime]
    credited_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    scan_error: Mapped[str] = mapped_column(String(300), default="", server_default="")
    """Why the last scan of this intent failed; empty once a scan gets through."""
    scan_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Scans of this intent that failed, ever."""


class ChainReceipt(IdMixin, CreatedAtMixin, Base):
    """One chain transfer seen for a deposit reference: credited at most once per signature.

    ``outcome`` says what the rule did: ``credited`` (exact), ``credited_underpaid`` /
    ``credited_overpaid`` (what arrived was credited, flagged for review), ``rejected_mint``
    / ``rejected_recipient`` / ``rejected_amount`` (nothing credited, flagged) or
    ``failed`` (the transaction failed on chain: nothing moved, nothing credited).
    """

    __tablename__ = "chain_receipts"

    signature: Mapped[str] = mapped_column(String(100), unique=True)
    deposit_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deposit_intents.id"), index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    mint: Mapped[str] = mapped_column(String(44))
    recipient: Mapped[str] = mapped_column(String(44))
    amount_micro: Mapped[int] = mapped_column(BigInteger)
    credited_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    outcome: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(300), default="")
    needs_review: Mapped[bool] = mapped_column(default=False, index=True)
    ledger_transaction_id: Mapped[int | None] = mapped_column(BigInteger)


class PayoutWallet(CreatedAtMixin, Base):
    """A provider's Solana wallet for payouts, proved by a signed message."""

    __tablename__ = "payout_wallets"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    address: Mapped[str] = mapped_column(String(44))
    token_account: Mapped[str] = mapped_column(String(44))
    """The wallet's associated token account for the USDC mint."""


class Payout(IdMixin, CreatedAtMixin, Base):
    """A provider withdrawal: ``pending`` → ``sending`` → ``sent`` → ``paid`` or ``reversed``.

    The transfer is signed locally and its signature, blockhash and last valid block height
    are stored before it is sent, under a lease (``lock_token``); the send's answer is
    applied guarded by ``id + lock_token``, so a stale sender's late answer is dropped. A
    payout whose outcome is unknown stays ``sent`` until the chain says (see
    ``tesai.payments.payouts``). ``needs_review``: sent by an older version without a
    blockhash, its outcome cannot be proved by expiry.
    """

    __tablename__ = "payouts"
    __table_args__ = (Index("ix_payouts_status", "status"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    amount_micro: Mapped[int] = mapped_column(BigInteger)
    destination: Mapped[str] = mapped_column(String(44))
    """Token account the USDC goes to."""
    status: Mapped[str] = mapped_column(String(16), default="pending")
    signature: Mapped[str | None] = mapped_column(String(100))
    blockhash: Mapped[str | None] = mapped_column(String(44))
    """The recent blockhash the transfer was signed on."""
    last_valid_block_height: Mapped[int | None] = mapped_column(BigInteger)
    """Past this block height a transfer with no signature status can never land."""
    reason: Mapped[str] = mapped_column(String(300), default="")
    lock_token: Mapped[str | None] = mapped_column(String(64))
    lock_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
