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
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from tesai import migrations
from tesai.accounts import service as accounts
from tesai.billing import holds, metering, service
from tesai.billing.models import HoldTotals
from tesai.db import asyncpg_url
from tesai.dbextras import EXTRA_DDL
from tesai.models import metadata
from tesai.runtime import open_runtime
from tesai.settings import Settings
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


# --- upgrading a database that holds data ------------------------------------------------
#
# The rows are made by today's services (a customer's credit and hold, a metered and settled
# node), then the database is taken down to the initial revision and up to head again, as a
# deployment that ran the first release and upgrades would be. What the first release had
# must survive; what later revisions add is filled from it.

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
PRICE = 3_600_000
INITIAL = "0001"


async def _make_data(url: str, tmp_home: str) -> dict[str, object]:
    settings = Settings(environment="test", database_url=url, redis_url=None, home=tmp_home)
    runtime = await open_runtime(settings, run_periodic=False)
    try:
        async with runtime.sessionmaker() as s, s.begin():
            customer = await accounts.create_user(
                s, email=f"c-{secrets.token_hex(4)}@example.com", roles=("customer",)
            )
            provider = await accounts.create_user(
                s, email=f"p-{secrets.token_hex(4)}@example.com", roles=("provider",)
            )
            cluster, node = uuid.uuid4(), uuid.uuid4()
            await service.admin_grant_credit(
                s,
                admin_user_id=None,
                user_id=customer.id,
                amount_micro=10_000_000,
                reason="t",
                idempotency_key=f"g{cluster}",
            )
            await holds.place_cluster_hold(
                s,
                customer_user_id=customer.id,
                cluster_id=cluster,
                amount_micro=5_000_000,
                idempotency_key=f"h{cluster}",
            )
            await metering.start_meter(
                s,
                node_id=node,
                cluster_id=cluster,
                device_id=uuid.uuid4(),
                customer_user_id=customer.id,
                provider_user_id=provider.id,
                price_per_hour_micro=PRICE,
                started_at=T0,
            )
        for minute in range(1, 4):
            async with runtime.sessionmaker() as s, s.begin():
                await metering.meter_and_settle(
                    s,
                    now=T0 + timedelta(minutes=minute, seconds=5),
                    fee_bps=1000,
                    idempotency_key=f"tick-{minute}",
                )
        async with runtime.sessionmaker() as s:
            totals = [
                (t.hold_account_id, t.provider_micro, t.fee_micro)
                for t in (await s.scalars(select(HoldTotals))).all()
            ]
        return {"customer": customer.id, "totals": totals}
    finally:
        await runtime.close()


async def _fetch(url: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(_dsn(url))
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def test_upgrade_from_the_initial_revision_keeps_data_and_backfills(
    empty_database: str, tmp_path: Path
) -> None:
    url = empty_database
    await asyncio.to_thread(migrations.upgrade, url)
    made = await _make_data(url, str(tmp_path))
    assert made["totals"], "the settlement kept no running totals"
    ledger = "SELECT id, balance FROM ledger_accounts ORDER BY id"
    buckets = (
        "SELECT node_id, minute, seconds, amount_micro, settled FROM usage_buckets ORDER BY minute"
    )
    before = (await _fetch(url, ledger), await _fetch(url, buckets))
    assert len(before[1]) == 3

    await asyncio.to_thread(migrations.downgrade, url, INITIAL)
    assert await migrations.current_revision(url) == INITIAL
    await asyncio.to_thread(migrations.upgrade, url)

    assert await migrations.current_revision(url) == migrations.head_revision()
    assert await _drift(url) == []
    assert (await _fetch(url, ledger), await _fetch(url, buckets)) == before
    totals = await _fetch(
        url,
        "SELECT hold_account_id, provider_micro, fee_micro FROM billing_hold_totals "
        "ORDER BY hold_account_id",
    )
    assert totals == sorted(made["totals"])  # type: ignore[type-var]
    defaults = await _fetch(url, "SELECT count(*) FROM usage_buckets WHERE unpaid_micro <> 0")
    assert defaults == [(0,)]
