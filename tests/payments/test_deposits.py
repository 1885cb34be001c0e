"""Deposit scans on the real Solana runtime: one transaction or intent never stops the others.

An attacker's transfer of 2⁶⁴−1 of a token they made, a resent transaction, a reference
whose transactions cannot be read, more intents than one page: every honest deposit is
still credited once, and what failed is written down with its reason.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from sqlalchemy import select, text

from tesai.billing import service as ledger
from tesai.billing.ledger import balance_of
from tesai.chain.base import ChainTransaction
from tesai.chain.litesvm import transfer_checked_ix
from tesai.payments import deposits, rules
from tesai.payments.models import ChainReceipt, DepositIntent
from tesai.payments.rules import DepositJudgement
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.billing.conftest import NewUser
from tests.payments.conftest import Chain

USDC = 1_000_000
U64_MAX = 2**64 - 1


async def intent(runtime: Runtime, s: Settings, user: uuid.UUID, amount: int) -> DepositIntent:
    async with runtime.sessionmaker() as session, session.begin():
        return (await deposits.create_deposit(session, s, user_id=user, amount_micro=amount)).intent


async def available(runtime: Runtime, user: uuid.UUID) -> int:
    async with runtime.sessionmaker() as s:
        return await balance_of(s, ledger.available(user))


async def receipts(runtime: Runtime) -> dict[uuid.UUID, tuple[str, int, int, bool]]:
    async with runtime.sessionmaker() as s:
        return {
            r.deposit_id: (r.outcome, r.amount_micro, r.credited_micro, r.needs_review)
            for r in (await s.scalars(select(ChainReceipt))).all()
        }


async def reload(runtime: Runtime, intent_id: uuid.UUID) -> DepositIntent:
    async with runtime.sessionmaker() as s:
        found = await s.get(DepositIntent, intent_id)
        assert found is not None
        return found


def failures_counted() -> float:
    return REGISTRY.get_sample_value("tesai_deposit_scan_failures_total") or 0.0


async def test_huge_self_made_token_transfer_does_not_stop_later_deposits(
    runtime: Runtime, money_settings: Settings, chain: Chain, new_user: NewUser
) -> None:
    attacker, honest = await new_user(), await new_user()
    bait = await intent(runtime, money_settings, attacker, 1 * USDC)
    real = await intent(runtime, money_settings, honest, 5 * USDC)
    # The attacker makes a token, mints u64::MAX of it and pays their own reference with it.
    payer, payer_usdc = chain.wallet(usdc=10 * USDC)
    token = chain.client.create_mint(chain.authority)
    source = chain.client.create_token_account(chain.authority, payer.pubkey(), token)
    sink = chain.client.create_token_account(chain.authority, chain.treasury.pubkey(), token)
    chain.client.mint_to(chain.authority, token, source, U64_MAX)
    chain.pay(payer, source, str(sink), token, U64_MAX, bait.reference)
    chain.pay(payer, payer_usdc, real.recipient, chain.usdc, 5 * USDC, real.reference)

    for _ in range(2):
        report = await deposits.scan_deposits(runtime.sessionmaker, money_settings, chain.client)
        assert report.failed == 0
    assert await available(runtime, honest) == 5 * USDC
    assert await available(runtime, attacker) == 0
    found = await receipts(runtime)
    assert found[real.id] == ("credited", 5 * USDC, 5 * USDC, False)
    assert found[bait.id] == ("rejected_mint", 2**63 - 1, 0, True)


async def test_resent_deposit_is_credited_not_failed(
    runtime: Runtime, money_settings: Settings, chain: Chain, new_user: NewUser
) -> None:
    customer = await new_user()
    request = await intent(runtime, money_settings, customer, 10 * USDC)
    payer, payer_usdc = chain.wallet(usdc=10 * USDC)
    ix = transfer_checked_ix(
        source=payer_usdc,
        mint=chain.usdc,
        destination=Pubkey.from_string(request.recipient),
        owner=payer.pubkey(),
        amount=10 * USDC,
        decimals=6,
        references=[Pubkey.from_string(request.reference)],
    )
    tx = Transaction([payer], Message([ix], payer.pubkey()), chain.client.svm.latest_blockhash())
    first = chain.client.submit(tx)
    again = chain.client.submit(tx)  # the wallet sends it again: AlreadyProcessed
    assert (first.error, again.error) == (None, None)

    await deposits.scan_deposits(runtime.sessionmaker, money_settings, chain.client)
    assert await chain.client.token_balance(str(chain.treasury_ata)) == 10 * USDC
    assert await available(runtime, customer) == 10 * USDC
    assert (await receipts(runtime))[request.id] == ("credited", 10 * USDC, 10 * USDC, False)


@pytest.mark.parametrize("broken", ["signatures", "transaction", "record"])
async def test_one_unreadable_intent_does_not_stop_the_others(
    runtime: Runtime,
    money_settings: Settings,
    chain: Chain,
    new_user: NewUser,
    monkeypatch: pytest.MonkeyPatch,
    broken: str,
) -> None:
    first, second = await new_user(), await new_user()
    bad = await intent(runtime, money_settings, first, 2 * USDC)
    good = await intent(runtime, money_settings, second, 3 * USDC)
    payer, payer_usdc = chain.wallet(usdc=10 * USDC)
    bad_sig = chain.pay(payer, payer_usdc, bad.recipient, chain.usdc, 2 * USDC, bad.reference)
    chain.pay(payer, payer_usdc, good.recipient, chain.usdc, 3 * USDC, good.reference)

    real_signatures = chain.client.signatures_for_address
    real_transaction = chain.client.get_transaction

    async def signatures_for_address(address: str, *, limit: int = 100) -> list[str]:
        if broken == "signatures" and address == bad.reference:
            raise ConnectionError("RPC node reset the connection")
        return await real_signatures(address, limit=limit)

    async def get_transaction(signature: str) -> ChainTransaction | None:
        if broken == "transaction" and signature == bad_sig:
            raise ValueError("unreadable transaction")
        return await real_transaction(signature)

    def judge_deposit(tx: ChainTransaction, **rule: Any) -> DepositJudgement:
        judged = rules.judge_deposit(tx, **rule)
        if broken == "record" and tx.signature == bad_sig:  # the database refuses the row
            return dataclasses.replace(judged, received_micro=U64_MAX)
        return judged

    monkeypatch.setattr(chain.client, "signatures_for_address", signatures_for_address)
    monkeypatch.setattr(chain.client, "get_transaction", get_transaction)
    monkeypatch.setattr(deposits, "judge_deposit", judge_deposit)
    counted = failures_counted()

    for credited in (1, 0):
        report = await deposits.scan_deposits(runtime.sessionmaker, money_settings, chain.client)
        assert (report.credited, report.failed) == (credited, 1)
    assert await available(runtime, second) == 3 * USDC
    stuck = await reload(runtime, bad.id)
    assert stuck.scan_failures == 2
    expected = {"signatures": "ConnectionError", "transaction": "ValueError", "record": "int64"}
    assert expected[broken] in stuck.scan_error
    assert failures_counted() == counted + 2
    async with runtime.sessionmaker() as s:
        alerts = await s.scalar(
            text("SELECT count(*) FROM audit_events WHERE action = 'money.deposit_scan_failed'")
        )
    assert alerts == 1  # once per reason, not once per scan

    monkeypatch.undo()  # the node recovers: the next scan credits it and clears the error
    await deposits.scan_deposits(runtime.sessionmaker, money_settings, chain.client)
    assert await available(runtime, first) == 2 * USDC
    healed = await reload(runtime, bad.id)
    assert (healed.scan_error, healed.scan_failures) == ("", 2)


async def test_every_watched_intent_is_scanned_however_many(
    runtime: Runtime, money_settings: Settings, chain: Chain, new_user: NewUser
) -> None:
    spammer, customer = await new_user(), await new_user()
    for _ in range(5):  # intents made only to fill the scan
        await intent(runtime, money_settings, spammer, 1 * USDC)
    late = await intent(runtime, money_settings, customer, 2 * USDC)
    payer, payer_usdc = chain.wallet(usdc=2 * USDC)
    chain.pay(payer, payer_usdc, late.recipient, chain.usdc, 2 * USDC, late.reference)

    report = await deposits.scan_deposits(
        runtime.sessionmaker, money_settings, chain.client, limit=2
    )
    assert report.intents == 6
    assert await available(runtime, customer) == 2 * USDC
