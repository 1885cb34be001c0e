from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only kind stored)."""
    return datetime.now(UTC)
