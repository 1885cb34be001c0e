"""Money arithmetic (pure): rounding never creates, loses or double-counts micro-USDC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tesai.billing.money import (
    accrue,
    customer_charge,
    fee_on,
    format_usdc,
    hold_for,
    seconds_by_minute,
    split_capped,
)
from tesai.chain.base import ChainTransaction, TokenTransfer
from tesai.payments.rules import judge_deposit, solana_pay_url

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@given(st.lists(st.integers(0, 5000), max_size=30), st.integers(0, 10**9))
def test_accrue_is_exact_however_seconds_are_split(parts: list[int], price: int) -> None:
    billed, total = 0, 0
    for seconds in parts:
        total += accrue(billed, seconds, price)
        billed += seconds
    assert total == billed * price // 3600


@given(st.integers(0, 10**12), st.integers(0, 10_000), st.integers(0, 10**13))
def test_split_capped_never_exceeds_the_hold(amount: int, bps: int, available: int) -> None:
    split = split_capped(amount, bps, available)
    assert split.total <= max(available, 0)
    assert 0 <= split.provider <= amount
    assert split.fee >= 0
    if customer_charge(amount, bps) <= available:
        assert split == split_capped(amount, bps, 10**15)
        assert split.fee == fee_on(amount, bps)
    else:
        assert split.total == available  # an exhausted hold is emptied exactly


def test_fee_and_hold_round_up() -> None:
    assert fee_on(1, 1000) == 1
    assert fee_on(10, 1000) == 1
    assert fee_on(11, 1000) == 2
    # 2 GPUs × $1.50/h × 90 min = $4.50, plus 10 % = $4.95
    assert hold_for(2, 1_500_000, 5400, 1000) == 4_950_000
    assert format_usdc(-1_234_567) == "-1.234567"


@given(st.integers(0, 600), st.integers(0, 600), st.integers(-100, 700))
def test_seconds_by_minute_never_counts_before_the_watermark(a: int, b: int, w: int) -> None:
    start, end = T0 + timedelta(seconds=min(a, b)), T0 + timedelta(seconds=max(a, b))
    watermark = T0 + timedelta(seconds=w)
    split = seconds_by_minute(start, end, watermark)
    expected = max(0, max(a, b) - max(min(a, b), w))
    assert sum(split.values()) == expected
    assert all(0 < s <= 60 for s in split.values())


def _tx(*transfers: TokenTransfer, ok: bool = True) -> ChainTransaction:
    return ChainTransaction("sig", ok, "finalized", list(transfers), None if ok else "boom")


def test_deposit_rule() -> None:
    usdc, treasury = "USDC", "TREASURY"

    def judge(tx: ChainTransaction) -> tuple[str, int, bool]:
        j = judge_deposit(tx, expected_micro=100, mint=usdc, recipient=treasury)
        return j.outcome, j.credit_micro, j.needs_review

    assert judge(_tx(TokenTransfer(usdc, "a", treasury, "o", 100))) == ("credited", 100, False)
    assert judge(_tx(TokenTransfer(usdc, "a", treasury, "o", 60))) == (
        "credited_underpaid",
        60,
        True,
    )
    assert judge(_tx(TokenTransfer(usdc, "a", treasury, "o", 160))) == (
        "credited_overpaid",
        160,
        True,
    )
    assert judge(_tx(TokenTransfer("FAKE", "a", "x", "o", 100))) == ("rejected_mint", 0, True)
    assert judge(_tx(TokenTransfer(usdc, "a", "elsewhere", "o", 100))) == (
        "rejected_recipient",
        0,
        True,
    )
    assert judge(_tx(ok=False)) == ("failed", 0, False)


def test_solana_pay_url() -> None:
    url = solana_pay_url(
        recipient="R", amount_micro=1_500_000, mint="M", reference="F", label="TES AI", message="hi"
    )
    assert url == "solana:R?amount=1.5&spl-token=M&reference=F&label=TES%20AI&message=hi"
