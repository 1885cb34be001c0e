"""Tables of the clusters domain.

A device is booked by at most one live node: ``cluster_nodes`` has a unique index on
``device_id`` over rows not yet released, so two API processes placing at once cannot both
book it — the second insert fails and its placement is retried without that device.
A quote reserves devices the same way, in ``device_reservations`` (one row per device,
taken over only when expired).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tesai.db import Base, CreatedAtMixin, IdMixin


def _values(e: type[enum.Enum]) -> list[str]:
    return [m.value for m in e]


class ClusterStatus(enum.StrEnum):
    pending = "pending"
    provisioning = "provisioning"
    running = "running"
    degraded = "degraded"
    terminating = "terminating"
    terminated = "terminated"
    failed = "failed"


class NodeState(enum.StrEnum):
    assigned = "assigned"
    """Booked; the join command is on its way to the agent."""
    starting = "starting"
    running = "running"
    lost = "lost"
    """Its device went offline; not billed; a replacement is being placed."""
    released = "released"


class NodeRole(enum.StrEnum):
    head = "head"
    worker = "worker"


class Cluster(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "clusters"
    __table_args__ = (
        Index("ix_clusters_customer_id", "customer_id"),
        Index("ix_clusters_status", "status"),
    )

    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(120))
    status: Mapped[ClusterStatus] = mapped_column(
        Enum(ClusterStatus, name="cluster_status", values_callable=_values),
        default=ClusterStatus.pending,
    )
    status_reason: Mapped[str | None] = mapped_column(String(64))
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    """The placement request (filters, counts) kept for replacements and autoscaling."""
    gpu_model: Mapped[str | None] = mapped_column(String(128))
    gpus: Mapped[int] = mapped_column(Integer)
    """GPUs currently requested (CPU clusters: nodes)."""
    min_gpus: Mapped[int | None] = mapped_column(Integer)
    max_gpus: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[int] = mapped_column(Integer)
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    max_price_per_gpu_hour_micro: Mapped[int | None] = mapped_column(BigInteger)
    hourly_price_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    budget_micro: Mapped[int | None] = mapped_column(BigInteger)
    hold_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    ray_version: Mapped[str] = mapped_column(String(32))
    ray_token_sealed: Mapped[str] = mapped_column(Text)
    """The cluster's Ray auth token, sealed with the control plane's secret box."""
    provisioning_deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    running_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    terminated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replacements: Mapped[int] = mapped_column(Integer, default=0)
    demand_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """Autoscaling: since when Ray has reported resource demand it cannot place."""
    version: Mapped[int] = mapped_column(Integer, default=1)


class ClusterNode(IdMixin, CreatedAtMixin, Base):
    __tablename__ = "cluster_nodes"
    __table_args__ = (
        Index("ix_cluster_nodes_cluster_id", "cluster_id"),
        Index(
            "uq_cluster_nodes_live_device",
            "device_id",
            unique=True,
            postgresql_where=text("released_at IS NULL"),
        ),
    )

    cluster_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="RESTRICT"))
    role: Mapped[NodeRole] = mapped_column(
        Enum(NodeRole, name="node_role", values_callable=_values)
    )
    state: Mapped[NodeState] = mapped_column(
        Enum(NodeState, name="node_state", values_callable=_values), default=NodeState.assigned
    )
    state_reason: Mapped[str | None] = mapped_column(String(64))
    index: Mapped[int] = mapped_column(Integer, default=0)
    """Position in the cluster (0 = first head); replacements take the next free number."""
    gpus: Mapped[int] = mapped_column(Integer)
    price_per_hour_micro: Mapped[int] = mapped_column(BigInteger)
    """What this node costs per hour (its GPUs × the device's price at booking)."""
    ray_address: Mapped[str | None] = mapped_column(String(128))
    dashboard_url: Mapped[str | None] = mapped_column(String(256))
    running_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lost_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    idle_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """Autoscaling: since when Ray has reported this node idle."""
    healthy_seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    """Healthy (billed) seconds so far; the watermark and the money live in the node's
    meter and usage buckets (``tesai.billing.models.NodeMeter``, ``UsageBucket``)."""


class ClusterEvent(Base):
    __tablename__ = "cluster_events"
    __table_args__ = (Index("ix_cluster_events_cluster_at", "cluster_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    cluster_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(String(512), default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)


class Quote(IdMixin, CreatedAtMixin, Base):
    """A priced placement shown to a customer, holding its devices until ``expires_at``."""

    __tablename__ = "quotes"

    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    placement: Mapped[dict[str, Any]] = mapped_column(JSONB)
    hourly_micro: Mapped[int] = mapped_column(BigInteger)
    total_micro: Mapped[int] = mapped_column(BigInteger)
    fee_micro: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeviceReservation(Base):
    """A device held for a quote. Taken over by another quote only once expired."""

    __tablename__ = "device_reservations"

    device_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    quote_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("quotes.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobStatus(enum.StrEnum):
    pending = "PENDING"
    running = "RUNNING"
    stopped = "STOPPED"
    succeeded = "SUCCEEDED"
    failed = "FAILED"


class Job(IdMixin, CreatedAtMixin, Base):
    """A Ray job submitted through TES AI (jobs sent with plain `ray job submit` live in Ray)."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_cluster_id", "cluster_id"),
        Index("ix_jobs_resubmit", "cluster_id", postgresql_where=text("resubmit")),
    )

    cluster_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    submission_id: Mapped[str] = mapped_column(String(128), unique=True)
    entrypoint: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.pending.value)
    message: Mapped[str | None] = mapped_column(Text)
    runtime_env: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    job_metadata: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    """Kept with the entrypoint so the job can be submitted again on a new head."""
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    """How often the job is resubmitted when its cluster's head is lost under it."""
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    resubmit: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    """Waiting to be submitted (as ``submission_id``) once the re-formed cluster runs."""
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
