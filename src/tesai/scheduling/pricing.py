"""Prices of a placement: integer micro-USDC, rounded up where the customer pays.

Per device: ``ceil(units × price_per_unit_hour × seconds / 3600)`` — each provider's amount is an
exact integer and the compute total is their sum. The platform fee is ``ceil(compute × bps /
10_000)`` on top. Nothing here uses floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from tesai.scheduling.placement import PlacedDevice, Placement

SECONDS_PER_HOUR: Final = 3600
BPS_DENOMINATOR: Final = 10_000


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer division rounding up (for non-negative numerator, positive denominator)."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    return -(-numerator // denominator)


def fee_micro(amount_micro: int, fee_bps: int) -> int:
    """The platform fee on an amount, rounded up. Raises ValueError on a negative input."""
    if amount_micro < 0 or fee_bps < 0:
        raise ValueError("amount and fee must be non-negative")
    return ceil_div(amount_micro * fee_bps, BPS_DENOMINATOR)


@dataclass(frozen=True, slots=True)
class DeviceCharge:
    """What one device's provider earns for the duration."""

    device_id: str
    hourly_micro: int
    amount_micro: int


@dataclass(frozen=True, slots=True)
class PriceBreakdown:
    """Hourly and total price of a placement for a duration, with the platform fee."""

    duration_s: int
    fee_bps: int
    hourly_micro: int
    """Providers' price per hour for the whole gang."""
    hourly_fee_micro: int
    hourly_total_micro: int
    """What the customer pays per hour (providers + fee)."""
    compute_micro: int
    """What the providers earn for the duration (sum of ``devices``)."""
    fee_micro: int
    total_micro: int
    """What the customer pays for the duration."""
    devices: tuple[DeviceCharge, ...]


def price_devices(devices: Sequence[PlacedDevice], duration_s: int, fee_bps: int) -> PriceBreakdown:
    """Price placed devices for ``duration_s`` seconds with a fee in basis points.

    Raises ValueError on a negative duration or fee.
    """
    if duration_s < 0:
        raise ValueError("duration must be non-negative")
    charges = tuple(
        DeviceCharge(
            d.device_id,
            d.hourly_price_micro,
            ceil_div(d.hourly_price_micro * duration_s, SECONDS_PER_HOUR),
        )
        for d in devices
    )
    hourly = sum(c.hourly_micro for c in charges)
    compute = sum(c.amount_micro for c in charges)
    hourly_fee = fee_micro(hourly, fee_bps)
    fee = fee_micro(compute, fee_bps)
    return PriceBreakdown(
        duration_s=duration_s,
        fee_bps=fee_bps,
        hourly_micro=hourly,
        hourly_fee_micro=hourly_fee,
        hourly_total_micro=hourly + hourly_fee,
        compute_micro=compute,
        fee_micro=fee,
        total_micro=compute + fee,
        devices=charges,
    )


def price_placement(placement: Placement, duration_s: int, fee_bps: int) -> PriceBreakdown:
    """Price a placement for a duration (see ``price_devices``)."""
    return price_devices(placement.devices, duration_s, fee_bps)
