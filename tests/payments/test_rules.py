"""The pure payment rules: what a transfer may credit, what a sent payout's chain state means."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tesai.chain.base import ChainTransaction, TokenTransfer
from tesai.payments.rules import (
    MAX_CREDIT_MICRO,
    MAX_RECORDED,
    judge_deposit,
    payout_verdict,
)

USDC, TREASURY = "USDC", "TREASURY"
U64 = st.integers(0, 2**64 - 1)


def _judge(*transfers: TokenTransfer) -> tuple[str, int, int, bool]:
    tx = ChainTransaction("sig", True, "finalized", list(transfers))
    j = judge_deposit(tx, expected_micro=100, mint=USDC, recipient=TREASURY)
    return j.outcome, j.credit_micro, j.received_micro, j.needs_review


@given(st.lists(st.tuples(st.sampled_from([USDC, "FAKE"]), st.booleans(), U64), max_size=4))
def test_any_u64_transfers_give_a_storable_judgement(parts: list[tuple[str, bool, int]]) -> None:
    transfers = [
        TokenTransfer(mint, "src", TREASURY if to_treasury else "elsewhere", "o", amount)
        for mint, to_treasury, amount in parts
    ]
    _, credit, received, _ = _judge(*transfers)
    assert 0 <= received <= MAX_RECORDED
    assert 0 <= credit <= MAX_CREDIT_MICRO


def test_u64_max_of_a_self_made_token_is_a_flagged_wrong_mint() -> None:
    huge = TokenTransfer("FAKE", "src", "sink", "o", 2**64 - 1)
    assert _judge(huge) == ("rejected_mint", 0, MAX_RECORDED, True)


def test_more_usdc_than_one_deposit_may_credit_is_flagged_not_credited() -> None:
    too_much = TokenTransfer(USDC, "src", TREASURY, "o", MAX_CREDIT_MICRO + 1)
    assert _judge(too_much) == ("rejected_amount", 0, MAX_CREDIT_MICRO + 1, True)
    at_limit = TokenTransfer(USDC, "src", TREASURY, "o", MAX_CREDIT_MICRO)
    assert _judge(at_limit)[:2] == ("credited_overpaid", MAX_CREDIT_MICRO)


def verdict(level: str | None, error: str | None, height: int, last: int | None) -> str:
    return payout_verdict(
        level=level, error=error, block_height=height, last_valid_block_height=last
    )


def test_a_sent_payout_is_paid_only_when_confirmed() -> None:
    assert verdict("finalized", None, 500, 100) == "paid"
    assert verdict("confirmed", None, 50, 100) == "paid"
    assert verdict("processed", None, 500, 100) == "wait"  # may still be rolled back


def test_a_failed_transfer_is_failed_once_confirmed() -> None:
    assert verdict("confirmed", "InstructionError(0, Custom(1))", 50, 100) == "failed"
    assert verdict("processed", "InstructionError(0, Custom(1))", 50, 100) == "wait"


def test_no_status_expires_only_past_the_last_valid_block_height() -> None:
    assert verdict(None, None, 100, 100) == "wait"  # it can still land in this block
    assert verdict(None, None, 101, 100) == "expired"
    assert verdict(None, None, 10**9, None) == "wait"  # no blockhash stored: no proof
