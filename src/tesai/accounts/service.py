"""Creating users and changing their roles."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.accounts.models import User
from tesai.errors import BadRequest, Conflict, NotFound

Role = Literal["customer", "provider", "admin"]
ROLES: tuple[Role, ...] = ("customer", "provider", "admin")


class EmailTaken(Conflict):
    code = "email_taken"


class UserNotFound(NotFound):
    code = "user_not_found"


class NoRoles(BadRequest):
    code = "no_roles"


def normalize_email(email: str) -> str:
    """Emails are compared and stored lower-cased and trimmed."""
    return email.strip().lower()


def _apply_roles(user: User, roles: Iterable[str]) -> None:
    wanted = set(roles)
    unknown = wanted - set(ROLES)
    if unknown:
        raise BadRequest(f"Unknown role(s): {', '.join(sorted(unknown))}")
    if not wanted:
        raise NoRoles("A user needs at least one role")
    user.is_customer = "customer" in wanted
    user.is_provider = "provider" in wanted
    user.is_admin = "admin" in wanted


async def create_user(
    session: AsyncSession,
    *,
    email: str | None,
    password_hash: str | None = None,
    roles: Iterable[str] = ("customer",),
    display_name: str = "",
) -> User:
    """Insert a user. Raises ``EmailTaken`` when the email already has an account."""
    normalized = normalize_email(email) if email else None
    if normalized is not None:
        taken = await session.scalar(select(User.id).where(User.email == normalized))
        if taken is not None:
            raise EmailTaken("An account with this email already exists")
    user = User(
        id=uuid.uuid4(),
        email=normalized,
        password_hash=password_hash,
        display_name=display_name,
        is_active=True,
    )
    _apply_roles(user, roles)
    try:
        # A savepoint, so a concurrent sign-up with the same email is a clean 409.
        async with session.begin_nested():
            session.add(user)
            await session.flush()
    except IntegrityError as exc:
        raise EmailTaken("An account with this email already exists") from exc
    return user


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    """Raises ``UserNotFound``."""
    user = await session.get(User, user_id)
    if user is None:
        raise UserNotFound("No such user")
    return user


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == normalize_email(email)))


async def set_roles(session: AsyncSession, user: User, roles: Iterable[str]) -> None:
    """Replace the user's roles (at least one)."""
    _apply_roles(user, roles)
    await session.flush()


async def list_users(
    session: AsyncSession, *, email_contains: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[User], int]:
    """A page of users ordered by creation, and the total matching."""
    query = select(User)
    count = select(func.count()).select_from(User)
    if email_contains:
        pattern = f"%{email_contains.lower()}%"
        query = query.where(User.email.like(pattern))
        count = count.where(User.email.like(pattern))
    rows = await session.scalars(
        query.order_by(User.created_at, User.id).limit(limit).offset(offset)
    )
    total = await session.scalar(count)
    return list(rows.all()), int(total or 0)
