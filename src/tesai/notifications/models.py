"""The notifications table: one row per thing a user should be told, stored once."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tesai.db import Base


class Notification(Base):
    """A message for one user (customer or provider), read or not.

    ``(user_id, kind, subject_type, subject_id, threshold, period)`` is unique, so a warning
    is stored exactly once however often (or concurrently) the task that raises it runs.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint(
            "user_id",
            "kind",
            "subject_type",
            "subject_id",
            "threshold",
            "period",
            name="uq_notifications_once",
        ),
        Index("ix_notifications_user_id_id", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(48))
    """``spend_cap_warning``, ``cluster_budget_warning``, ``cluster_stopped``."""
    severity: Mapped[str] = mapped_column(String(16))
    """``info``, ``warning`` or ``critical``."""
    subject_type: Mapped[str] = mapped_column(String(32))
    """What it is about: ``account`` (the user's monthly cap) or ``cluster``."""
    subject_id: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[int] = mapped_column(Integer, default=0)
    """Percent of the limit that was crossed (80, 95, 100); 0 when not a threshold."""
    period: Mapped[str] = mapped_column(String(16), default="")
    """The month (``2026-11``) of a monthly-cap warning; ``""`` otherwise."""
    message: Mapped[str] = mapped_column(String(500))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    """The numbers behind the message (micro-USDC amounts, reason code)."""
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    read_at: Mapped[datetime | None]
