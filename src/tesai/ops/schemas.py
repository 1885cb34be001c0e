"""Request and response models of the operations API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tesai.devices.models import DeviceStatus

Reason = Field(default="", max_length=200, description="Why, kept in the events and audit log.")


class _WithReason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Reason

    @field_validator("reason")
    @classmethod
    def _storable(cls, v: str) -> str:
        return v.replace("\x00", "").strip()  # PostgreSQL text cannot hold NUL


class DrainBody(_WithReason):
    pass


class MoveBody(_WithReason):
    pass


class SlaBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    promised_uptime: float = Field(ge=0.0, le=1.0, description="e.g. 0.995")


class DeviceOpsOut(BaseModel):
    id: uuid.UUID
    name: str
    provider_id: uuid.UUID
    status: DeviceStatus
    status_reason: str | None
    live_nodes: int
    """Cluster nodes still on the device (a draining device becomes drained at 0)."""


class MoveOut(BaseModel):
    cluster_id: uuid.UUID
    node_id: uuid.UUID
    device_id: uuid.UUID
    replacement_node_id: uuid.UUID
    replacement_device_id: uuid.UUID
    left_at_once: bool
    """True for a head (the cluster re-forms); a worker leaves once its replacement runs."""


class Incident(BaseModel):
    at: datetime
    kind: Literal["fault", "operator"]
    reason: str
    message: str
    cluster_id: uuid.UUID | None = None
    node_id: uuid.UUID | None = None
    device_id: uuid.UUID | None = None
    nodes_affected: int = 0
    gpus_affected: int = 0
    impact_seconds: int = 0
    """Cluster: seconds degraded around this fault. Device: seconds it stayed down."""
    recovered_at: datetime | None = None
    unbilled_seconds: int = 0
    """Node-seconds the customer was not billed for because of this incident."""
    credit_micro: int = 0
    """What those seconds would have cost the customer (provider price plus fee)."""


class IncidentTimeline(BaseModel):
    subject_type: Literal["cluster", "device"]
    subject_id: uuid.UUID
    status: str
    incidents: list[Incident]
    impact_seconds: int
    """Cluster: total seconds degraded. Device: total seconds offline."""
    unbilled_seconds: int
    credit_micro: int
    counts_by_reason: dict[str, int]


class ProviderSlaOut(BaseModel):
    provider_id: uuid.UUID
    email: str | None
    devices: int
    up_seconds: int
    down_seconds: int
    """Seconds offline while it should have been up (disabled/drained/pending time is not
    counted either way)."""
    uptime: float | None
    """up / (up + down); None when no device was in the pool during the window."""
    promised_uptime: float
    met: bool | None
    faults: int
    faults_by_reason: dict[str, int]
    mttr_seconds: float | None
    """Mean time from going offline to being back, over faults that recovered."""


class FaultStats(BaseModel):
    device_faults_by_reason: dict[str, int]
    cluster_faults_by_reason: dict[str, int]
    device_mttr_seconds: float | None
    cluster_degraded_seconds: int


class SlaReport(BaseModel):
    since: datetime
    until: datetime
    providers: list[ProviderSlaOut]
    faults: FaultStats


class ProviderSlaSet(BaseModel):
    provider_id: uuid.UUID
    promised_uptime: float
