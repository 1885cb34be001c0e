"""Alembic environment: async engine (asyncpg), metadata from ``tesai.models``.

The URL comes from, in order: ``Config.attributes["database_url"]`` (programmatic use),
``-x url=...`` on the alembic command line, ``sqlalchemy.url`` in the ini file, and
``Settings.database_url`` (``TESAI_DATABASE_URL``).

``-x extra_ddl=true`` (used by ``scripts/regen_initial_migration.sh``) makes autogenerate
also write ``tesai.dbextras.EXTRA_DDL`` into the new revision as literal ``op.execute``
statements, and the matching clean-up (functions, enum types) into its downgrade, so the
revision stays frozen when EXTRA_DDL changes later.
"""

from __future__ import annotations

import asyncio
import re
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops
from sqlalchemy import Enum, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from tesai.db import asyncpg_url
from tesai.models import metadata

config = context.config
if config.config_file_name is not None and config.file_config.has_section("loggers"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

_CREATED_FUNCTION = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE)\s+([\w.\"]+)", re.IGNORECASE
)


def _database_url() -> str:
    url = (
        config.attributes.get("database_url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        from tesai.settings import get_settings

        url = get_settings().database_url
    if not url:
        raise SystemExit(
            "no database: set TESAI_DATABASE_URL (or use `tesai migrate`, which starts the "
            "embedded PostgreSQL when no URL is configured)"
        )
    return asyncpg_url(str(url))


def _render_sql(autogen_context: AutogenContext, op: ops.ExecuteSQLOp) -> str:
    """Render raw SQL as a readable triple-quoted block when that is lossless."""
    sql = op.sqltext
    if not isinstance(sql, str):
        raise NotImplementedError("only plain SQL strings can be rendered")
    if '"""' in sql or "\\" in sql or sql.endswith('"'):
        return f"op.execute({sql!r})"
    return f'op.execute(\n    """\n{sql.strip()}\n"""\n)'


def _add_database_extras(
    migration_context: Any, revision: Any, directives: list[ops.MigrationScript]
) -> None:
    from tesai.dbextras import EXTRA_DDL

    script = directives[0]
    upgrade_ops = script.upgrade_ops
    downgrade_ops = script.downgrade_ops
    assert upgrade_ops is not None
    assert downgrade_ops is not None
    upgrade_ops.ops.extend(ops.ExecuteSQLOp(ddl) for ddl in EXTRA_DDL)
    # Dropping the tables drops their triggers, not the functions and enum types.
    for ddl in EXTRA_DDL:
        for kind, name in _CREATED_FUNCTION.findall(ddl):
            downgrade_ops.ops.append(ops.ExecuteSQLOp(f"DROP {kind.upper()} IF EXISTS {name}"))
    enums = sorted(
        {
            str(col.type.name)
            for table in metadata.tables.values()
            for col in table.columns
            if isinstance(col.type, Enum) and col.type.native_enum and col.type.name
        }
    )
    downgrade_ops.ops.extend(ops.ExecuteSQLOp(f'DROP TYPE IF EXISTS "{n}"') for n in enums)


def _configure(connection: Connection) -> None:
    extras = context.get_x_argument(as_dictionary=True).get("extra_ddl") == "true"
    if extras:
        renderers.dispatch_for(ops.ExecuteSQLOp, replace=True)(_render_sql)
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=True,
        process_revision_directives=_add_database_extras if extras else None,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_online() -> None:
    shared: Connection | None = config.attributes.get("connection")
    if shared is not None:
        _run(shared)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_online()
