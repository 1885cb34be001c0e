"""Writing and reading the audit log.

Other domains call ``record`` inside their own unit of work, so an action and its audit row
commit (or roll back) together. ``record_detached`` writes in its own short transaction for
events that must survive a failing request (a failed login answers 401, yet is logged).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tesai.audit.models import AuditEvent


def _clean(value: Any) -> Any:
    """PostgreSQL text and JSONB cannot hold NUL; audit details often quote user input."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_clean(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _short(value: str | None, limit: int) -> str | None:
    return None if value is None else _clean(value)[:limit]


async def record(
    session: AsyncSession,
    *,
    action: str,
    actor_user_id: uuid.UUID | None = None,
    actor_kind: str = "user",
    subject_type: str | None = None,
    subject_id: str | uuid.UUID | None = None,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit event to ``session`` (flushed, committed with the caller's work).

    Strings are made storable (NUL replaced, cut to the column length), so recording
    never fails on odd user input.
    """
    event = AuditEvent(
        action=_short(action, 64),
        actor_user_id=actor_user_id,
        actor_kind=_short(actor_kind, 16),
        subject_type=_short(subject_type, 32),
        subject_id=_short(str(subject_id), 64) if subject_id is not None else None,
        ip=_short(ip, 64),
        details=_clean(details or {}),
    )
    session.add(event)
    await session.flush()
    return event


async def record_detached(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    action: str,
    actor_user_id: uuid.UUID | None = None,
    actor_kind: str = "user",
    subject_type: str | None = None,
    subject_id: str | uuid.UUID | None = None,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Record one event in its own transaction, committed at once."""
    async with sessionmaker() as session, session.begin():
        await record(
            session,
            action=action,
            actor_user_id=actor_user_id,
            actor_kind=actor_kind,
            subject_type=subject_type,
            subject_id=subject_id,
            ip=ip,
            details=details,
        )


async def list_events(
    session: AsyncSession,
    *,
    action: str | None = None,
    actor_user_id: uuid.UUID | None = None,
    since: datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[AuditEvent]:
    """Newest first; page with ``before_id`` (the smallest id of the previous page)."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if actor_user_id is not None:
        query = query.where(AuditEvent.actor_user_id == actor_user_id)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    return list((await session.scalars(query)).all())
