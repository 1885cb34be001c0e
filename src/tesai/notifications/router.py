"""Notifications of the signed-in user, customer or provider alike.

- ``GET  /notifications``               newest first; ``?unread=true``, ``before_id``, ``limit``
- ``POST /notifications/{id}/read``     mark one read (404 when it is not the caller's)
- ``POST /notifications/read-all``      mark every unread one read
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from tesai.auth.deps import CurrentUser
from tesai.db import SessionDep
from tesai.notifications import service
from tesai.notifications.schemas import MarkedRead, NotificationOut, NotificationPage

router = APIRouter(prefix="/notifications", tags=["notifications"])

NotificationId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("")
async def list_notifications(
    user: CurrentUser,
    session: SessionDep,
    unread: bool = False,
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> NotificationPage:
    """Your notifications (spend warnings, clusters stopped), newest first."""
    items = await service.list_for(
        session, user.id, unread_only=unread, before_id=before_id, limit=limit
    )
    return NotificationPage(
        items=[NotificationOut.model_validate(n) for n in items],
        unread=await service.unread_count(session, user.id),
        next_before_id=items[-1].id if len(items) == limit else None,
    )


@router.post("/read-all")
async def mark_all_read(user: CurrentUser, session: SessionDep) -> MarkedRead:
    """Mark every unread notification read."""
    return MarkedRead(marked=await service.mark_all_read(session, user.id))


@router.post("/{notification_id}/read")
async def mark_read(
    notification_id: NotificationId, user: CurrentUser, session: SessionDep
) -> NotificationOut:
    """Mark one notification read (idempotent); 404 if it is not yours."""
    return NotificationOut.model_validate(
        await service.mark_read(session, user.id, notification_id)
    )
