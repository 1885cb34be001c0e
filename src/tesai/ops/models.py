"""Tables of the operations domain."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, Float, ForeignKey, func
from sqlalchemy.orm import Mapped, mapped_column

from tesai.db import Base


class ProviderSla(Base):
    """The uptime a provider promises; no row: ``Settings.sla_promised_uptime``."""

    __tablename__ = "provider_slas"
    __table_args__ = (
        CheckConstraint("promised_uptime >= 0 AND promised_uptime <= 1", name="fraction"),
    )

    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    promised_uptime: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
