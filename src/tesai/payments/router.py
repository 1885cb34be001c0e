"""Deposits and payouts over HTTP.

- ``POST /customer/deposits``                 Solana Pay request (``Idempotency-Key``)
- ``GET  /customer/deposits/{id}``            its status and the transfers seen for it
- ``POST /provider/payout-wallet/challenge``  a message to sign with the payout wallet
- ``PUT  /provider/payout-wallet``            the signed proof; sets the wallet
- ``GET  /provider/payouts``                  withdrawals
- ``POST /provider/payouts``                  withdraw earnings (``Idempotency-Key``)
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from tesai.auth.deps import CustomerUser, ProviderUser, RuntimeDep
from tesai.billing.idempotency import IdempotencyKeyHeader, run_once
from tesai.db import SessionDep
from tesai.errors import NotFound
from tesai.payments import deposits, payouts
from tesai.payments.models import DepositIntent, Payout
from tesai.payments.schemas import (
    DepositDetail,
    DepositIn,
    DepositOut,
    PayoutIn,
    PayoutOut,
    ReceiptOut,
    WalletChallengeIn,
    WalletChallengeOut,
    WalletOut,
    WalletProofIn,
)
from tesai.settings import Settings
from tesai.tasks import enqueue_after_commit

router = APIRouter(tags=["payments"])


def _deposit_out(intent: DepositIntent, settings: Settings) -> DepositOut:
    url = deposits.payment_url(intent, settings)
    return DepositOut(
        id=intent.id,
        status=intent.status,
        reference=intent.reference,
        recipient=intent.recipient,
        mint=intent.mint,
        amount_micro=intent.amount_micro,
        credited_micro=intent.credited_micro,
        expires_at=intent.expires_at,
        url=url,
        qr=url,
    )


@router.post("/customer/deposits", status_code=201)
async def create_deposit(
    body: DepositIn,
    user: CustomerUser,
    session: SessionDep,
    runtime: RuntimeDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> DepositOut:
    """A Solana Pay transfer request; the balance is credited once the transfer is final."""

    async def run() -> DepositOut:
        request = await deposits.create_deposit(
            session, runtime.settings, user_id=user.id, amount_micro=body.amount_micro
        )
        return _deposit_out(request.intent, runtime.settings)

    _, answer = await run_once(
        session,
        user_id=user.id,
        route="POST /customer/deposits",
        key=idempotency_key,
        params=body.model_dump(),
        run=run,
        status_code=201,
    )
    return DepositOut.model_validate(answer)


@router.get("/customer/deposits/{deposit_id}")
async def get_deposit(
    deposit_id: uuid.UUID, user: CustomerUser, session: SessionDep, runtime: RuntimeDep
) -> DepositDetail:
    """A deposit request and every transfer seen for its reference."""
    intent = await deposits.get_deposit(session, user.id, deposit_id)
    if intent is None:
        raise NotFound("No such deposit")
    receipts = [
        ReceiptOut.model_validate(r, from_attributes=True)
        for r in await deposits.list_receipts(session, user.id)
        if r.deposit_id == intent.id
    ]
    out = _deposit_out(intent, runtime.settings)
    return DepositDetail(**out.model_dump(), receipts=receipts)


@router.post("/provider/payout-wallet/challenge")
async def payout_wallet_challenge(
    body: WalletChallengeIn, user: ProviderUser, runtime: RuntimeDep
) -> WalletChallengeOut:
    """A single-use message to sign with the wallet earnings should be paid to."""
    nonce, message = await payouts.wallet_challenge(runtime.cache, user.id, body.address)
    return WalletChallengeOut(nonce=nonce, message=message)


@router.put("/provider/payout-wallet")
async def set_payout_wallet(
    body: WalletProofIn, user: ProviderUser, session: SessionDep, runtime: RuntimeDep
) -> WalletOut:
    """Prove the wallet with its signature over the challenge; it receives payouts."""
    wallet = await payouts.register_wallet(
        session,
        runtime.cache,
        runtime.settings,
        user_id=user.id,
        address=body.address,
        nonce=body.nonce,
        signature=body.signature,
    )
    return WalletOut(address=wallet.address, token_account=wallet.token_account)


@router.get("/provider/payouts")
async def list_payouts(user: ProviderUser, session: SessionDep) -> list[PayoutOut]:
    """The provider's withdrawals, newest first."""
    return [
        PayoutOut.model_validate(p, from_attributes=True)
        for p in await payouts.list_payouts(session, user.id)
    ]


@router.post("/provider/payouts", status_code=201)
async def request_payout(
    body: PayoutIn,
    user: ProviderUser,
    session: SessionDep,
    runtime: RuntimeDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> PayoutOut:
    """Withdraw earnings to the payout wallet; sent and confirmed by a background task."""

    async def run() -> PayoutOut:
        payout: Payout = await payouts.request_payout(
            session,
            runtime.settings,
            user_id=user.id,
            amount_micro=body.amount_micro,
            idempotency_key=str(idempotency_key),
        )
        enqueue_after_commit(session, runtime.tasks, "payments.process_payouts")
        await session.refresh(payout)
        return PayoutOut.model_validate(payout, from_attributes=True)

    _, answer = await run_once(
        session,
        user_id=user.id,
        route="POST /provider/payouts",
        key=idempotency_key,
        params=body.model_dump(),
        run=run,
        status_code=201,
    )
    return PayoutOut.model_validate(answer)
