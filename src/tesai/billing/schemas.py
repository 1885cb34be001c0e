"""Request and response models of the money API (billing and payments)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from tesai.kit.money import Micro

MAX_MICRO = 1_000_000_000_000_000


class AmountIn(BaseModel):
    amount_micro: Micro = Field(gt=0, le=MAX_MICRO, description="Micro-USDC (1 USDC = 1,000,000)")


class BalanceOut(BaseModel):
    available_micro: int
    held_micro: int
    holds: dict[str, int]


class EarningsOut(BaseModel):
    earnings_micro: int
    pending_payout_micro: int
    paid_out_micro: int


class LedgerLineOut(BaseModel):
    posting_id: int
    transaction_id: int
    at: datetime
    kind: str
    account: str
    ref: str
    amount_micro: int
    memo: str


class UsageLineOut(BaseModel):
    cluster_id: uuid.UUID
    node_id: uuid.UUID
    device_id: uuid.UUID
    seconds: int
    price_per_hour_micro: int
    amount_micro: int
    settled_micro: int


class GrantIn(BaseModel):
    user_id: uuid.UUID
    amount_micro: Micro = Field(gt=0, le=MAX_MICRO)
    reason: str = Field(min_length=1, max_length=300)


class MovementOut(BaseModel):
    transaction_id: int
    kind: str
    amount_micro: int


class MonthlyStatementOut(BaseModel):
    month: str
    deposited_micro: int
    granted_micro: int
    charged_micro: int
    released_micro: int


class SpendCapIn(BaseModel):
    monthly_cap_micro: int | None = Field(
        gt=0,
        le=MAX_MICRO,
        strict=True,
        description="Monthly spend cap in micro-USDC; null removes the cap",
    )


class SpendCapOut(BaseModel):
    monthly_cap_micro: int | None
    """None: no cap."""
    period: str
    """The calendar month (UTC) the figures are for: ``2026-11``."""
    period_start: datetime
    period_end: datetime
    month_to_date_micro: int
    """Usage charged this month (metered, settled or not, with the platform fee)."""
    open_holds_micro: int
    """What the open cluster holds can still spend."""
    used_pct: float | None
    """Month-to-date spend as a percentage of the cap."""
