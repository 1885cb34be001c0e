"""Money arithmetic: plain functions over integers (micro-USDC), no I/O.

Rounding rules, chosen so that nothing is created or lost:
- the platform fee is added on top of what the provider earns and rounds up
  (``fee_on``); the customer pays ``provider amount + fee``;
- usage accrues with cumulative rounding (``accrue``): the amount for a run of seconds is
  ``floor(total × price / 3600)`` however the seconds are split into buckets, so no
  micro-USDC is counted twice or dropped by splitting;
- a charge larger than what a hold still has is capped and split back into provider and
  fee parts (``split_capped``) so the hold never goes below zero.
"""

from __future__ import annotations

import hashlib
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
