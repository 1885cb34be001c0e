"""Alembic migrations of the control plane database, shipped inside the package.

``alembic.ini`` at the repository root points here for developers; ``alembic_config``
builds the same configuration programmatically, so `tesai migrate` works from any
directory of an installed package. The database URL comes from the argument or, when
absent, from ``Settings.database_url``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from tesai.db import asyncpg_url

SCRIPT_LOCATION = str(Path(__file__).resolve().parent)


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic configuration for this package's migrations.

    ``database_url`` travels in ``Config.attributes`` (not the ini parser, which would
    mangle ``%`` in passwords); ``env.py`` falls back to the settings when it is absent.
    """
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    """Upgrade the database to ``revision``. Blocking: from async code use a thread."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    """Downgrade the database to ``revision``. Blocking: from async code use a thread."""
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    """The newest revision shipped with this package."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(database_url: str) -> str | None:
    """The revision the database is at (``None`` when it was never migrated)."""
    engine = create_async_engine(asyncpg_url(database_url))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
            )
    finally:
        await engine.dispose()
