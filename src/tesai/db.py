"""Database engine, sessions and the request unit of work.

PostgreSQL is the only dialect. Services receive an ``AsyncSession`` and ``flush``; the
request boundary (``get_session``) commits when the handler returns and rolls back when it
raises, so a failed request changes nothing. Background work enqueued by a request is sent
only after that commit (see ``tesai.tasks.enqueue_after_commit``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, ClassVar

from fastapi import Depends, Request
from sqlalchemy import DateTime, MetaData, func
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tesai.settings import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: DateTime(timezone=True)}


class IdMixin:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class CreatedAtMixin:
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


def asyncpg_url(url: str) -> str:
    """Normalise a PostgreSQL URL to the asyncpg driver."""
    for prefix in (
        "postgresql+psycopg://",
        "postgresql+asyncpg://",
        "postgresql://",
        "postgres://",
    ):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url.split('://')[0]}://…")


def create_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    target = url or settings.database_url
    if target is None:
        raise RuntimeError("database_url is not resolved; start the embedded database first")
    return create_async_engine(
        asyncpg_url(target),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_pre_ping=True,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


AfterCommit = Callable[[], Awaitable[None]]


def after_commit(session: AsyncSession, hook: AfterCommit) -> None:
    """Run ``hook`` once the unit of work that owns ``session`` has committed.

    Used to enqueue background work and publish notifications only for changes that
    really happened; a rolled-back request runs none of its hooks.
    """
    session.info.setdefault("after_commit", []).append(hook)


async def run_after_commit(session: AsyncSession) -> None:
    hooks: list[AfterCommit] = session.info.pop("after_commit", [])
    for hook in hooks:
        await hook()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request unit of work: commit on success, roll back on any error."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.runtime.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException:
            session.info.pop("after_commit", None)
            await session.rollback()
            raise
        else:
            await session.commit()
            await run_after_commit(session)


# scope="function": commit before the response is sent, so a client never sees a success
# for a change that is not yet (or never) committed — e.g. a ledger transaction that the
# database's balance check rejects at commit.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
