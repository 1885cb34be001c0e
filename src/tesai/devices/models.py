"""Tables of the devices domain.

Prices: ``price_per_gpu_hour_micro`` is integer micro-USDC per *priced unit*-hour. A unit is one
GPU on a GPU device and the whole machine (all its CPU cores, one Ray node) on a CPU-only
device, so the hourly price of a device is ``price × max(gpu_count, 1)``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tesai.db import Base, CreatedAtMixin, IdMixin


class DeviceStatus(enum.StrEnum):
    """Lifecycle of a device; see ``tesai.devices.states`` for the allowed moves."""

    pending = "pending"
    """Created by the provider; no agent has joined (or it has not been verified yet)."""
    verifying = "verifying"
    """An agent joined; a proof-of-compute challenge is out."""
    online = "online"
    """Verified and heartbeating: listed in the pool."""
    busy = "busy"
    """Rented: part of a customer's cluster."""
    offline = "offline"
    """Missed heartbeats past the grace, or the agent left."""
    disabled = "disabled"
    """Taken out of the pool by its provider or an admin."""
    rejected = "rejected"
    """Failed proof of compute; ``status_reason`` says why."""
    draining = "draining"
    """An operator is draining it: its current cluster nodes finish, no new ones are placed."""
    drained = "drained"
    """Drained: no cluster node is left on it and none is placed until it is undrained."""


def _enum_values(e: type[enum.Enum]) -> list[str]:
    return [m.value for m in e]


class Device(IdMixin, CreatedAtMixin, Base):
    """A provider's machine."""

    __tablename__ = "devices"
    __table_args__ = (
        Index("ix_devices_status", "status"),
        Index("ix_devices_provider_id", "provider_id"),
        Index("ix_devices_change_xact", "change_xact"),
    )

    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(120))
    status: Mapped[DeviceStatus] = mapped_column(
        Enum(DeviceStatus, name="device_status", values_callable=_enum_values),
        default=DeviceStatus.pending,
    )
    status_reason: Mapped[str | None] = mapped_column(String(64))
    hardware: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    gpu_model: Mapped[str | None] = mapped_column(String(128))
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    vram_bytes_per_gpu: Mapped[int] = mapped_column(BigInteger, default=0)
    cpu_cores: Mapped[int] = mapped_column(Integer, default=0)
    ram_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    region: Mapped[str | None] = mapped_column(String(64))
    country: Mapped[str | None] = mapped_column(String(2))
    connectivity_tier: Mapped[str | None] = mapped_column(String(8))
    price_per_gpu_hour_micro: Mapped[int] = mapped_column(BigInteger)
    """Micro-USDC per GPU-hour (per device-hour for CPU-only devices; see module doc)."""
    reliability: Mapped[float] = mapped_column(Float, default=1.0)
    verified_score: Mapped[float | None] = mapped_column(Float)
    """Measured GFLOP/s of the last accepted proof of compute."""
    verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    agent_version: Mapped[str | None] = mapped_column(String(64))
    ray_version: Mapped[str | None] = mapped_column(String(64))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """Last heartbeat the sweeper or flusher copied from the cache (not updated per beat)."""
    version: Mapped[int] = mapped_column(Integer, default=1)
    """Bumped on every status change; guarded updates compare it."""
    change_xact: Mapped[int | None] = mapped_column(BigInteger)
    """Database transaction that last changed what placement reads (status, GPUs, region,
    price, scores), stamped by a trigger (``tesai.dbextras``): per-process placement indexes
    read the devices changed since their watermark by it (``tesai.clusters.pool``)."""


class DeviceEvent(Base):
    """One status change of a device, with a reason code and a message a person can read."""

    __tablename__ = "device_events"
    __table_args__ = (Index("ix_device_events_device_at", "device_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(String(512), default="")


class JoinToken(IdMixin, CreatedAtMixin, Base):
    """A one-time token that lets an agent join as a given device. Stored as SHA-256."""

    __tablename__ = "join_tokens"

    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    used_by_instance: Mapped[str | None] = mapped_column(String(64))
    """The agent installation that used it: only that one may retry a join whose response
    it never got."""


class DeviceCredential(IdMixin, CreatedAtMixin, Base):
    """A device token (``tesai_dev_…``) the agent authenticates with. Stored as SHA-256."""

    __tablename__ = "device_credentials"
    __table_args__ = (Index("ix_device_credentials_device_id", "device_id"),)

    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeviceCommand(IdMixin, CreatedAtMixin, Base):
    """A command for a device's agent, delivered on heartbeat responses until acknowledged."""

    __tablename__ = "device_commands"
    __table_args__ = (Index("ix_device_commands_device_pending", "device_id", "acked_at"),)

    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    args: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivery_count: Mapped[int] = mapped_column(Integer, default=0)
    acked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class DeviceUptimeMinute(Base):
    """Seconds a device was up (heartbeating) in one minute; written by the flush task."""

    __tablename__ = "device_uptime_minutes"
    __table_args__ = (UniqueConstraint("device_id", "minute"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    minute: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seconds_up: Mapped[int] = mapped_column(Integer)


class DeviceTelemetryRollup(Base):
    """Average telemetry of a device over one minute; written by the flush task."""

    __tablename__ = "device_telemetry_rollups"
    __table_args__ = (UniqueConstraint("device_id", "minute"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    minute: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    samples: Mapped[int] = mapped_column(Integer)
    cpu_percent: Mapped[float] = mapped_column(Float)
    mem_used_bytes: Mapped[int] = mapped_column(BigInteger)
    gpu_utilization_pct: Mapped[float | None] = mapped_column(Float)
    gpu_memory_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    gpu_temperature_c: Mapped[float | None] = mapped_column(Float)
    gpu_power_w: Mapped[float | None] = mapped_column(Float)


class VerificationChallenge(IdMixin, CreatedAtMixin, Base):
    """One proof-of-compute challenge sent to a device, and its outcome."""

    __tablename__ = "verification_challenges"
    __table_args__ = (Index("ix_verification_challenges_device_id", "device_id"),)

    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    seed: Mapped[int] = mapped_column(BigInteger)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(16))
    """``passed``, ``failed``, ``expired`` or ``superseded``; None while outstanding."""
    reason: Mapped[str | None] = mapped_column(String(64))
    score: Mapped[float | None] = mapped_column(Float)
    trigger: Mapped[str] = mapped_column(String(16), default="join")
    """``join``, ``periodic``, ``provider``, ``admin`` or ``resume``."""


class FleetEvent(Base):
    """A platform-wide liveness event (storm hold begun/ended), for operators."""

    __tablename__ = "fleet_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(String(512))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
