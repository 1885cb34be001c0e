"""Request and response models of the clusters API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tesai.kit.money import Micro
from tesai.protocol.freeform import BoundedJson, json_limits

MAX_DURATION_S = 30 * 24 * 3600


class ClusterRequest(BaseModel):
    """What a customer asks for. GPU clusters give ``gpu_model`` and ``gpus`` (or
    ``min_gpus``/``max_gpus`` to autoscale); CPU clusters give ``nodes`` and no model."""

    model_config = ConfigDict(extra="forbid")

    gpu_model: str | None = Field(default=None, max_length=128)
    gpus: int = Field(default=0, ge=0, le=1024)
    nodes: int | None = Field(default=None, ge=1, le=256)
    gpus_per_node: int | None = Field(default=None, ge=1, le=64)
    min_gpus: int | None = Field(default=None, ge=1, le=1024)
    """Autoscaling: at least this many units (GPUs; nodes on a CPU cluster)."""
    max_gpus: int | None = Field(default=None, ge=1, le=1024)
    """Autoscaling: at most this many units."""
    duration_s: int = Field(ge=60, le=MAX_DURATION_S)
    max_price_per_gpu_hour_micro: Micro | None = Field(default=None, ge=0, le=10**12)
    regions: list[str] = Field(default_factory=list, max_length=32)
    countries: list[str] = Field(default_factory=list, max_length=32)
    min_reliability: float = Field(default=0.0, ge=0.0, le=1.0)
    min_connectivity_tier: int | None = Field(default=None, ge=1, le=5)
    min_verified_score: float = Field(default=0.0, ge=0.0, le=1.0)
    min_vram_mb: int = Field(default=0, ge=0, le=10**7)
    allow_cross_region: bool = True

    @model_validator(mode="after")
    def _counts(self) -> ClusterRequest:
        if self.min_gpus is not None or self.max_gpus is not None:
            if self.min_gpus is None or self.max_gpus is None:
                raise ValueError("give both min_gpus and max_gpus to autoscale")
            if self.min_gpus > self.max_gpus:
                raise ValueError("min_gpus must not exceed max_gpus")
            # Units: GPUs on GPU clusters, nodes on CPU clusters.
            if self.gpu_model is None:
                self.nodes = self.nodes or self.min_gpus
                if not self.min_gpus <= self.nodes <= self.max_gpus:
                    raise ValueError("nodes must lie between min_gpus and max_gpus")
            else:
                self.gpus = self.gpus or self.min_gpus
                if not self.min_gpus <= self.gpus <= self.max_gpus:
                    raise ValueError("gpus must lie between min_gpus and max_gpus")
        if self.gpu_model is None and not self.nodes:
            raise ValueError("a CPU cluster needs nodes >= 1 (or give a gpu_model)")
        if self.gpu_model is not None and not self.gpus and not (self.nodes and self.gpus_per_node):
            raise ValueError("a GPU cluster needs gpus >= 1")
        return self


class QuotedDevice(BaseModel):
    device_id: uuid.UUID
    region: str
    gpu_count: int
    price_per_gpu_hour_micro: int
    hourly_micro: int
    score: float


class QuoteOut(BaseModel):
    id: uuid.UUID
    expires_at: datetime
    shape: str
    region: str | None
    devices: list[QuotedDevice]
    hourly_micro: int
    """Providers' price per hour for the whole cluster."""
    hourly_fee_micro: int
    hourly_total_micro: int
    compute_micro: int
    fee_micro: int
    total_micro: int
    """What the hold will be for the whole duration (compute + fee)."""
    reasons: list[str]


class CreateCluster(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="cluster", min_length=1, max_length=120)
    quote_id: uuid.UUID | None = None
    request: ClusterRequest | None = None
    budget_micro: Micro | None = Field(default=None, ge=1, le=10**15)

    @model_validator(mode="after")
    def _one_source(self) -> CreateCluster:
        if (self.quote_id is None) == (self.request is None):
            raise ValueError("give exactly one of quote_id or request")
        return self


class ExtendCluster(BaseModel):
    model_config = ConfigDict(extra="forbid")

    duration_s: int = Field(ge=60, le=MAX_DURATION_S)


class NodeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    device_id: uuid.UUID
    index: int
    role: str
    state: str
    state_reason: str | None
    gpus: int
    price_per_hour_micro: int
    running_at: datetime | None
    lost_at: datetime | None
    released_at: datetime | None
    healthy_seconds: int


class ClusterEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    from_status: str | None
    to_status: str | None
    reason: str
    message: str


class ClusterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    status: str
    status_reason: str | None
    gpu_model: str | None
    gpus: int
    min_gpus: int | None
    max_gpus: int | None
    duration_s: int
    ends_at: datetime | None
    hourly_price_micro: int
    hold_micro: int
    budget_micro: int | None
    ray_version: str
    created_at: datetime
    running_at: datetime | None
    terminated_at: datetime | None
    ray_address: str | None = None
    """Address for `ray job submit --address` (through the control plane's proxy)."""


class AdminClusterOut(ClusterOut):
    customer_id: uuid.UUID


class ClusterDetail(ClusterOut):
    nodes: list[NodeOut]
    events: list[ClusterEventOut]


JobMetadata = Annotated[dict[str, str], json_limits(max_depth=1, max_bytes=16 * 1024)]
"""Ray's job metadata: string labels."""


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entrypoint: str = Field(min_length=1, max_length=8192)
    runtime_env: BoundedJson | None = None
    metadata: JobMetadata | None = None
    max_retries: int = Field(default=0, ge=0, le=10)


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    cluster_id: uuid.UUID
    submission_id: str
    entrypoint: str
    status: str
    message: str | None
    max_retries: int
    attempts: int
    created_at: datetime
    finished_at: datetime | None


class JobListItem(BaseModel):
    """A job of the cluster as ``GET /clusters/{id}/jobs`` lists it: the jobs submitted
    through TES AI merged with every job the head's Ray knows, each marked by how it was
    submitted."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID | None
    """TES AI's id; None for a job submitted with Ray's own tooling (address it by
    ``submission_id`` with that tooling, through the Ray proxy)."""
    cluster_id: uuid.UUID
    submission_id: str
    entrypoint: str
    status: str
    message: str | None
    submitted_via: Literal["tesai", "ray"]
    """``tesai``: our CLI, console or jobs API; ``ray``: Ray's own tooling (``ray job
    submit``, the Job SDK) through the proxy, or a driver started on the cluster itself."""
    max_retries: int
    attempts: int
    created_at: datetime
    finished_at: datetime | None


class DashboardSessionOut(BaseModel):
    """Where to open the cluster's Ray dashboard in a browser tab."""

    url: str
    """On the dashboard origin (never the console's), carrying a one-time ticket."""
    expires_at: datetime
    """The ticket must be redeemed (the URL opened) before this."""
