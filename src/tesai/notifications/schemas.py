"""Notification responses."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: uuid.UUID
    kind: str
    severity: str
    subject_type: str
    subject_id: str
    threshold: int
    period: str
    message: str
    data: dict[str, Any]
    created_at: datetime
    read_at: datetime | None


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    unread: int
    """Unread notifications of the user in all (not only on this page)."""
    next_before_id: int | None
    """Pass as ``before_id`` for the next (older) page; None on the last page."""


class MarkedRead(BaseModel):
    marked: int
