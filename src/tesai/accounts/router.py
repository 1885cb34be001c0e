"""Admins manage users: /api/v1/internal/users."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from tesai.accounts import service
from tesai.accounts.schemas import RolesUpdate, UserPage
from tesai.audit.service import record
from tesai.auth.deps import AdminUser, RuntimeDep, request_ip
from tesai.auth.principal import invalidate_user
from tesai.auth.schemas import UserOut
from tesai.db import SessionDep, after_commit

router = APIRouter(prefix="/internal/users", tags=["internal"])


@router.get("")
async def list_users(
    admin: AdminUser,
    session: SessionDep,
    email: Annotated[
        str | None, Query(max_length=320, pattern=r"^[^\x00-\x1f]*$", description="substring")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> UserPage:
    """Users, oldest first."""
    users, total = await service.list_users(
        session, email_contains=email, limit=limit, offset=offset
    )
    return UserPage(items=[UserOut.of(u) for u in users], total=total)


@router.patch("/{user_id}/roles")
async def set_roles(
    user_id: uuid.UUID,
    body: RolesUpdate,
    admin: AdminUser,
    session: SessionDep,
    runtime: RuntimeDep,
    request: Request,
) -> UserOut:
    """Replace a user's roles; takes effect on their next request."""
    user = await service.get_user(session, user_id)
    before = user.roles
    await service.set_roles(session, user, body.roles)
    await record(
        session,
        action="admin.roles_changed",
        actor_user_id=admin.id,
        subject_type="user",
        subject_id=user.id,
        ip=request_ip(request),
        details={"before": before, "after": user.roles},
    )

    async def forget() -> None:
        await invalidate_user(runtime, user_id)

    after_commit(session, forget)
    return UserOut.of(user)
