"""Audit log responses."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor_user_id: uuid.UUID | None
    actor_kind: str
    action: str
    subject_type: str | None
    subject_id: str | None
    ip: str | None
    details: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_before_id: int | None
    """Pass as ``before_id`` to get the next (older) page; null on the last page."""
