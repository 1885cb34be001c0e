"""Deposits and payouts end to end on the real Solana runtime (LiteSVM, SPL Token).

The customer's wallet signs and pays a Solana Pay request; the scan task credits it once;
a provider withdraws and the USDC arrives in their wallet, read back from the SVM.
"""

from __future__ import annotations

import uuid

from spl.token.instructions import get_associated_token_address
from sqlalchemy import func, select, text

from tesai.billing import service as ledger
from tesai.billing.ledger import balance_of
from tesai.payments import deposits, payouts
from tesai.payments.models import ChainReceipt, Payout
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.billing.conftest import NewUser
from tests.payments.conftest import Chain


async def _deposit(
    runtime: Runtime, s: Settings, user: uuid.UUID, amount: int
) -> deposits.DepositRequest:
    async with runtime.sessionmaker() as session, session.begin():
        return await deposits.create_deposit(session, s, user_id=user, amount_micro=amount)


async def test_deposit_is_credited_exactly_once(
    runtime: Runtime, money_settings: Settings, chain: Chain, new_user: NewUser
) -> None:
    customer = await new_user()
    request = await _deposit(runtime, money_settings, customer, 25_000_000)
    assert request.url.startswith(f"solana:{chain.treasury_ata}?amount=25&spl-token={chain.usdc}")
    payer, payer_ata = chain.wallet(usdc=100_000_000)
    sig = chain.pay(
        payer, payer_ata, request.intent.recipient, chain.usdc, 25_000_000, request.intent.reference
    )

    for _ in range(2):  # the task runs twice (and would on two workers): one credit
        await deposits.scan_deposits(runtime.sessionmaker, money_settings, chain.client)
    async with runtime.sessionmaker() as s:
        assert await balance_of(s, ledger.available(customer)) == 25_000_000
        receipts = (await s.scalars(select(ChainReceipt))).all()
        assert [(r.signature, r.outcome, r.credited_micro) for r in receipts] == [
            (sig, "credited", 25_000_000)
        ]
    assert await chain.client.token_balance(str(chain.treasury_ata)) == 25_000_000


async def test_underpayment_credits_what_arrived_and_wrong_mint_is_flagged(
    runtime: Runtime, money_settings: Settings, chain: Chain, new_user: NewUser
) -> None:
    customer = await new_user()
    under = await _deposit(runtime, money_settings, customer, 10_000_000)
    wrong = await _deposit(runtime, money_settings, customer, 10_000_000)
    payer, payer_ata = chain.wallet(usdc=50_000_000)
    chain.pay(
        payer, payer_ata, under.intent.recipient, chain.usdc, 7_000_000, under.intent.reference
    )
    # A look-alike token: sent to the treasury owner's account for that mint.
    fake = chain.client.create_mint(chain.authority)
    fake_src = chain.client.create_token_account(chain.authority, payer.pubkey(), fake)
    fake_dst = chain.client.create_token_account(chain.authority, chain.treasury.pubkey(), fake)
    chain.client.mint_to(chain.authority, fake, fake_src, 10_000_000)
    chain.pay(payer, fake_src, str(fake_dst), fake, 10_000_000, wrong.intent.reference)

    report = await deposits.scan_deposits(runtime.sessionmaker, money_settings, chain.client)
    assert report.flagged == 2
    async with runtime.sessionmaker() as s:
        assert await balance_of(s, ledger.available(customer)) == 7_000_000
        outcomes = {
            r.deposit_id: (r.outcome, r.credited_micro, r.needs_review)
            for r in (await s.scalars(select(ChainReceipt))).all()
        }
        assert outcomes[under.intent.id] == ("credited_underpaid", 7_000_000, True)
        assert outcomes[wrong.intent.id] == ("rejected_mint", 0, True)
        n = await s.scalar(
            text("SELECT count(*) FROM audit_events WHERE action = 'money.deposit_rejected'")
        )
        assert n == 1


async def test_provider_withdrawal_arrives_in_wallet(
    runtime: Runtime, money_settings: Settings, chain: Chain, new_user: NewUser
) -> None:
    customer, provider = await new_user(), await new_user(("provider",))
    owner, _ = chain.wallet()
    provider_ata = get_associated_token_address(owner.pubkey(), chain.usdc)
    async with runtime.sessionmaker() as s, s.begin():
        await ledger.admin_grant_credit(
            s,
            admin_user_id=None,
            user_id=customer,
            amount_micro=20_000_000,
            reason="t",
            idempotency_key="g",
        )
        await ledger.place_hold(
            s, user_id=customer, amount_micro=20_000_000, ref="c1", idempotency_key="h"
        )
        await ledger.settle_usage(
            s,
            user_id=customer,
            ref="c1",
            provider_user_id=provider,
            provider_amount_micro=15_000_000,
            fee_bps=1000,
            idempotency_key="s",
        )
    nonce, message = await payouts.wallet_challenge(runtime.cache, provider, str(owner.pubkey()))
    signature = str(owner.sign_message(message.encode()))
    async with runtime.sessionmaker() as s, s.begin():
        await payouts.register_wallet(
            s,
            runtime.cache,
            money_settings,
            user_id=provider,
            address=str(owner.pubkey()),
            nonce=nonce,
            signature=signature,
        )
        payout = await payouts.request_payout(
            s, money_settings, user_id=provider, amount_micro=12_000_000, idempotency_key="w1"
        )
    report = await payouts.process_payouts(runtime.sessionmaker, money_settings, chain.client)
    assert (report.sent, report.paid) == (1, 1)
    await payouts.process_payouts(runtime.sessionmaker, money_settings, chain.client)
    assert await chain.client.token_balance(str(provider_ata)) == 12_000_000
    async with runtime.sessionmaker() as s:
        row = await s.get(Payout, payout.id)
        assert row is not None
        assert row.status == "paid"
        assert row.signature
        assert await balance_of(s, ledger.earnings(provider)) == 3_000_000
        assert await balance_of(s, ledger.pending_payout(provider)) == 0
        assert await s.scalar(select(func.count()).select_from(Payout)) == 1


async def test_failed_transfer_reverses_the_payout(
    runtime: Runtime, money_settings: Settings, chain: Chain, new_user: NewUser
) -> None:
    customer, provider = await new_user(), await new_user(("provider",))
    owner, _ = chain.wallet()
    big = 2_000_000_000  # more than the hot wallet holds (1,000 USDC)
    async with runtime.sessionmaker() as s, s.begin():
        await ledger.admin_grant_credit(
            s,
            admin_user_id=None,
            user_id=customer,
            amount_micro=big * 2,
            reason="t",
            idempotency_key="g",
        )
        await ledger.place_hold(
            s, user_id=customer, amount_micro=big * 2, ref="c", idempotency_key="h"
        )
        await ledger.settle_usage(
            s,
            user_id=customer,
            ref="c",
            provider_user_id=provider,
            provider_amount_micro=big,
            fee_bps=0,
            idempotency_key="s",
        )
    nonce, message = await payouts.wallet_challenge(runtime.cache, provider, str(owner.pubkey()))
    async with runtime.sessionmaker() as s, s.begin():
        await payouts.register_wallet(
            s,
            runtime.cache,
            money_settings,
            user_id=provider,
            address=str(owner.pubkey()),
            nonce=nonce,
            signature=str(owner.sign_message(message.encode())),
        )
        payout = await payouts.request_payout(
            s, money_settings, user_id=provider, amount_micro=big, idempotency_key="w"
        )
    report = await payouts.process_payouts(runtime.sessionmaker, money_settings, chain.client)
    assert report.reversed == 1
    async with runtime.sessionmaker() as s:
        row = await s.get(Payout, payout.id)
        assert row is not None
        assert row.status == "reversed"
        # The runtime's own reason (SPL Token: insufficient funds), not a method's repr.
        assert row.reason.startswith("transfer rejected: InstructionError")
        assert "Custom(1)" in row.reason
        assert await balance_of(s, ledger.earnings(provider)) == big
        assert await balance_of(s, ledger.pending_payout(provider)) == 0
