"""Store, list and mark notifications. Each function takes the caller's session and flushes.

``notify`` is idempotent by the table's unique key (user, kind, subject, threshold, period):
``INSERT … ON CONFLICT DO NOTHING``, so two task runs at once store one row between them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.errors import NotFound
from tesai.kit.time import utcnow
from tesai.notifications.models import Notification


class NotificationNotFound(NotFound):
    code = "notification_not_found"


@dataclass(frozen=True)
class NewNotification:
    user_id: uuid.UUID
    kind: str
    severity: str
    subject_type: str
    subject_id: str
    message: str
    threshold: int = 0
    period: str = ""
    data: dict[str, Any] = field(default_factory=dict)


async def notify(session: AsyncSession, n: NewNotification) -> bool:
    """Store ``n`` unless the same one is stored already; returns whether it was new."""
    stmt = (
        insert(Notification)
        .values(
            user_id=n.user_id,
            kind=n.kind,
            severity=n.severity,
            subject_type=n.subject_type,
            subject_id=n.subject_id,
            threshold=n.threshold,
            period=n.period,
            message=n.message[:500],
            data=n.data,
        )
        .on_conflict_do_nothing(constraint="uq_notifications_once")
        .returning(Notification.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def list_for(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    unread_only: bool = False,
    before_id: int | None = None,
    limit: int = 50,
) -> list[Notification]:
    """The user's notifications, newest first."""
    q = select(Notification).where(Notification.user_id == user_id)
    if unread_only:
        q = q.where(Notification.read_at.is_(None))
    if before_id is not None:
        q = q.where(Notification.id < before_id)
    rows = await session.execute(q.order_by(Notification.id.desc()).limit(limit))
    return list(rows.scalars())


async def unread_count(session: AsyncSession, user_id: uuid.UUID) -> int:
    n = await session.scalar(
        select(func.count())
        .select_from(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None))
    )
    return int(n or 0)


async def mark_read(
    session: AsyncSession, user_id: uuid.UUID, notification_id: int
) -> Notification:
    """Mark one of the user's notifications read (idempotent).

    Raises ``NotificationNotFound`` (404) when it does not exist or belongs to someone else.
    """
    n = await session.get(Notification, notification_id, with_for_update=True)
    if n is None or n.user_id != user_id:
        raise NotificationNotFound("No such notification")
    if n.read_at is None:
        n.read_at = utcnow()
        await session.flush()
    return n


async def mark_all_read(session: AsyncSession, user_id: uuid.UUID) -> int:
    """Mark every unread notification of the user read; returns how many."""
    result = await session.execute(
        update(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None))
        .values(read_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)
