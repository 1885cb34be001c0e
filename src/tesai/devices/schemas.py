"""Request and response models of the provider, admin and public device endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from tesai.devices.models import DeviceStatus
from tesai.devices.reputation import OFFENCES
from tesai.kit.money import Micro

_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


class DeviceCreate(BaseModel):
    name: str = Field(min_length=1, max_length=120, pattern=_PRINTABLE)
    price_per_gpu_hour_micro: Micro | None = Field(default=None, ge=0)
    """Micro-USDC per GPU-hour (per device-hour for a CPU-only device); default from settings."""
    region: str | None = Field(default=None, max_length=64, pattern=_PRINTABLE)
    country: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$")
    """ISO 3166-1 alpha-2 code."""


class PriceUpdate(BaseModel):
    price_per_gpu_hour_micro: Micro = Field(ge=0)


class DeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    provider_id: uuid.UUID
    name: str
    status: DeviceStatus
    status_reason: str | None
    gpu_model: str | None
    gpu_count: int
    vram_bytes_per_gpu: int
    cpu_cores: int
    ram_bytes: int
    region: str | None
    country: str | None
    connectivity_tier: str | None
    price_per_gpu_hour_micro: int
    reliability: float
    verified_score: float | None
    verified_at: datetime | None
    agent_version: str | None
    ray_version: str | None
    last_seen_at: datetime | None
    created_at: datetime


class JoinTokenOut(BaseModel):
    join_token: str
    """Shown once; works once, until ``expires_at``."""
    expires_at: datetime
    join_command: str


class DeviceCreated(BaseModel):
    device: DeviceOut
    join_token: str
    expires_at: datetime
    join_command: str


class DeviceEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    from_status: str | None
    to_status: str
    """The same as ``from_status`` for an offence that left the device where it was."""
    reason: str
    message: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def offence(self) -> bool:
        """A check of the control plane's the device failed (``tesai.devices.reputation``):
        it lowered its reliability and counts toward an admin's review."""
        return self.reason in OFFENCES


class TelemetryPoint(BaseModel):
    minute: datetime
    samples: int
    cpu_percent: float
    mem_used_bytes: int
    gpu_utilization_pct: float | None
    gpu_memory_used_bytes: int | None
    gpu_temperature_c: float | None
    gpu_power_w: float | None


class ChallengeOut(BaseModel):
    """A proof-of-compute challenge as the provider sees it: the verdict, what the control
    plane measured, and what the agent said about itself (shown, never trusted)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    created_at: datetime
    completed_at: datetime | None
    outcome: str | None
    reason: str | None
    score: float | None
    """GFLOP/s the control plane measured (work / time from challenge to commitment)."""
    trigger: str
    deadline_s: float | None = None
    """Seconds from challenge to commitment the declared hardware is allowed."""
    measured_s: float | None = None
    """Seconds the control plane measured from challenge to commitment."""
    detail: str | None = None
    """Why it failed, in numbers."""
    reported: dict[str, Any] | None = None
    """The agent's own account (engine, model, timings): self-reported, not trusted."""

    @model_validator(mode="before")
    @classmethod
    def _from_params(cls, data: Any) -> Any:
        params = getattr(data, "params", None)
        if not isinstance(params, dict):
            return data
        fields = ("id", "created_at", "completed_at", "outcome", "reason", "score", "trigger")
        return {f: getattr(data, f) for f in fields} | {
            "deadline_s": params.get("deadline_s"),
            "measured_s": params.get("measured_s"),
            "detail": params.get("detail"),
            "reported": params.get("reported"),
        }


class DeviceDetail(BaseModel):
    device: DeviceOut
    last_heartbeat_at: datetime | None
    latest_telemetry: dict[str, Any] | None
    """The last heartbeat's telemetry as the agent sent it (None when none is cached)."""
    telemetry_history: list[TelemetryPoint]
    uptime_30d_pct: float | None
    """Percent of the last 30 days (or of the device's life, if shorter) it was up, over the
    minutes recorded so far; None while none is (a device a minute or two old)."""
    hourly_price_micro: int
    """What a customer pays per hour for the whole device."""
    last_verification: ChallengeOut | None


class PoolGroup(BaseModel):
    gpu_model: str
    region: str | None
    devices: int
    gpus: int
    avg_utilization_pct: float | None
    min_price_per_gpu_hour_micro: int


class PoolStats(BaseModel):
    gpus_online: int
    gpu_devices_online: int
    cpu_devices_online: int
    cpu_cores_online: int
    avg_gpu_utilization_pct: float | None
    avg_cpu_percent: float | None
    by_model_region: list[PoolGroup]
    """GPU devices only; CPU devices are counted above and priced in ``min_cpu_price…``."""
    min_cpu_price_per_hour_micro: int | None = None
    """The cheapest online CPU device's listed price per hour; None when none is online."""
    platform_fee_bps: int = 0
    """The platform fee, in basis points, a customer pays on top of every listed price."""
    computed_at: datetime


class FleetEventOut(BaseModel):
    at: datetime
    kind: str
    message: str


class SweeperState(BaseModel):
    tracked: int
    """Devices whose heartbeats the sweeper watches."""
    storm: dict[str, Any] | None
    """The current storm hold (since, silent, tracked, message), or None."""
    events: list[FleetEventOut]


class ChallengeIssued(BaseModel):
    challenge_id: uuid.UUID
    command_id: uuid.UUID
