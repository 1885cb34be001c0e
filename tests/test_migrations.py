"""The migrations build exactly the schema the models describe, triggers included.

When this fails after a model change, regenerate the initial revision
(``scripts/regen_initial_migration.sh``) or, once a deployment applied it, add a revision.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from tesai import migrations
from tesai.db import asyncpg_url
from tesai.dbextras import EXTRA_DDL
from tesai.models import metadata
from tests.conftest import TEST_DATABASE_URL

CREATED = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?(TRIGGER|FUNCTION)\s+([\w\"]+)",
    re.IGNORECASE,
)
EXPECTED = {
    (kind.upper(), name.strip('"')) for ddl in EXTRA_DDL for kind, name in CREATED.findall(ddl)
}


def _dsn(url: str) -> str:
    return asyncpg_url(url).replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    name = f"tesai_migrations_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(_dsn(TEST_DATABASE_URL))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield TEST_DATABASE_URL.rpartition("/")[0] + "/" + name
    admin = await asyncpg.connect(_dsn(TEST_DATABASE_URL))
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def _drift(url: str) -> list[Any]:
    engine = create_async_engine(asyncpg_url(url))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(
                        c, opts={"compare_type": True, "compare_server_default": True}
                    ),
                    metadata,
                )
            )
    finally:
        await engine.dispose()


async def _database_objects(url: str) -> tuple[set[str], set[tuple[str, str]]]:
    conn = await asyncpg.connect(_dsn(url))
    try:
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        triggers = {
            ("TRIGGER", r["tgname"])
            for r in await conn.fetch("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
        }
        functions = {
            ("FUNCTION", r["proname"])
            for r in await conn.fetch(
                "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'public'"
            )
        }
    finally:
        await conn.close()
    return tables, triggers | functions


async def test_upgrade_matches_models_and_installs_extras(empty_database: str) -> None:
    await asyncio.to_thread(migrations.upgrade, empty_database)

    assert await _drift(empty_database) == [], "models and migrations differ"
    tables, objects = await _database_objects(empty_database)
    assert set(metadata.tables) <= tables
    assert objects == EXPECTED, "tesai.dbextras.EXTRA_DDL and the migration differ"
    assert await migrations.current_revision(empty_database) == migrations.head_revision()


async def test_downgrade_to_base_and_up_again(empty_database: str) -> None:
    await asyncio.to_thread(migrations.upgrade, empty_database)
    await asyncio.to_thread(migrations.downgrade, empty_database, "base")

    tables, objects = await _database_objects(empty_database)
    assert tables <= {"alembic_version"}
    assert objects == set()
    assert await migrations.current_revision(empty_database) is None

    await asyncio.to_thread(migrations.upgrade, empty_database)
    assert await _drift(empty_database) == []


def test_migrate_command_upgrades_the_configured_database(
    empty_database: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESAI_")}
    env["TESAI_DATABASE_URL"] = empty_database
    done = subprocess.run(
        [str(Path(sys.executable).with_name("tesai")), "migrate"],
        env=env,
        cwd=tmp_path,  # works from any directory: the scripts ship in the package
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"database at revision {migrations.head_revision()}" in done.stdout
