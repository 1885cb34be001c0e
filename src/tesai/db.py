"""Database engine, sessions and the request unit of work.

PostgreSQL is the only dialect. Services receive an ``AsyncSession`` and ``flush``; the
request boundary (``get_session``) commits when the handler returns and rolls back when it
raises, so a failed request changes nothing. Background work enqueued by a request is sent
only after that commit (see ``tesai.tasks.enqueue_after_commit``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, ClassVar, cast

import orjson
from fastapi import Depends, Request
from sqlalchemy import JSON, DateTime, Enum, MetaData, String, Table, func, text
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


async def insert_rows(
    session: AsyncSession, model: type[Base], rows: Sequence[Mapping[str, Any]]
) -> None:
    """INSERT ``rows`` (each naming the same columns) as ONE statement whatever their
    number: ``INSERT … SELECT FROM unnest(one array per column)``, prepared once per shape.

    An executemany costs the database one execution per row (and SQLAlchemy a parameter
    set per row); this costs one. Columns left out take their Python default (an id) or
    their server default.
    """
    if not rows:
        return
    table = cast(Table, model.__table__)
    given = tuple(rows[0])
    if any(len(r) != len(given) or any(k not in r for k in given) for r in rows):
        raise ValueError(f"insert_rows into {table.name}: rows name different columns")
    extra = tuple(
        c.key
        for c in table.columns
        if c.key not in given
        and c.default is not None
        and (c.default.is_scalar or c.default.is_callable)
    )
    statement, binds = _unnest_insert(table, given + extra, session.get_bind().dialect)
    params: dict[str, list[Any]] = {}
    for i, name in enumerate(given + extra):
        bind = binds[i]
        if name in given:
            values = [r[name] for r in rows]
        else:
            default = table.columns[name].default
            assert default is not None
            values = [
                default.arg(None) if default.is_callable else default.arg  # type: ignore[attr-defined]
                for _ in rows
            ]
        params[f"c{i}"] = values if bind is None else [bind(v) for v in values]
    await session.execute(statement, params)


_UNNEST_INSERTS: dict[tuple[str, tuple[str, ...]], tuple[Any, list[Any]]] = {}


def _unnest_insert(
    table: Table, names: tuple[str, ...], dialect: Any
) -> tuple[Any, list[Callable[[Any], Any] | None]]:
    """The statement of ``insert_rows`` and each column's value conversion (enums to their
    database labels, JSON to text)."""
    key = (table.name, names)
    if key not in _UNNEST_INSERTS:
        arrays, selected, binds = [], [], []
        for i, name in enumerate(names):
            column = table.columns[name]
            sql_type = column.type.compile(dialect=dialect)
            bind: Callable[[Any], Any] | None = None
            if isinstance(column.type, JSON):
                arrays.append(f"CAST(:c{i} AS text[])")
                selected.append(f"CAST(u.c{i} AS {sql_type})")
                bind = _json_dumps
            elif isinstance(column.type, Enum):
                arrays.append(f"CAST(:c{i} AS text[])")
                selected.append(f"CAST(u.c{i} AS {sql_type})")
                bind = column.type.bind_processor(dialect)  # type: ignore[no-untyped-call]
            elif isinstance(column.type, String):
                # text, not varchar(n): an explicit cast would cut a long value, the
                # assignment to the column refuses it.
                arrays.append(f"CAST(:c{i} AS text[])")
                selected.append(f"u.c{i}")
            else:
                arrays.append(f"CAST(:c{i} AS {sql_type}[])")
                selected.append(f"u.c{i}")
            binds.append(bind)
        columns = ", ".join(f'"{n}"' for n in names)
        aliases = ", ".join(f"c{i}" for i in range(len(names)))
        sql = (  # names and types from the table's definition, never from input
            f'INSERT INTO "{table.name}" ({columns}) SELECT {", ".join(selected)}'  # noqa: S608
            f" FROM unnest({', '.join(arrays)}) AS u({aliases})"
        )
        _UNNEST_INSERTS[key] = (text(sql), binds)
    return _UNNEST_INSERTS[key]


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
        json_serializer=_json_dumps,
    )


def _json_dumps(value: Any) -> str:
    """JSON for JSONB columns: orjson (several times faster than the standard library), with
    the standard library's handling of non-string keys."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


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
