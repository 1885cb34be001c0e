"""Admins read the audit log: /api/v1/internal/audit."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from tesai.audit import service
from tesai.audit.schemas import AuditEventOut, AuditPage
from tesai.auth.deps import AdminUser
from tesai.db import SessionDep

router = APIRouter(prefix="/internal/audit", tags=["internal"])


@router.get("")
async def list_audit_events(
    admin: AdminUser,
    session: SessionDep,
    action: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] = None,
    actor: Annotated[uuid.UUID | None, Query(description="actor user id")] = None,
    since: datetime | None = None,
    before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> AuditPage:
    """Audit events, newest first, filtered by action, actor and time."""
    events = await service.list_events(
        session,
        action=action,
        actor_user_id=actor,
        since=since,
        before_id=before_id,
        limit=limit,
    )
    return AuditPage(
        items=[AuditEventOut.model_validate(e) for e in events],
        next_before_id=events[-1].id if len(events) == limit else None,
    )
