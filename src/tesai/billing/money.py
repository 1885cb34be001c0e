"""Money arithmetic: plain functions over integers (micro-USDC), no I/O.

Rounding rules, chosen so that nothing is created or lost:
- the platform fee is added on top of what the provider earns and rounds up
  (``fee_on``); the customer pays ``provider amount + fee``;
- usage accrues with cumulative rounding (``accrue``): the amount for a run of seconds is
  ``floor(total × price / 3600)`` however the seconds are split into buckets, so no
  micro-USDC is counted twice or dropped by splitting;
- the fee is rounded once per hold, the cumulative way too (``settle_hold``): each
  settlement charges ``fee_on(all provider usage paid from the hold so far) − fees already
  charged``, so the fees of a hold add up to the fee of its total, however many minutes and
  ticks it is split into — what the hold was computed with (``hold_for``);
- a charge larger than what a hold still has is paid as far as it goes (``settle_hold``,
  ``split_capped``): the largest provider part whose charge fits, the rest of the hold as
  fee, so the hold is emptied exactly and never goes below zero; the provider part that
  did not fit is the shortfall, recorded, never silently handed back to the customer;
- a hold bills no further than it can pay (``billable_end``): the meters of a cluster stop
  at the second its budget or hold would be passed, not a tick later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

MICRO = 1_000_000
BPS = 10_000


def fee_on(provider_amount: int, fee_bps: int) -> int:
    """The platform fee added on top of ``provider_amount`` (rounded up)."""
    if provider_amount < 0 or fee_bps < 0:
        raise ValueError("amounts and fees are non-negative")
    return -(-provider_amount * fee_bps // BPS)


def customer_charge(provider_amount: int, fee_bps: int) -> int:
    """What the customer pays for ``provider_amount`` of provider earnings."""
    return provider_amount + fee_on(provider_amount, fee_bps)


@dataclass(frozen=True)
class Split:
    provider: int
    fee: int

    @property
    def total(self) -> int:
        return self.provider + self.fee


def split_capped(provider_amount: int, fee_bps: int, available: int) -> Split:
    """Provider and fee parts of a charge, capped to ``available`` in the hold.

    When the full charge fits, it is returned unchanged. Otherwise the largest provider
    part whose charge fits is taken and the rest of ``available`` becomes fee, so the hold
    is emptied exactly.
    """
    full = Split(provider_amount, fee_on(provider_amount, fee_bps))
    if full.total <= available:
        return full
    available = max(0, available)
    provider = available * BPS // (BPS + fee_bps)
    # Rounding may leave room for one more micro-USDC to the provider.
    while provider < provider_amount and customer_charge(provider + 1, fee_bps) <= available:
        provider += 1
    provider = min(provider, provider_amount)
    return Split(provider, available - provider)


def hold_for(gpus: int, price_per_gpu_hour_micro: int, duration_s: int, fee_bps: int) -> int:
    """The hold a cluster needs: GPUs × price × duration plus the platform fee (rounded up)."""
    if gpus < 0 or price_per_gpu_hour_micro < 0 or duration_s < 0:
        raise ValueError("hold inputs are non-negative")
    base = -(-gpus * price_per_gpu_hour_micro * duration_s // 3600)
    return customer_charge(base, fee_bps)


def accrue(seconds_before: int, seconds: int, price_per_hour_micro: int) -> int:
    """Provider earnings for ``seconds`` more seconds after ``seconds_before`` already billed.

    Cumulative rounding: the sum over any split equals ``floor(total × price / 3600)``.
    """
    if seconds_before < 0 or seconds < 0:
        raise ValueError("seconds are non-negative")
    after = (seconds_before + seconds) * price_per_hour_micro // 3600
    return after - seconds_before * price_per_hour_micro // 3600


@dataclass(frozen=True)
class HoldSettlement:
    """What one settlement takes from a hold (see ``settle_hold``)."""

    provider: int
    """Paid to providers."""
    fee: int
    """Paid to the platform."""
    shortfall: int
    """Provider usage the hold could not pay (recorded, not paid)."""

    @property
    def total(self) -> int:
        return self.provider + self.fee


def settle_hold(
    *, usage: int, balance: int, provider_before: int, fee_before: int, fee_bps: int
) -> HoldSettlement:
    """Settle ``usage`` (provider micro-USDC) from a hold holding ``balance``, after
    ``provider_before`` was paid from it with ``fee_before`` in fees.

    The fee rounds once over the hold's whole usage: ``fee_on(provider_before + usage) −
    fee_before`` (never below zero). When the hold cannot pay that, it pays the largest
    provider part ``p`` whose charge fits and the rest of the balance as fee (emptied
    exactly); ``usage − p`` is the shortfall. The metering statement
    (``tesai.billing.metering``) settles by this rule in SQL.
    """
    if min(usage, balance, provider_before, fee_before, fee_bps) < 0:
        raise ValueError("settlement inputs are non-negative")
    fee = max(0, fee_on(provider_before + usage, fee_bps) - fee_before)
    if usage + fee <= balance:
        return HoldSettlement(usage, fee, 0)
    # p + fee_on(provider_before + p) − fee_before ≤ balance holds for the floor of the
    # real-valued bound (the fee's rounding adds less than one), and no larger p fits.
    bound = ((balance + fee_before) * BPS - provider_before * fee_bps) // (BPS + fee_bps)
    provider = min(usage, balance, max(0, bound))
    return HoldSettlement(provider, balance - provider, usage - provider)


def spend_limit(hold_micro: int, budget_micro: int | None) -> int:
    """What a cluster may be charged for usage in all: its hold, or its budget if lower."""
    return hold_micro if budget_micro is None else min(hold_micro, budget_micro)


@dataclass(frozen=True)
class MeterState:
    """A node meter as the spend rules see it (``tesai.billing.models.NodeMeter``)."""

    billed_seconds: int
    watermark_s: int
    """Epoch second up to which the meter has accounted time."""
    price_per_hour_micro: int
    active: bool = True


def usage_until(meters: Sequence[MeterState], t: int) -> int:
    """Provider usage of ``meters`` if every active one billed every second up to ``t``
    (epoch seconds) — the most they can have used by then."""
    total = 0
    for m in meters:
        seconds = m.billed_seconds + (max(0, t - m.watermark_s) if m.active else 0)
        total += seconds * m.price_per_hour_micro // 3600
    return total


def billable_end(meters: Sequence[MeterState], limit_micro: int, fee_bps: int) -> int | None:
    """The last epoch second up to which ``meters`` may bill without their charge
    (usage plus fee) passing ``limit_micro``, even if every active meter bills every
    second from its watermark on; None when nothing active costs anything.

    When the limit is already passed, the earliest watermark: nothing more is billed.
    """
    priced = [m for m in meters if m.active and m.price_per_hour_micro > 0]
    if not priced:
        return None

    def fits(t: int) -> bool:
        return customer_charge(usage_until(meters, t), fee_bps) <= limit_micro

    good = min(m.watermark_s for m in priced)
    if not fits(good):
        return good
    step = 1
    while fits(good + step):  # ends: priced meters cost more every hour
        step *= 2
    good, bad = good + step // 2, good + step
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


@dataclass(frozen=True)
class SpendState:
    """Where a cluster stands against its spend limit (``spend_state``)."""

    spent_micro: int
    """Its usage so far with the platform fee (what budgets count)."""
    end_s: int | None
    """The last epoch second its meters may bill (None: no limit binds)."""
    exhausted: bool
    """The limit cannot pay for another second of its running nodes."""


def spend_state(meters: Sequence[MeterState], limit_micro: int, fee_bps: int) -> SpendState:
    """Spend, billing end and exhaustion of one cluster's meters under ``limit_micro``."""
    spent = customer_charge(
        sum(m.billed_seconds * m.price_per_hour_micro // 3600 for m in meters), fee_bps
    )
    end = billable_end(meters, limit_micro, fee_bps)
    active = [m.watermark_s for m in meters if m.active and m.price_per_hour_micro > 0]
    return SpendState(spent, end, end is not None and end <= max(active))


def minute_of(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def seconds_by_minute(start: datetime, end: datetime, watermark: datetime) -> dict[datetime, int]:
    """Whole seconds of ``[start, end)`` after ``watermark``, grouped by the minute they fall in.

    Times are truncated to whole seconds; time at or before ``watermark`` is never counted
    again, so replaying an interval (after a crash) adds nothing.
    """
    lo = max(start, watermark).replace(microsecond=0)
    hi = end.replace(microsecond=0)
    out: dict[datetime, int] = {}
    while lo < hi:
        minute = minute_of(lo)
        upto = min(hi, minute + timedelta(minutes=1))
        out[minute] = out.get(minute, 0) + int((upto - lo).total_seconds())
        lo = upto
    return out


def request_hash(**params: Any) -> str:
    """A stable digest of an operation's parameters, to tell a replay from a reused key."""
    blob = orjson.dumps(params, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(blob).hexdigest()


def format_usdc(micro: int) -> str:
    """``12345678`` → ``"12.345678"``."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"
