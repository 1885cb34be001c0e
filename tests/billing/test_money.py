"""Money arithmetic (pure): rounding never creates, loses or double-counts micro-USDC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tesai.billing.money import (
    MeterState,
    accrue,
    billable_end,
    customer_charge,
    fee_on,
    format_usdc,
    hold_for,
    seconds_by_minute,
    settle_hold,
    spend_limit,
    spend_state,
    split_capped,
    usage_until,
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


@given(
    st.lists(st.integers(0, 10**7), min_size=1, max_size=40),
    st.integers(0, 10_000),
    st.integers(0, 10**9),
)
def test_settling_a_hold_minute_by_minute_charges_the_fee_of_the_total(
    parts: list[int], bps: int, extra: int
) -> None:
    """Settled in any number of parts, a hold that covers the total pays exactly the total
    plus the fee of the total (the fee is rounded once over the hold, not per part)."""
    total = sum(parts)
    balance = customer_charge(total, bps) + extra
    paid = fees = 0
    for usage in parts:
        s = settle_hold(
            usage=usage, balance=balance, provider_before=paid, fee_before=fees, fee_bps=bps
        )
        assert s.shortfall == 0
        balance -= s.total
        paid, fees = paid + s.provider, fees + s.fee
    assert (paid, fees, balance) == (total, fee_on(total, bps), extra)


@given(
    st.integers(0, 10**10),
    st.integers(0, 10**10),
    st.integers(0, 10**10),
    st.integers(0, 10**9),
    st.integers(0, 10_000),
)
def test_a_short_hold_pays_the_most_it_can_and_is_emptied(
    usage: int, balance: int, before: int, extra_fee: int, bps: int
) -> None:
    fee_before = fee_on(before, bps) + extra_fee
    s = settle_hold(
        usage=usage, balance=balance, provider_before=before, fee_before=fee_before, fee_bps=bps
    )
    assert s.provider + s.shortfall == usage
    assert s.provider >= 0
    assert s.fee >= 0
    assert s.total <= balance
    # The fee is at least what the cumulative rule asks for what was paid.
    assert s.fee >= max(0, fee_on(before + s.provider, bps) - fee_before)
    if s.shortfall:
        assert s.total == balance  # emptied exactly
        more = s.provider + 1  # and one more micro-USDC to the provider would not fit
        assert more + max(0, fee_on(before + more, bps) - fee_before) > balance


@given(
    st.lists(
        st.tuples(st.integers(0, 5000), st.integers(-30, 30), st.integers(0, 10**8), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 10**8),
    st.integers(0, 10_000),
)
def test_billable_end_is_the_last_second_the_limit_pays_for(
    raw: list[tuple[int, int, int, bool]], limit: int, bps: int
) -> None:
    meters = [MeterState(b, 1_000_000 + w, p, a) for b, w, p, a in raw]
    end = billable_end(meters, limit, bps)
    priced = [m for m in meters if m.active and m.price_per_hour_micro > 0]
    if not priced:
        assert end is None
        return
    assert end is not None
    start = min(m.watermark_s for m in priced)
    spent = customer_charge(usage_until(meters, start), bps)
    if spent > limit:
        assert end == start
    else:
        assert customer_charge(usage_until(meters, end), bps) <= limit
        assert customer_charge(usage_until(meters, end + 1), bps) > limit


def test_a_budget_of_5500_at_1100_a_second_buys_5_seconds() -> None:
    meter = MeterState(billed_seconds=0, watermark_s=1000, price_per_hour_micro=3_600_000)
    assert billable_end([meter], 5_500, 1000) == 1005
    state = spend_state([MeterState(5, 1005, 3_600_000)], 5_500, 1000)
    assert (state.spent_micro, state.end_s, state.exhausted) == (5_500, 1005, True)
    assert spend_limit(1_100_000, None) == 1_100_000
    assert spend_limit(1_100_000, 5_500) == 5_500
