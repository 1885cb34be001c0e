"""Provider payouts: a proved wallet, a ledger reservation, an SPL transfer, paid or reversed.

Lifecycle of a ``Payout``::

    pending ──claim (lease)──▶ sending ──sign; store signature, blockhash, last valid height──▶ send
       ▲                         │                                                              │
       └─ lease ran out, ────────┤ lease ran out,          reversed ◀── refused by the node ────┤
          nothing signed         │ signature stored                                             │
                                 ▼                                                              │
                               sent ◀──────────────────── accepted, or no answer (unknown) ─────┘
                                 ├─ signature confirmed ─────────────────────────────▶ paid
                                 ├─ signature failed (confirmed) ────────────────────▶ reversed
                                 ├─ no status, chain past the last valid block height ▶ reversed
                                 └─ otherwise: stays sent, looked at again next run

Why it can never pay twice:

- A transfer is signed locally and its signature, blockhash and last valid block height
  are committed before it is sent. From then on the payout's fate is read from the chain:
  the same signature lands at most once, and no other transfer is made for the payout.
- Only a definite refusal (the RPC node answered that it did not forward the transaction)
  reverses at once. A timeout, a lost connection or a crash leaves the payout ``sent``
  with its signature; it becomes ``paid`` when the signature is confirmed and is reversed
  only when the chain is past the blockhash's last valid block height and the signature has
  no status (block height read first, then the status: ``payout_verdict``), i.e. when it
  can never land.
- A payout goes back to ``pending`` (to be signed again) only when its lease ran out before
  a signature was stored, so nothing was sent. Storing the signature is guarded by the
  lease, and the sender sends only after that commit.

Every network call happens outside any DB transaction; every write after one is guarded
(``id + lock_token`` for the sender, ``status = 'sent'`` and the signature for the
confirmer), so a stale process's late answer is dropped. Killed at any point,
``process_payouts`` picks up where it stopped.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import structlog
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from spl.token.instructions import get_associated_token_address
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tesai.audit.service import record as audit
from tesai.billing import service as ledger
from tesai.billing.errors import (
    BelowMinimumPayout,
    PayoutWalletMissing,
    WalletProofInvalid,
)
from tesai.chain.base import ChainClient, SendResult, SignedTransfer
from tesai.kit.cache import Cache
from tesai.kit.time import utcnow
from tesai.observability.business import PAYOUT_FAILURES
from tesai.payments.models import Payout, PayoutWallet
from tesai.payments.rules import payout_verdict, payout_wallet_message
from tesai.settings import Settings

log = structlog.get_logger(__name__)

NONCE_TTL_S = 300


def _nonce_key(user_id: uuid.UUID, nonce: str) -> str:
    return f"payout-wallet-nonce:{user_id}:{nonce}"


async def wallet_challenge(cache: Cache, user_id: uuid.UUID, address: str) -> tuple[str, str]:
    """A single-use nonce and the message the wallet must sign to prove ownership."""
    try:
        Pubkey.from_string(address)
    except ValueError as exc:
        raise WalletProofInvalid("Not a Solana address") from exc
    nonce = secrets.token_urlsafe(16)
    await cache.set(_nonce_key(user_id, nonce), address, ttl_s=NONCE_TTL_S)
    return nonce, payout_wallet_message(str(user_id), address, nonce)


async def register_wallet(
    session: AsyncSession,
    cache: Cache,
    settings: Settings,
    *,
    user_id: uuid.UUID,
    address: str,
    nonce: str,
    signature: str,
) -> PayoutWallet:
    """Check the signed challenge and make ``address`` the provider's payout wallet.

    Raises ``WalletProofInvalid`` for an unknown, used or expired nonce or a bad signature.
    """
    issued_for = await cache.pop(_nonce_key(user_id, nonce))
    if issued_for is None or issued_for.decode() != address:
        raise WalletProofInvalid("Unknown, used or expired nonce; ask for a new challenge")
    try:
        pubkey = Pubkey.from_string(address)
        sig = Signature.from_string(signature)
    except ValueError as exc:
        raise WalletProofInvalid("Malformed address or signature") from exc
    message = payout_wallet_message(str(user_id), address, nonce).encode()
    if not sig.verify(pubkey, message):
        raise WalletProofInvalid("The signature does not match the wallet")
    token_account = str(
        get_associated_token_address(pubkey, Pubkey.from_string(settings.usdc_mint))
    )
    wallet = await session.get(PayoutWallet, user_id)
    if wallet is None:
        wallet = PayoutWallet(user_id=user_id, address=address, token_account=token_account)
        session.add(wallet)
    else:
        wallet.address, wallet.token_account = address, token_account
    await session.flush()
    await audit(
        session,
        action="money.payout_wallet_set",
        actor_user_id=user_id,
        subject_type="user",
        subject_id=user_id,
        details={"address": address},
    )
    return wallet


def payout_id_for(user_id: uuid.UUID, idempotency_key: str) -> uuid.UUID:
    """The same request (user, key) always names the same payout."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"tesai:payout:{user_id}:{idempotency_key}")


async def request_payout(
    session: AsyncSession,
    settings: Settings,
    *,
    user_id: uuid.UUID,
    amount_micro: int,
    idempotency_key: str,
) -> Payout:
    """Reserve earnings for a payout to the registered wallet; the task sends it.

    The same (user, key) always answers with the same payout, also when two such requests
    run at once. Raises ``BelowMinimumPayout``, ``PayoutWalletMissing``,
    ``InsufficientFunds`` or ``IdempotencyKeyReused`` (the key was used for another amount).
    """
    if amount_micro < settings.min_payout_micro:
        raise BelowMinimumPayout(
            f"The minimum payout is {settings.min_payout_micro} micro-USDC",
            min_payout_micro=settings.min_payout_micro,
        )
    wallet = await session.get(PayoutWallet, user_id)
    if wallet is None:
        raise PayoutWalletMissing("Register a payout wallet first")
    payout_id = payout_id_for(user_id, idempotency_key)
    # The reservation comes first: it locks the provider's accounts, so a twin request with
    # the same key waits here until the first commits, then replays its movement (or gets
    # 409 for another amount) and finds its payout row below instead of inserting a second.
    await ledger.request_payout(
        session,
        provider_user_id=user_id,
        amount_micro=amount_micro,
        payout_id=payout_id,
        idempotency_key=f"payout_request:{payout_id}",
    )
    await session.execute(
        insert(Payout)
        .values(
            id=payout_id,
            user_id=user_id,
            amount_micro=amount_micro,
            destination=wallet.token_account,
            status="pending",
            reason="",
            attempts=0,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    payout = await session.get(Payout, payout_id, populate_existing=True)
    assert payout is not None
    return payout


def load_hot_wallet(settings: Settings) -> Keypair:
    """The payout hot wallet from its secret file (a JSON array of 64 bytes)."""
    path = settings.hot_wallet_key_file
    if path is None:
        raise RuntimeError("hot_wallet_key_file is not set; payouts cannot be sent")
    raw = json.loads(Path(path).read_text())
    return Keypair.from_bytes(bytes(raw))


def hot_wallet_source(settings: Settings, wallet: Keypair) -> str:
    if settings.hot_wallet_token_account:
        return settings.hot_wallet_token_account
    return str(
        get_associated_token_address(wallet.pubkey(), Pubkey.from_string(settings.usdc_mint))
    )


@dataclass
class PayoutReport:
    sent: int = 0
    """Transfers sent (accepted, or outcome unknown) this run."""
    unknown: int = 0
    """Of those, sends without a definite answer: their fate is read from the chain."""
    paid: int = 0
    reversed: int = 0
    review: int = 0
    requeued: int = 0
    """Payouts whose sender stopped before signing, back in ``pending``."""


async def _reverse(session: AsyncSession, payout: Payout, reason: str) -> None:
    await ledger.reverse_payout(
        session,
        provider_user_id=payout.user_id,
        amount_micro=payout.amount_micro,
        payout_id=payout.id,
        reason=reason,
        idempotency_key=f"payout_reverse:{payout.id}",
    )
    payout.status, payout.reason = "reversed", reason[:300]
    payout.lock_token = payout.lock_expires_at = None
    PAYOUT_FAILURES.inc()
    await session.flush()


async def _complete(session: AsyncSession, payout: Payout, signature: str) -> None:
    await ledger.complete_payout(
        session,
        provider_user_id=payout.user_id,
        amount_micro=payout.amount_micro,
        payout_id=payout.id,
        signature=signature,
        idempotency_key=f"payout_complete:{payout.id}",
    )
    payout.status = "paid"
    await session.flush()


async def _claim(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    token: str,
    limit: int,
    report: PayoutReport,
) -> list[Payout]:
    """Recover payouts of senders that stopped, then lease up to ``limit`` pending ones."""
    now = utcnow()
    async with sessionmaker() as session, session.begin():
        # Stopped before a signature was stored: nothing can have been sent.
        requeued = await session.scalars(
            update(Payout)
            .where(
                Payout.status == "sending",
                Payout.lock_expires_at < now,
                Payout.signature.is_(None),
            )
            .values(status="pending", lock_token=None, lock_expires_at=None)
            .returning(Payout.id)
        )
        report.requeued = len(requeued.all())
        # Stopped after storing one: sent or not, the chain says; never signed again.
        await session.execute(
            update(Payout)
            .where(
                Payout.status == "sending",
                Payout.lock_expires_at < now,
                Payout.signature.is_not(None),
            )
            .values(
                status="sent",
                lock_token=None,
                lock_expires_at=None,
                reason="sender stopped after signing; outcome read from the chain",
            )
        )
        ids = list(
            (
                await session.scalars(
                    select(Payout.id)
                    .where(Payout.status == "pending")
                    .order_by(Payout.created_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
        )
        if not ids:
            return []
        await session.execute(
            update(Payout)
            .where(Payout.id.in_(ids))
            .values(
                status="sending",
                lock_token=token,
                lock_expires_at=now + timedelta(seconds=settings.payout_confirm_timeout_s),
                attempts=Payout.attempts + 1,
            )
        )
        return list((await session.scalars(select(Payout).where(Payout.id.in_(ids)))).all())


async def _release(
    sessionmaker: async_sessionmaker[AsyncSession], ids: list[uuid.UUID], token: str
) -> None:
    """Give claimed payouts that were never signed back to ``pending``."""
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(Payout)
            .where(
                Payout.id.in_(ids),
                Payout.lock_token == token,
                Payout.status == "sending",
                Payout.signature.is_(None),
            )
            .values(status="pending", lock_token=None, lock_expires_at=None)
        )


async def _store_signed(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    payout_id: uuid.UUID,
    token: str,
    signed: SignedTransfer,
) -> bool:
    """Commit what identifies the transfer; False when the lease is lost (then never send).

    The lease starts again here: it now covers one send, not the batch's queue.
    """
    lease = timedelta(seconds=settings.payout_confirm_timeout_s)
    async with sessionmaker() as session, session.begin():
        stored = await session.scalar(
            update(Payout)
            .where(
                Payout.id == payout_id,
                Payout.lock_token == token,
                Payout.status == "sending",
                Payout.signature.is_(None),
            )
            .values(
                signature=signed.signature,
                blockhash=signed.blockhash,
                last_valid_block_height=signed.last_valid_block_height,
                lock_expires_at=utcnow() + lease,
            )
            .returning(Payout.id)
        )
    return stored is not None


async def _apply_send(
    sessionmaker: async_sessionmaker[AsyncSession],
    payout_id: uuid.UUID,
    token: str,
    result: SendResult,
    report: PayoutReport,
) -> None:
    async with sessionmaker() as session, session.begin():
        row = await session.scalar(
            select(Payout)
            .where(Payout.id == payout_id, Payout.lock_token == token, Payout.status == "sending")
            .with_for_update()
        )
        if row is None:
            return  # the lease ran out meanwhile: the payout is ``sent``, the chain decides
        if result.error is not None:
            await _reverse(session, row, f"transfer rejected: {result.error}")
            report.reversed += 1
            return
        row.status, row.lock_token, row.lock_expires_at = "sent", None, None
        report.sent += 1
        if result.uncertain is not None:
            row.reason = f"send outcome unknown ({result.uncertain}); read from the chain"[:300]
            report.unknown += 1
            log.warning(
                "payout_outcome_unknown",
                payout_id=str(payout_id),
                signature=result.signature,
                why=result.uncertain,
            )


async def _send_one(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    chain: ChainClient,
    wallet: Keypair,
    payout: Payout,
    token: str,
    report: PayoutReport,
) -> None:
    """Sign, store, send, apply: each step's result is committed before the next starts."""
    try:
        signed = await chain.prepare_transfer(
            owner=wallet,
            source=hot_wallet_source(settings, wallet),
            destination=payout.destination,
            mint=settings.usdc_mint,
            amount=payout.amount_micro,
            decimals=settings.usdc_decimals,
        )
    except Exception as exc:  # no blockhash: nothing signed, try again next run
        log.warning("payout_not_signed", payout_id=str(payout.id), error=str(exc)[:300])
        await _release(sessionmaker, [payout.id], token)
        return
    if not await _store_signed(sessionmaker, settings, payout.id, token, signed):
        return
    result = await chain.send(signed)
    await _apply_send(sessionmaker, payout.id, token, result, report)


async def process_payouts(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    chain: ChainClient,
    *,
    limit: int = 20,
) -> PayoutReport:
    """Send pending payouts and settle sent ones; safe to run concurrently, twice, and after
    a crash at any point (see the module docstring)."""
    report = PayoutReport()
    token = secrets.token_hex(16)
    claimed = await _claim(sessionmaker, settings, token, limit, report)
    if claimed:
        try:
            wallet = load_hot_wallet(settings)
        except Exception:
            await _release(sessionmaker, [p.id for p in claimed], token)
            raise
        for payout in claimed:
            await _send_one(sessionmaker, settings, chain, wallet, payout, token, report)
    report_confirm = await confirm_payouts(sessionmaker, settings, chain)
    report.paid += report_confirm.paid
    report.reversed += report_confirm.reversed
    report.review += report_confirm.review
    return report


async def confirm_payouts(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    chain: ChainClient,
    *,
    limit: int = 200,
) -> PayoutReport:
    """Settle sent payouts by what the chain says: paid when confirmed, reversed when failed
    or when it can no longer land (``payout_verdict``); the others wait."""
    report = PayoutReport()
    async with sessionmaker() as session:
        sent = list(
            (
                await session.scalars(
                    select(Payout)
                    .where(Payout.status == "sent")
                    .order_by(Payout.updated_at)
                    .limit(limit)
                )
            ).all()
        )
    if not sent:
        return report
    try:
        height = await chain.block_height()  # before any status: see payout_verdict
    except Exception as exc:
        log.warning("payout_confirm_unavailable", error=str(exc)[:300])
        return report
    for payout in sent:
        assert payout.signature is not None
        try:
            level, error = await chain.confirmation(payout.signature)
        except Exception as exc:
            log.warning("payout_status_unavailable", payout_id=str(payout.id), error=str(exc))
            continue
        verdict = payout_verdict(
            level=level,
            error=error,
            block_height=height,
            last_valid_block_height=payout.last_valid_block_height,
        )
        legacy_stuck = (
            verdict == "wait"
            and payout.last_valid_block_height is None
            and (utcnow() - payout.updated_at).total_seconds() > settings.payout_confirm_timeout_s
        )
        if verdict == "wait" and not legacy_stuck:
            continue
        async with sessionmaker() as session, session.begin():
            row = await session.scalar(
                select(Payout)
                .where(
                    Payout.id == payout.id,
                    Payout.status == "sent",
                    Payout.signature == payout.signature,
                )
                .with_for_update()
            )
            if row is None:
                continue
            if verdict == "paid":
                await _complete(session, row, payout.signature)
                report.paid += 1
            elif verdict == "failed":
                await _reverse(session, row, f"transfer failed on chain: {error}")
                report.reversed += 1
            elif verdict == "expired":
                await _reverse(
                    session,
                    row,
                    f"transfer never landed: its blockhash expired after block height "
                    f"{payout.last_valid_block_height} (now {height})",
                )
                report.reversed += 1
            else:  # sent without a blockhash (older version): no proof it cannot land
                row.status = "needs_review"
                row.reason = "no status and no blockhash to prove expiry; check the chain"
                report.review += 1
    return report


async def list_payouts(session: AsyncSession, user_id: uuid.UUID) -> list[Payout]:
    return list(
        (
            await session.scalars(
                select(Payout).where(Payout.user_id == user_id).order_by(Payout.created_at.desc())
            )
        ).all()
    )
