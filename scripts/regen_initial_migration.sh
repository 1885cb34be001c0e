#!/usr/bin/env bash
# Regenerate src/tesai/migrations/versions/0001_initial.py from the current models.
#
# Creates a scratch database on the test PostgreSQL server (TESAI_TEST_DATABASE_URL,
# default postgresql://postgres@127.0.0.1:5432/test), autogenerates revision 0001 against it
# with tesai.dbextras.EXTRA_DDL appended as op.execute statements, formats it, and drops the
# scratch database. Only for the initial revision, before any deployment applied it: later
# schema changes get new revisions (`alembic revision --autogenerate -m ...`).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
SERVER_URL="${TESAI_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test}"
SCRATCH="tesai_migration_scratch_$$"
SCRATCH_URL="${SERVER_URL%/*}/${SCRATCH}"
VERSIONS=src/tesai/migrations/versions

admin() {
  "$BIN/python" - "$SERVER_URL" "$1" <<'PY'
import asyncio, sys
import asyncpg
from tesai.db import asyncpg_url

async def main(url: str, sql: str) -> None:
    conn = await asyncpg.connect(asyncpg_url(url).replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
PY
}

admin "CREATE DATABASE \"$SCRATCH\""
trap 'admin "DROP DATABASE IF EXISTS \"$SCRATCH\" WITH (FORCE)"' EXIT

rm -f "$VERSIONS"/0001_*.py
"$BIN/alembic" -x "url=$SCRATCH_URL" -x extra_ddl=true \
  revision --autogenerate --rev-id 0001 -m initial
"$BIN/ruff" check --fix --quiet "$VERSIONS"/0001_initial.py
"$BIN/ruff" format --quiet "$VERSIONS"/0001_initial.py
echo "wrote $VERSIONS/0001_initial.py"
