"""The LiteSVM chain client on the real Solana runtime: errors read right, resends, expiry."""

from __future__ import annotations

import asyncio

import pytest
from solders.keypair import Keypair
from solders.message import Message
from solders.transaction import Transaction

from tesai.chain.base import SendPhase, SignedTransfer
from tesai.chain.litesvm import LiteSVMChainClient, transfer_checked_ix


class Setup:
    def __init__(self) -> None:
        self.client = LiteSVMChainClient()
        self.authority = Keypair()
        self.client.fund(self.authority.pubkey())
        self.mint = self.client.create_mint(self.authority)
        self.payer = Keypair()
        self.client.fund(self.payer.pubkey())
        self.source = self.client.create_token_account(
            self.authority, self.payer.pubkey(), self.mint
        )
        self.client.mint_to(self.authority, self.mint, self.source, 50_000_000)
        self.dest = self.client.create_token_account(self.authority, Keypair().pubkey(), self.mint)

    def transfer(self, amount: int) -> Transaction:
        ix = transfer_checked_ix(
            source=self.source,
            mint=self.mint,
            destination=self.dest,
            owner=self.payer.pubkey(),
            amount=amount,
            decimals=6,
        )
        return Transaction(
            [self.payer], Message([ix], self.payer.pubkey()), self.client.svm.latest_blockhash()
        )

    async def prepare(self, amount: int) -> SignedTransfer:
        return await self.client.prepare_transfer(
            owner=self.payer,
            source=str(self.source),
            destination=str(self.dest),
            mint=str(self.mint),
            amount=amount,
            decimals=6,
        )


@pytest.fixture
def s() -> Setup:
    return Setup()


async def test_resent_transfer_that_landed_is_not_a_failure(s: Setup) -> None:
    tx = s.transfer(10_000_000)
    first = s.client.submit(tx)
    again = s.client.submit(tx)  # a wallet or a retry sends the same signed bytes twice
    assert first.error is None
    assert again.error is None
    assert again.signature == first.signature
    found = await s.client.get_transaction(first.signature)
    assert found is not None
    assert found.succeeded
    assert [t.amount for t in found.transfers] == [10_000_000]
    assert await s.client.confirmation(first.signature) == ("finalized", None)
    assert await s.client.token_balance(str(s.dest)) == 10_000_000


async def test_failed_transfer_reads_the_runtime_error(s: Setup) -> None:
    result = s.client.submit(s.transfer(60_000_000))  # more than the 50 USDC held
    assert result.error is not None
    assert "built-in method" not in result.error
    assert result.error.startswith("InstructionError")
    assert "Custom(1)" in result.error  # SPL Token: insufficient funds
    # It landed (the fee was paid) and failed: its status says so.
    assert await s.client.confirmation(result.signature) == ("finalized", result.error)


async def test_blockhash_past_its_last_valid_height_can_never_land(s: Setup) -> None:
    signed = await s.prepare(1_000_000)
    assert await s.client.block_height() <= signed.last_valid_block_height
    s.client.expire_blockhash()
    assert await s.client.block_height() > signed.last_valid_block_height
    result = await s.client.send(signed)
    assert result.error == "BlockhashNotFound"
    assert await s.client.confirmation(signed.signature) == (None, None)
    assert await s.client.get_transaction(signed.signature) is None
    assert await s.client.token_balance(str(s.dest)) == 0


async def test_prepared_transfer_is_signed_before_anything_moves(s: Setup) -> None:
    signed = await s.prepare(2_000_000)
    assert str(Transaction.from_bytes(signed.wire).signatures[0]) == signed.signature
    assert await s.client.confirmation(signed.signature) == (None, None)
    assert await s.client.token_balance(str(s.dest)) == 0
    result = await s.client.send(signed)
    assert (result.signature, result.error, result.uncertain) == (signed.signature, None, None)
    assert await s.client.token_balance(str(s.dest)) == 2_000_000


async def test_send_answered_after_the_timeout_is_unknown_not_rejected(s: Setup) -> None:
    async def slow_answer(phase: SendPhase, signature: str) -> None:
        if phase == "after":
            await asyncio.sleep(1)

    s.client.send_timeout_s, s.client.send_hook = 0.05, slow_answer
    signed = await s.prepare(3_000_000)
    result = await s.client.send(signed)
    assert result.error is None
    assert result.uncertain is not None
    assert "no answer within" in result.uncertain
    # It did land: only the answer was late.
    assert await s.client.confirmation(signed.signature) == ("finalized", None)
    assert await s.client.token_balance(str(s.dest)) == 3_000_000


async def test_send_that_never_went_out_in_time_is_unknown_too(s: Setup) -> None:
    async def slow_request(phase: SendPhase, signature: str) -> None:
        if phase == "before":
            await asyncio.sleep(1)

    s.client.send_timeout_s, s.client.send_hook = 0.05, slow_request
    signed = await s.prepare(3_000_000)
    result = await s.client.send(signed)
    assert (result.error, result.uncertain is not None) == (None, True)
    assert await s.client.confirmation(signed.signature) == (None, None)


def test_set_up_helpers_raise_with_the_runtime_reason(s: Setup) -> None:
    with pytest.raises(RuntimeError, match=r"transaction failed: AccountNotFound$"):
        s.client.mint_to(Keypair(), s.mint, s.dest, 1)  # a fee payer with no account
