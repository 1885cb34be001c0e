"""Deposits and payouts end to end on the real Solana runtime (LiteSVM, SPL Token).

The customer's wallet signs and pays a Solana Pay request; the scan task credits it once;
a provider withdraws and the USDC arrives in their wallet, read back from the SVM.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from sqlalchemy import func, select, text

from tesai.billing import service as ledger
from tesai.billing.ledger import balance_of
from tesai.chain.factory import install_chain_client, remove_chain_client
from tesai.chain.litesvm import LiteSVMChainClient, transfer_checked_ix
from tesai.payments import deposits, payouts
from tesai.payments.models import ChainReceipt, Payout
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.billing.conftest import NewUser


@dataclass
class Chain:
    client: LiteSVMChainClient
    authority: Keypair
    usdc: Pubkey
    treasury: Keypair
    treasury_ata: Pubkey
    hot: Keypair
    hot_ata: Pubkey
    url: str

    def wallet(self, usdc: int = 0) -> tuple[Keypair, Pubkey]:
        owner = Keypair()
        self.client.fund(owner.pubkey())
        ata = self.client.create_token_account(self.authority, owner.pubkey(), self.usdc)
        if usdc:
            self.client.mint_to(self.authority, self.usdc, ata, usdc)
        return owner, ata

    def pay(self, payer: Keypair, source: Pubkey, dest: str, mint: Pubkey, amount: int, ref: str) -> str:
        ix = transfer_checked_ix(
            source=source,
            mint=mint,
            destination=Pubkey.from_string(dest),
            owner=payer.pubkey(),
            amount=amount,
            decimals=6,
            references=[Pubkey.from_string(ref)],
        )
        tx = Transaction([payer], Message([ix], payer.pubkey()), self.client.svm.latest_blockhash())
        result = self.client.submit(tx)
        assert result.error is None, result.error
        return result.signature


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    client = LiteSVMChainClient()
    authority = Keypair()
    client.fund(authority.pubkey())
    usdc = client.create_mint(authority)
    treasury, hot = Keypair(), Keypair()
    treasury_ata = client.create_token_account(authority, treasury.pubkey(), usdc)
    client.fund(hot.pubkey())
    hot_ata = client.create_token_account(authority, hot.pubkey(), usdc)
    client.mint_to(authority, usdc, hot_ata, 1_000_000_000)
    url = f"litesvm://{secrets.token_hex(4)}"
    install_chain_client(url, client)
    (tmp_path / "hot.json").write_text(json.dumps(list(bytes(hot))))
    yield Chain(client, authority, usdc, treasury, treasury_ata, hot, hot_ata, url)
    remove_chain_client(url)


@pytest.fixture
def money_settings(settings: Settings, chain: Chain, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "solana_rpc_url": chain.url,
            "usdc_mint": str(chain.usdc),
            "treasury_owner": str(chain.treasury.pubkey()),
            "treasury_token_account": str(chain.treasury_ata),
            "hot_wallet_key_file": tmp_path / "hot.json",
            "min_payout_micro": 1_000_000,
        }
    )


async def _deposit(runtime: Runtime, s: Settings, user: uuid.UUID, amount: int) -> deposits.DepositRequest:
    async with runtime.sessionmaker() as session, session.begin():
        return await deposits.create_deposit(session, s, user_id=user, amount_micro=amount)


async def test_deposit_is_credited_exactly_once(
    runtime: Runtime, money_settings: Settings, chain: Chain, new_user: NewUser
) -> None:
    customer = await new_user()
    request = await _deposit(runtime, money_settings, customer, 25_000_000)
    assert request.url.startswith(f"solana:{chain.treasury_ata}?amount=25&spl-token={chain.usdc}")
    payer, payer_ata = chain.wallet(usdc=100_000_000)
    sig = chain.pay(payer, payer_ata, request.intent.recipient, chain.usdc, 25_000_000, request.intent.reference)

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
    chain.pay(payer, payer_ata, under.intent.recipient, chain.usdc, 7_000_000, under.intent.reference)
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
        n = await s.scalar(text("SELECT count(*) FROM audit_events WHERE action = 'money.deposit_rejected'"))
        assert n == 1


async def test_provider_withdrawal_arrives_in_wallet(
    runtime: Runtime, money_settings: Settings, chain: Chain, new_user: NewUser
) -> None:
    customer, provider = await new_user(), await new_user(("provider",))
    owner, _ = chain.wallet()
    provider_ata = Pubkey.from_string(
        str(chain.client.svm and __import__("spl.token.instructions", fromlist=["x"]).get_associated_token_address(owner.pubkey(), chain.usdc))
    )
    async with runtime.sessionmaker() as s, s.begin():
        await ledger.admin_grant_credit(
            s, admin_user_id=None, user_id=customer, amount_micro=20_000_000, reason="t", idempotency_key="g"
        )
        await ledger.place_hold(s, user_id=customer, amount_micro=20_000_000, ref="c1", idempotency_key="h")
        await ledger.settle_usage(
            s, user_id=customer, ref="c1", provider_user_id=provider,
            provider_amount_micro=15_000_000, fee_bps=1000, idempotency_key="s",
        )
    nonce, message = await payouts.wallet_challenge(runtime.cache, provider, str(owner.pubkey()))
    signature = str(owner.sign_message(message.encode()))
    async with runtime.sessionmaker() as s, s.begin():
        await payouts.register_wallet(
            s, runtime.cache, money_settings, user_id=provider, address=str(owner.pubkey()),
            nonce=nonce, signature=signature,
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
        assert row is not None and row.status == "paid" and row.signature
        assert await balance_of(s, ledger.earnings(provider)) == 3_000_000
        assert await balance_of(s, ledger.pending_payout(provider)) == 0
        assert await s.scalar(select(func.count()).select_from(Payout)) == 1
