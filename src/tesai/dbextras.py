"""Database objects that SQLAlchemy models cannot express (triggers, functions).

Each domain that needs one adds its DDL here; the migration that creates the tables runs
``install_database_extras`` too, and tests call it after ``create_all``.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

EXTRA_DDL: list[str] = []


async def install_database_extras(conn: AsyncConnection) -> None:
    for ddl in EXTRA_DDL:
        await conn.execute(text(ddl))


# --- ledger (tesai.billing) ------------------------------------------------------------
# The database, not only Python, keeps the ledger sound:
# - balances follow postings (statement trigger over the inserted rows, one UPDATE per
#   statement) and may not be written any other way;
# - a posting names an existing account and a ledger transaction of its own database
#   transaction: checked once per statement by the same trigger (instead of a foreign-key
#   lookup per row), and accounts, like transactions, are never deleted;
# - accounts without allow_negative never go below zero (CHECK on ledger_accounts);
# - every ledger transaction's postings sum to zero at commit (deferred constraint trigger,
#   one check per ledger transaction), and postings may only be added in the database
#   transaction that created their ledger transaction, so a balanced one cannot be changed;
# - postings and ledger transactions are append-only.
EXTRA_DDL += [
    """
CREATE OR REPLACE FUNCTION ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ledger rows are append-only (% on %)', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'P0001';
END $$
""",
    "DROP TRIGGER IF EXISTS ledger_postings_append_only ON ledger_postings",
    """
CREATE TRIGGER ledger_postings_append_only BEFORE UPDATE OR DELETE ON ledger_postings
FOR EACH ROW EXECUTE FUNCTION ledger_reject_change()
""",
    "DROP TRIGGER IF EXISTS ledger_accounts_kept ON ledger_accounts",
    """
CREATE TRIGGER ledger_accounts_kept BEFORE DELETE ON ledger_accounts
FOR EACH ROW EXECUTE FUNCTION ledger_reject_change()
""",
    "DROP TRIGGER IF EXISTS ledger_transactions_append_only ON ledger_transactions",
    """
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
FOR EACH ROW EXECUTE FUNCTION ledger_reject_change()
""",
    """
CREATE OR REPLACE FUNCTION ledger_stamp_xact() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.db_xact := txid_current();
  RETURN NEW;
END $$
""",
    "DROP TRIGGER IF EXISTS ledger_transactions_stamp ON ledger_transactions",
    """
CREATE TRIGGER ledger_transactions_stamp BEFORE INSERT ON ledger_transactions
FOR EACH ROW EXECUTE FUNCTION ledger_stamp_xact()
""",
    """
CREATE OR REPLACE FUNCTION ledger_apply_postings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE accounts bigint; applied bigint;
BEGIN
  IF EXISTS (
    SELECT 1 FROM (SELECT DISTINCT transaction_id FROM new_postings) p
    LEFT JOIN ledger_transactions t ON t.id = p.transaction_id
    WHERE t.db_xact IS DISTINCT FROM txid_current()
  ) THEN
    RAISE EXCEPTION 'postings may only be added with their own ledger transaction'
      USING ERRCODE = '23514';
  END IF;
  WITH d AS (
    SELECT account_id, sum(amount) AS total FROM new_postings GROUP BY account_id
  ), u AS (
    UPDATE ledger_accounts a SET balance = a.balance + d.total FROM d
    WHERE a.id = d.account_id RETURNING 1
  )
  SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM u) INTO accounts, applied;
  IF applied <> accounts THEN
    RAISE EXCEPTION 'a posting names a ledger account that does not exist'
      USING ERRCODE = '23503';
  END IF;
  RETURN NULL;
END $$
""",
    "DROP TRIGGER IF EXISTS ledger_postings_apply ON ledger_postings",
    """
CREATE TRIGGER ledger_postings_apply AFTER INSERT ON ledger_postings
REFERENCING NEW TABLE AS new_postings
FOR EACH STATEMENT EXECUTE FUNCTION ledger_apply_postings()
""",
    """
CREATE OR REPLACE FUNCTION ledger_guard_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ledger balances change only through postings' USING ERRCODE = 'P0001';
END $$
""",
    "DROP TRIGGER IF EXISTS ledger_accounts_balance_guard ON ledger_accounts",
    """
CREATE TRIGGER ledger_accounts_balance_guard BEFORE UPDATE OF balance ON ledger_accounts
FOR EACH ROW WHEN (pg_trigger_depth() = 0 AND OLD.balance IS DISTINCT FROM NEW.balance)
EXECUTE FUNCTION ledger_guard_balance()
""",
    """
CREATE OR REPLACE FUNCTION ledger_guard_initial_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.balance <> 0 THEN
    RAISE EXCEPTION 'a ledger account starts at zero' USING ERRCODE = '23514';
  END IF;
  RETURN NEW;
END $$
""",
    "DROP TRIGGER IF EXISTS ledger_accounts_start_at_zero ON ledger_accounts",
    """
CREATE TRIGGER ledger_accounts_start_at_zero BEFORE INSERT ON ledger_accounts
FOR EACH ROW EXECUTE FUNCTION ledger_guard_initial_balance()
""",
    """
CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE total numeric;
BEGIN
  SELECT coalesce(sum(amount), 0) INTO total FROM ledger_postings
  WHERE transaction_id = NEW.id;
  IF total <> 0 THEN
    RAISE EXCEPTION 'ledger transaction % does not balance (sum %)', NEW.id, total
      USING ERRCODE = '23514';
  END IF;
  RETURN NULL;
END $$
""",
    "DROP TRIGGER IF EXISTS ledger_transactions_balanced ON ledger_transactions",
    """
CREATE CONSTRAINT TRIGGER ledger_transactions_balanced AFTER INSERT ON ledger_transactions
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced()
""",
]

# The metering tick rewrites every running node's meter and the balance of every hold and
# provider it settles: room on each page lets those updates be HOT (no index writes).
# Buckets are written once, so their pages are filled.
EXTRA_DDL += [
    "ALTER TABLE billing_node_meters SET (fillfactor = 50)",
    "ALTER TABLE ledger_accounts SET (fillfactor = 50)",
]

# --- placement pool (tesai.clusters.pool) -----------------------------------------------
# Every change to what placement reads of a device stamps the row with the writing database
# transaction (``devices.change_xact``), whoever writes it; each API process's placement index
# reads the rows stamped at or after its watermark (the snapshot's xmin) instead of the pool.
EXTRA_DDL += [
    """
CREATE OR REPLACE FUNCTION devices_stamp_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR (NEW.status, NEW.gpu_model, NEW.gpu_count, NEW.vram_bytes_per_gpu,
      NEW.region, NEW.country, NEW.connectivity_tier, NEW.price_per_gpu_hour_micro,
      NEW.reliability, NEW.verified_score)
    IS DISTINCT FROM (OLD.status, OLD.gpu_model, OLD.gpu_count, OLD.vram_bytes_per_gpu,
      OLD.region, OLD.country, OLD.connectivity_tier, OLD.price_per_gpu_hour_micro,
      OLD.reliability, OLD.verified_score) THEN
    NEW.change_xact := txid_current();
  END IF;
  RETURN NEW;
END $$
""",
    "DROP TRIGGER IF EXISTS devices_stamp_change ON devices",
    """
CREATE TRIGGER devices_stamp_change BEFORE INSERT OR UPDATE ON devices
FOR EACH ROW EXECUTE FUNCTION devices_stamp_change()
""",
]
