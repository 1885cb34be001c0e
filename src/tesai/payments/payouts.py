"""Provider payouts: a proved wallet, a ledger reservation, an SPL transfer, paid or reversed.

Lifecycle of a ``Payout``::

    pending ──claim (lease)──▶ sending ──signature stored──▶ sent ──confirmed──▶ paid
       │                          │                            └──failed/expired──▶ reversed
       └──────────────────────────┴──send rejected──────────────────────────────▶ reversed

The transfer is sent outside any DB transaction. The signature is stored right after the
send, guarded by ``id + lock_token``; a payout found in ``sending`` after its lease ran out
(the sender died between sending and storing) is never sent again blindly: it goes to
``needs_review`` so the platform can never pay twice.
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
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tesai.audit.service import record as audit
from tesai.billing import service as ledger
from tesai.billing.errors import (
    BelowMinimumPayout,
    PayoutWalletMissing,
    WalletProofInvalid,
)
from tesai.chain.base import ChainClient, level_reached
from tesai.kit.cache import Cache
from tesai.kit.time import utcnow
from tesai.observability.business import PAYOUT_FAILURES
from tesai.payments.models import Payout, PayoutWallet
from tesai.payments.rules import payout_wallet_message
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

    Raises ``BelowMinimumPayout``, ``PayoutWalletMissing`` or ``InsufficientFunds``.
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
    existing = await session.get(Payout, payout_id)
    if existing is not None:
        # The ledger call below raises 409 when the amount differs from the first request.
        await ledger.request_payout(
            session,
            provider_user_id=user_id,
            amount_micro=amount_micro,
            payout_id=payout_id,
            idempotency_key=f"payout_request:{payout_id}",
        )
        return existing
    await ledger.request_payout(
        session,
        provider_user_id=user_id,
        amount_micro=amount_micro,
        payout_id=payout_id,
        idempotency_key=f"payout_request:{payout_id}",
    )
    payout = Payout(
        id=payout_id,
        user_id=user_id,
        amount_micro=amount_micro,
        destination=wallet.token_account,
        status="pending",
        reason="",
        attempts=0,
    )
    session.add(payout)
    await session.flush()
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
    paid: int = 0
    reversed: int = 0
    review: int = 0


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


async def process_payouts(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    chain: ChainClient,
    *,
    limit: int = 20,
) -> PayoutReport:
    """Send pending payouts and settle sent ones; safe to run concurrently and twice."""
    report = PayoutReport()
    now = utcnow()
    token = secrets.token_hex(16)
    lease = timedelta(seconds=settings.payout_confirm_timeout_s)
    async with sessionmaker() as session, session.begin():
        # A sender that died between sending and storing the signature: never resend.
        stale = await session.scalars(
            update(Payout)
            .where(Payout.status == "sending", Payout.lock_expires_at < now)
            .values(status="needs_review", reason="sender stopped after claiming; check chain")
            .returning(Payout.id)
        )
        report.review = len(stale.all())
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
        if ids:
            await session.execute(
                update(Payout)
                .where(Payout.id.in_(ids))
                .values(
                    status="sending",
                    lock_token=token,
                    lock_expires_at=now + lease,
                    attempts=Payout.attempts + 1,
                )
            )
        claimed = list((await session.scalars(select(Payout).where(Payout.id.in_(ids)))).all())
    wallet = load_hot_wallet(settings) if claimed else None
    for payout in claimed:
        assert wallet is not None
        result = await chain.send_transfer(
            owner=wallet,
            source=hot_wallet_source(settings, wallet),
            destination=payout.destination,
            mint=settings.usdc_mint,
            amount=payout.amount_micro,
            decimals=settings.usdc_decimals,
        )
        async with sessionmaker() as session, session.begin():
            row = await session.scalar(
                select(Payout)
                .where(Payout.id == payout.id, Payout.lock_token == token)
                .with_for_update()
            )
            if row is None or row.status != "sending":
                continue  # our lease was taken over; the other sender decides
            if result.error is not None:
                await _reverse(session, row, f"transfer rejected: {result.error}")
                report.reversed += 1
            else:
                row.signature, row.status = result.signature, "sent"
                report.sent += 1
    report_confirm = await confirm_payouts(sessionmaker, settings, chain)
    report.paid += report_confirm.paid
    report.reversed += report_confirm.reversed
    return report


async def confirm_payouts(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, chain: ChainClient
) -> PayoutReport:
    """Mark sent payouts paid when confirmed; reverse failed ones and ones gone too long."""
    report = PayoutReport()
    async with sessionmaker() as session:
        sent = list((await session.scalars(select(Payout).where(Payout.status == "sent"))).all())
    for payout in sent:
        assert payout.signature is not None
        level, error = await chain.confirmation(payout.signature)
        age = (utcnow() - payout.updated_at).total_seconds()
        if error is None and not level_reached(level, "confirmed"):
            if level is None and age > settings.payout_confirm_timeout_s:
                error = "transfer never landed (expired)"
            else:
                continue
        async with sessionmaker() as session, session.begin():
            row = await session.scalar(
                select(Payout)
                .where(Payout.id == payout.id, Payout.status == "sent")
                .with_for_update()
            )
            if row is None:
                continue
            if error is None:
                await _complete(session, row, payout.signature)
                report.paid += 1
            else:
                await _reverse(session, row, error)
                report.reversed += 1
    return report


async def list_payouts(session: AsyncSession, user_id: uuid.UUID) -> list[Payout]:
    return list(
        (
            await session.scalars(
                select(Payout).where(Payout.user_id == user_id).order_by(Payout.created_at.desc())
            )
        ).all()
    )
