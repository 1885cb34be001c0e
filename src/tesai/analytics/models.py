"""Rollup tables of the analytics domain: hourly and daily aggregates kept by ``rollup``.

Every table is additive: a rollup run adds the contribution of the raw rows between two
watermarks (``AnalyticsWatermark``) to the rows keyed by period, in the same database
transaction that moves the watermark, so each raw row is counted exactly once. ``grain`` is
``hour`` or ``day``; ``start`` is the period's first instant (UTC).

A priced *unit* is one GPU on a GPU device and the whole machine on a CPU-only device (its
``gpu_model`` is ``cpu``), as in ``tesai.devices.models``; ``*_gpu_s`` columns count
unit-seconds.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from tesai.db import Base


class AnalyticsWatermark(Base):
    """How far one raw source has been rolled up: every row with ``id <= last_id`` is in."""

    __tablename__ = "analytics_watermarks"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    """Raw rows rolled up so far (for operators)."""
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class MarketRollup(Base):
    """Supply, demand, money at list price and faults per GPU model and region and period."""

    __tablename__ = "analytics_market"
    __table_args__ = (Index("ix_analytics_market_grain_start", "grain", "start"),)

    grain: Mapped[str] = mapped_column(String(4), primary_key=True)
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    gpu_model: Mapped[str] = mapped_column(String(128), primary_key=True)
    region: Mapped[str] = mapped_column(String(64), primary_key=True)
    up_device_s: Mapped[int] = mapped_column(BigInteger, default=0)
    """Seconds verified devices were heartbeating (÷ period length = devices online)."""
    up_gpu_s: Mapped[int] = mapped_column(BigInteger, default=0)
    rented_gpu_s: Mapped[int] = mapped_column(BigInteger, default=0)
    """Billed unit-seconds of healthy rented nodes (usage buckets)."""
    provider_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    """What those seconds cost at the providers' prices (before the platform fee)."""
    faults: Mapped[int] = mapped_column(Integer, default=0)
    """Devices that went offline from online or busy."""


class PriceRollup(Base):
    """Unit-seconds sold per price bucket: a histogram for the GPU-hour price index.

    ``bucket`` is ``floor(ln(price per unit-hour in micro-USDC) / ln(1.02))``: buckets 2 %
    wide, so medians and spreads read from it are within 1 % of the exact ones. Each
    histogram is kept per region and summed over all regions (``region = '*'``).
    """

    __tablename__ = "analytics_prices"
    __table_args__ = (Index("ix_analytics_prices_grain_start", "grain", "start"),)

    grain: Mapped[str] = mapped_column(String(4), primary_key=True)
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    gpu_model: Mapped[str] = mapped_column(String(128), primary_key=True)
    region: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    gpu_s: Mapped[int] = mapped_column(BigInteger, default=0)


class LedgerRollup(Base):
    """Ledger postings summed per transaction kind and account kind."""

    __tablename__ = "analytics_ledger"
    __table_args__ = (Index("ix_analytics_ledger_grain_start", "grain", "start"),)

    grain: Mapped[str] = mapped_column(String(4), primary_key=True)
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    tx_kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    credit_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    debit_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    """Sum of negative postings, as a positive number."""
    postings: Mapped[int] = mapped_column(Integer, default=0)


class ClusterOutcomeRollup(Base):
    """Cluster lifecycle outcomes per GPU model: completed, failed, self_healed, …"""

    __tablename__ = "analytics_cluster_outcomes"
    __table_args__ = (Index("ix_analytics_cluster_outcomes_grain_start", "grain", "start"),)

    grain: Mapped[str] = mapped_column(String(4), primary_key=True)
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    gpu_model: Mapped[str] = mapped_column(String(128), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16), primary_key=True)
    clusters: Mapped[int] = mapped_column(Integer, default=0)


class DeviceDaily(Base):
    """Per device and day: uptime, rented time and faults (MTBF, reliability)."""

    __tablename__ = "analytics_device_daily"
    __table_args__ = (Index("ix_analytics_device_daily_day", "day"),)

    day: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    device_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    provider_id: Mapped[uuid.UUID]
    up_s: Mapped[int] = mapped_column(BigInteger, default=0)
    rented_s: Mapped[int] = mapped_column(BigInteger, default=0)
    faults: Mapped[int] = mapped_column(Integer, default=0)
    faults_rented: Mapped[int] = mapped_column(Integer, default=0)
    """Faults while the device was rented (went offline from ``busy``)."""


class ProviderDaily(Base):
    """Per provider and day: earnings credited by settlements."""

    __tablename__ = "analytics_provider_daily"
    __table_args__ = (Index("ix_analytics_provider_daily_day", "day"),)

    day: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    provider_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    earned_micro: Mapped[int] = mapped_column(BigInteger, default=0)
