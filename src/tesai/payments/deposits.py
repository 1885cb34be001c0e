"""Deposits: Solana Pay intents, and the scan that credits each chain transfer once.

The scan reads the chain outside any DB transaction, then applies each new signature in a
short transaction guarded by the unique ``chain_receipts.signature``: a second scan, a
second worker or a replay after a crash finds the receipt and credits nothing more. The
ledger credit's idempotency key is the signature too, a second guard.

One intent or one transaction never stops the others: each signature is applied in its own
transaction, and whatever fails for an intent (reading the chain, recording a transaction)
is caught, written on the intent (``scan_error``, ``scan_failures``), counted
(``tesai_deposit_scan_failures_total``), logged, and audited (``money.deposit_scan_failed``,
when the reason changes); the scan goes on with the next one and tries the failed one again
next time. Amounts a transaction can carry but a receipt cannot store (a u64 of a
self-made token) are capped by the deposit rule, never sent to the database as they are.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from solders.keypair import Keypair
from sqlalchemy import select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tesai.audit.service import record as audit
from tesai.billing import service as ledger
from tesai.billing.errors import AmountInvalid, PaymentsNotConfigured
from tesai.billing.money import MICRO
from tesai.chain.base import ChainClient, level_reached
from tesai.kit.time import utcnow
from tesai.observability.business import DEPOSIT_SCAN_FAILURES
from tesai.payments.models import ChainReceipt, DepositIntent
from tesai.payments.rules import DepositJudgement, judge_deposit, solana_pay_url
from tesai.settings import Settings

log = structlog.get_logger(__name__)

MAX_DEPOSIT_MICRO = 1_000_000 * MICRO


@dataclass(frozen=True)
class DepositRequest:
    intent: DepositIntent
    url: str


def payment_url(intent: DepositIntent, settings: Settings) -> str:
    return solana_pay_url(
        recipient=intent.recipient,
        amount_micro=intent.amount_micro,
        mint=intent.mint,
        reference=intent.reference,
        label=settings.payout_label,
        message=f"TES AI deposit {intent.id}",
    )


async def create_deposit(
    session: AsyncSession, settings: Settings, *, user_id: uuid.UUID, amount_micro: int
) -> DepositRequest:
    """A new Solana Pay request with a fresh reference key for ``user_id``."""
    if amount_micro <= 0 or amount_micro > MAX_DEPOSIT_MICRO:
        raise AmountInvalid(f"Deposit must be between 1 and {MAX_DEPOSIT_MICRO} micro-USDC")
    if not settings.treasury_token_account:
        raise PaymentsNotConfigured("Deposits are not configured on this deployment (no treasury)")
    intent = DepositIntent(
        id=uuid.uuid4(),
        user_id=user_id,
        reference=str(Keypair().pubkey()),
        recipient=settings.treasury_token_account,
        mint=settings.usdc_mint,
        amount_micro=amount_micro,
        status="open",
        credited_micro=0,
        expires_at=utcnow() + timedelta(seconds=settings.deposit_intent_ttl_s),
    )
    session.add(intent)
    await session.flush()
    await audit(
        session,
        action="money.deposit_requested",
        actor_user_id=user_id,
        subject_type="deposit",
        subject_id=intent.id,
        details={"amount_micro": amount_micro, "reference": intent.reference},
    )
    return DepositRequest(intent, payment_url(intent, settings))


@dataclass
class ScanReport:
    intents: int = 0
    seen: int = 0
    credited: int = 0
    flagged: int = 0
    waiting: int = 0
    failed: int = 0
    """Intents whose scan failed this time (see ``DepositIntent.scan_error``)."""


async def scan_deposits(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    chain: ChainClient,
    *,
    limit: int = 500,
) -> ScanReport:
    """Find and apply new transfers for every deposit reference still being watched.

    Every watched intent is scanned each run, ``limit`` at a time (oldest first), so no
    number of intents, however they were made, keeps a later one from being looked at.
    """
    report = ScanReport()
    now = utcnow()
    grace = timedelta(seconds=settings.deposit_scan_grace_s)
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        query = (
            select(DepositIntent)
            .where(DepositIntent.expires_at + grace > now)
            .order_by(DepositIntent.created_at, DepositIntent.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(tuple_(DepositIntent.created_at, DepositIntent.id) > after)
        async with sessionmaker() as session:
            intents = list((await session.scalars(query)).all())
        report.intents += len(intents)
        for intent in intents:
            failures = await _scan_intent(sessionmaker, settings, chain, intent, report)
            if failures or intent.scan_error:
                await _note_scan(sessionmaker, intent, failures)
            if failures:
                report.failed += 1
        if len(intents) < limit:
            break
        after = (intents[-1].created_at, intents[-1].id)
    # Intents past their time with nothing paid are marked expired (still scanned in grace).
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(DepositIntent)
            .where(DepositIntent.status == "open", DepositIntent.expires_at <= now)
            .values(status="expired")
        )
    return report


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


async def _scan_intent(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    chain: ChainClient,
    intent: DepositIntent,
    report: ScanReport,
) -> list[str]:
    """Apply the new transactions of one intent, each on its own; returns what failed."""
    try:
        signatures = await chain.signatures_for_address(intent.reference)
        if not signatures:
            return []
        async with sessionmaker() as session:
            known = set(
                (
                    await session.scalars(
                        select(ChainReceipt.signature).where(ChainReceipt.signature.in_(signatures))
                    )
                ).all()
            )
    except Exception as exc:
        return [f"reading the chain: {_describe(exc)}"]
    failures: list[str] = []
    for signature in signatures:
        if signature in known:
            continue
        try:
            await _apply_signature(sessionmaker, settings, chain, intent, signature, report)
        except Exception as exc:
            failures.append(f"{signature}: {_describe(exc)}")
    return failures


async def _apply_signature(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    chain: ChainClient,
    intent: DepositIntent,
    signature: str,
    report: ScanReport,
) -> None:
    report.seen += 1
    tx = await chain.get_transaction(signature)
    if tx is None or not level_reached(tx.confirmation, settings.deposit_confirmation):
        report.waiting += 1  # not final yet: the next scan looks again
        return
    judgement = judge_deposit(
        tx,
        expected_micro=intent.amount_micro,
        mint=intent.mint,
        recipient=intent.recipient,
    )
    async with sessionmaker() as session, session.begin():
        applied = await apply_receipt(session, intent, signature, judgement)
    if applied and judgement.credit_micro > 0:
        report.credited += 1
    if applied and judgement.needs_review:
        report.flagged += 1
        log.warning(
            "deposit_flagged",
            deposit_id=str(intent.id),
            signature=signature,
            outcome=judgement.outcome,
            reason=judgement.reason,
        )


async def _note_scan(
    sessionmaker: async_sessionmaker[AsyncSession], intent: DepositIntent, failures: list[str]
) -> None:
    """Write the intent's scan failures (or clear the last one once a scan got through)."""
    reason = "; ".join(failures)[:300]
    if failures:
        DEPOSIT_SCAN_FAILURES.inc()
        log.error("deposit_scan_failed", deposit_id=str(intent.id), reason=reason)
    try:
        async with sessionmaker() as session, session.begin():
            values: dict[str, object] = {"scan_error": reason}
            if failures:
                values["scan_failures"] = DepositIntent.scan_failures + 1
            await session.execute(
                update(DepositIntent).where(DepositIntent.id == intent.id).values(**values)
            )
            if failures and reason != intent.scan_error:
                await audit(
                    session,
                    action="money.deposit_scan_failed",
                    actor_user_id=None,
                    actor_kind="system",
                    subject_type="deposit",
                    subject_id=intent.id,
                    details={"reason": reason, "failures": failures[:10]},
                )
    except Exception as exc:  # the database itself is failing: the log line above stays
        log.error("deposit_scan_note_failed", deposit_id=str(intent.id), error=_describe(exc))


async def apply_receipt(
    session: AsyncSession, intent: DepositIntent, signature: str, judgement: DepositJudgement
) -> bool:
    """Record one signature for ``intent`` and credit it; False when already recorded."""
    receipt_id = await session.scalar(
        insert(ChainReceipt)
        .values(
            id=uuid.uuid4(),
            signature=signature,
            deposit_id=intent.id,
            user_id=intent.user_id,
            mint=judgement.mint,
            recipient=judgement.recipient,
            amount_micro=judgement.received_micro,
            credited_micro=judgement.credit_micro,
            outcome=judgement.outcome,
            reason=judgement.reason,
            needs_review=judgement.needs_review,
        )
        .on_conflict_do_nothing(index_elements=["signature"])
        .returning(ChainReceipt.id)
    )
    if receipt_id is None:
        return False
    if judgement.credit_micro > 0:
        movement = await ledger.credit_deposit(
            session,
            user_id=intent.user_id,
            amount_micro=judgement.credit_micro,
            signature=signature,
            idempotency_key=f"deposit:{signature}",
        )
        await session.execute(
            update(ChainReceipt)
            .where(ChainReceipt.id == receipt_id)
            .values(ledger_transaction_id=movement.transaction_id)
        )
        await session.execute(
            update(DepositIntent)
            .where(DepositIntent.id == intent.id)
            .values(
                status="paid",
                credited_micro=DepositIntent.credited_micro + judgement.credit_micro,
            )
        )
    else:
        await audit(
            session,
            action="money.deposit_rejected",
            actor_user_id=None,
            actor_kind="system",
            subject_type="deposit",
            subject_id=intent.id,
            details={
                "signature": signature,
                "outcome": judgement.outcome,
                "reason": judgement.reason,
            },
        )
    return True


async def get_deposit(
    session: AsyncSession, user_id: uuid.UUID, deposit_id: uuid.UUID
) -> DepositIntent | None:
    return await session.scalar(
        select(DepositIntent).where(
            DepositIntent.id == deposit_id, DepositIntent.user_id == user_id
        )
    )


async def list_receipts(
    session: AsyncSession, user_id: uuid.UUID, *, review_only: bool = False
) -> list[ChainReceipt]:
    query = select(ChainReceipt).where(ChainReceipt.user_id == user_id)
    if review_only:
        query = query.where(ChainReceipt.needs_review.is_(True))
    return list((await session.scalars(query.order_by(ChainReceipt.created_at.desc()))).all())
