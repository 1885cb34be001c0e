"""Incremental rollups: raw rows → the additive tables of ``tesai.analytics.models``.

Each raw source is read by its primary key from a watermark (``analytics_watermarks``),
never rescanned: a run takes the rows with ``id > last_id`` in batches, adds their
contribution to the hourly and daily rows with ``INSERT … ON CONFLICT DO UPDATE`` (upsert by
period key) and moves the watermark, all in one transaction, so a crash or a second run
counts nothing twice and a re-run over the same window leaves the same rows.

A batch ends before the first row that is not final yet: a usage bucket whose minute has not
closed ``grace_s`` ago (metering still adds seconds to it), or an event or posting stamped
less than ``grace_s`` ago (its transaction may still be committing rows with lower ids).
Runs of one source are serialised by a transaction-level advisory lock; a run that finds it
taken skips that source (another worker is on it).

Sources: ``usage`` (usage_buckets: rented unit-seconds, price histogram, per-device rented
time), ``uptime`` (device_uptime_minutes: supply, per-device uptime), ``device_events``
(faults), ``cluster_events`` (outcomes), ``ledger`` (ledger_postings: revenue, fees,
provider earnings). Device attributes (model, region, unit count, provider) are read at
rollup time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tesai.devices.liveness import ANNOUNCED_STOPS
from tesai.kit.time import utcnow

log = structlog.get_logger(__name__)

GRAINS = ("hour", "day")
DEFAULT_GRACE_S = 180.0
DEFAULT_BATCH = 200_000
SETTLE_KINDS = ("settle", "settle_batch")
PRICE_BUCKET_BASE = 1.02

_MODEL = "coalesce(d.gpu_model, 'cpu')"
ALL_REGIONS = "*"
"""``analytics_prices`` keeps each histogram twice: per region and summed over all regions
(``region = '*'``), so the price index of a model reads a sixth of the rows."""
_REGION = "CASE WHEN d.region IS NULL OR d.region = '*' THEN 'unknown' ELSE d.region END"
_UNITS = "greatest(d.gpu_count, 1)"
_G = "CAST(:grain AS text)"


@dataclass(frozen=True)
class Source:
    """One raw table: how to find its rows and the instant after which a row is final."""

    name: str
    table: str
    from_sql: str
    final_at_sql: str


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("usage", "usage_buckets", "usage_buckets s", "s.minute + interval '1 minute'"),
        Source(
            "uptime", "device_uptime_minutes", "device_uptime_minutes s",
            "s.minute + interval '1 minute'",
        ),
        Source("device_events", "device_events", "device_events s", "s.at"),
        Source("cluster_events", "cluster_events", "cluster_events s", "s.at"),
        Source(
            "ledger", "ledger_postings",
            "ledger_postings s JOIN ledger_transactions t ON t.id = s.transaction_id",
            "t.created_at",
        ),
    )
}  # fmt: skip


def _add(table: str, key: str, cols: list[str]) -> str:
    sets = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in cols)
    return f"ON CONFLICT ({key}) DO UPDATE SET {sets}"


_MARKET_KEY = "grain, start, gpu_model, region"

# Each statement reads the batch ``:lo < s.id <= :hi``; grain statements run once per grain.
_USAGE_BATCH = f"""
CREATE TEMP TABLE analytics_usage_batch ON COMMIT DROP AS
SELECT s.minute, s.device_id, s.seconds, s.amount_micro,
       s.seconds * {_UNITS} AS gpu_s,
       floor(ln(greatest(s.price_per_hour_micro / {_UNITS}, 1)) / ln({PRICE_BUCKET_BASE}))
         AS bucket,
       {_MODEL} AS gpu_model, {_REGION} AS region, d.provider_id
FROM usage_buckets s JOIN devices d ON d.id = s.device_id
WHERE s.id > :lo AND s.id <= :hi"""  # noqa: S608

_USAGE_MARKET = f"""
INSERT INTO analytics_market (grain, start, gpu_model, region, up_device_s, up_gpu_s,
                              rented_gpu_s, provider_micro, faults)
SELECT {_G}, date_trunc({_G}, minute, 'UTC'), gpu_model, region, 0, 0,
       sum(gpu_s), sum(amount_micro), 0
FROM analytics_usage_batch GROUP BY 2, 3, 4
{_add("analytics_market", _MARKET_KEY, ["rented_gpu_s", "provider_micro"])}"""  # noqa: S608

_USAGE_PRICES = f"""
INSERT INTO analytics_prices (grain, start, gpu_model, region, bucket, gpu_s)
SELECT {_G}, date_trunc({_G}, minute, 'UTC'), gpu_model, coalesce(region, '{ALL_REGIONS}'),
       bucket, sum(gpu_s)
FROM analytics_usage_batch
GROUP BY GROUPING SETS ((date_trunc({_G}, minute, 'UTC'), gpu_model, region, bucket),
                        (date_trunc({_G}, minute, 'UTC'), gpu_model, bucket))
{_add("analytics_prices", "grain, start, gpu_model, region, bucket", ["gpu_s"])}"""  # noqa: S608

_USAGE_DEVICES = f"""
INSERT INTO analytics_device_daily (day, device_id, provider_id, up_s, rented_s, faults,
                                    faults_rented)
SELECT date_trunc('day', minute, 'UTC'), device_id, provider_id, 0, sum(seconds), 0, 0
FROM analytics_usage_batch GROUP BY 1, 2, 3
{_add("analytics_device_daily", "day, device_id", ["rented_s"])}"""  # noqa: S608

_UPTIME_MARKET = f"""
INSERT INTO analytics_market (grain, start, gpu_model, region, up_device_s, up_gpu_s,
                              rented_gpu_s, provider_micro, faults)
SELECT {_G}, date_trunc({_G}, s.minute, 'UTC'), {_MODEL}, {_REGION},
       sum(s.seconds_up), sum(s.seconds_up * {_UNITS}), 0, 0, 0
FROM device_uptime_minutes s JOIN devices d ON d.id = s.device_id
WHERE s.id > :lo AND s.id <= :hi AND d.verified_at IS NOT NULL
GROUP BY 2, 3, 4
{_add("analytics_market", _MARKET_KEY, ["up_device_s", "up_gpu_s"])}"""  # noqa: S608

_UPTIME_DEVICES = f"""
INSERT INTO analytics_device_daily (day, device_id, provider_id, up_s, rented_s, faults,
                                    faults_rented)
SELECT date_trunc('day', s.minute, 'UTC'), s.device_id, d.provider_id, sum(s.seconds_up), 0,
       0, 0
FROM device_uptime_minutes s JOIN devices d ON d.id = s.device_id
WHERE s.id > :lo AND s.id <= :hi
GROUP BY 1, 2, 3
{_add("analytics_device_daily", "day, device_id", ["up_s"])}"""  # noqa: S608

# A stop the device's agent announced (drained, Ctrl-C) is not a fault: the same rule as the
# reliability score (``devices.liveness.rented_failures``).
_ANNOUNCED = ", ".join(f"'{reason}'" for reason in sorted(ANNOUNCED_STOPS))
_FAULT = (
    "s.to_status = 'offline' AND s.from_status IN ('online', 'busy') "
    f"AND s.reason NOT IN ({_ANNOUNCED})"
)

_FAULTS_MARKET = f"""
INSERT INTO analytics_market (grain, start, gpu_model, region, up_device_s, up_gpu_s,
                              rented_gpu_s, provider_micro, faults)
SELECT {_G}, date_trunc({_G}, s.at, 'UTC'), {_MODEL}, {_REGION}, 0, 0, 0, 0, count(*)
FROM device_events s JOIN devices d ON d.id = s.device_id
WHERE s.id > :lo AND s.id <= :hi AND {_FAULT}
GROUP BY 2, 3, 4
{_add("analytics_market", _MARKET_KEY, ["faults"])}"""  # noqa: S608

_FAULTS_DEVICES = f"""
INSERT INTO analytics_device_daily (day, device_id, provider_id, up_s, rented_s, faults,
                                    faults_rented)
SELECT date_trunc('day', s.at, 'UTC'), s.device_id, d.provider_id, 0, 0, count(*),
       count(*) FILTER (WHERE s.from_status = 'busy')
FROM device_events s JOIN devices d ON d.id = s.device_id
WHERE s.id > :lo AND s.id <= :hi AND {_FAULT}
GROUP BY 1, 2, 3
{_add("analytics_device_daily", "day, device_id", ["faults", "faults_rented"])}"""  # noqa: S608

OUTCOME_SQL = """CASE
  WHEN s.to_status = 'terminated' THEN 'completed'
  WHEN s.to_status = 'failed' THEN 'failed'
  WHEN s.from_status = 'degraded' AND s.to_status = 'running' THEN 'self_healed'
  WHEN s.to_status = 'degraded' THEN 'degraded'
  WHEN s.to_status = 'running' THEN 'started'
END"""
"""Cluster events that count as an outcome; any other event is not counted."""

_OUTCOMES = f"""
INSERT INTO analytics_cluster_outcomes (grain, start, gpu_model, outcome, clusters)
SELECT {_G}, date_trunc({_G}, s.at, 'UTC'), coalesce(c.gpu_model, 'cpu'), {OUTCOME_SQL},
       count(*)
FROM cluster_events s JOIN clusters c ON c.id = s.cluster_id
WHERE s.id > :lo AND s.id <= :hi AND ({OUTCOME_SQL}) IS NOT NULL
GROUP BY 2, 3, 4
{_add("analytics_cluster_outcomes", "grain, start, gpu_model, outcome", ["clusters"])}"""  # noqa: S608

_LEDGER = f"""
INSERT INTO analytics_ledger (grain, start, tx_kind, account_kind, credit_micro, debit_micro,
                              postings)
SELECT {_G}, date_trunc({_G}, t.created_at, 'UTC'), t.kind, a.kind,
       sum(greatest(s.amount, 0)), sum(greatest(-s.amount, 0)), count(*)
FROM ledger_postings s JOIN ledger_transactions t ON t.id = s.transaction_id
     JOIN ledger_accounts a ON a.id = s.account_id
WHERE s.id > :lo AND s.id <= :hi
GROUP BY 2, 3, 4
{_add("analytics_ledger", "grain, start, tx_kind, account_kind",
      ["credit_micro", "debit_micro", "postings"])}"""  # noqa: S608  # fmt: skip

_EARNINGS = f"""
INSERT INTO analytics_provider_daily (day, provider_id, earned_micro)
SELECT date_trunc('day', t.created_at, 'UTC'), a.owner_user_id, sum(s.amount)
FROM ledger_postings s JOIN ledger_transactions t ON t.id = s.transaction_id
     JOIN ledger_accounts a ON a.id = s.account_id
WHERE s.id > :lo AND s.id <= :hi AND a.kind = 'provider_earnings'
  AND t.kind IN {SETTLE_KINDS} AND a.owner_user_id IS NOT NULL
GROUP BY 1, 2
{_add("analytics_provider_daily", "day, provider_id", ["earned_micro"])}"""  # noqa: S608

_STEPS: dict[str, tuple[list[str], list[str]]] = {
    # source: (statements run once per grain, statements run once)
    "usage": ([_USAGE_MARKET, _USAGE_PRICES], [_USAGE_DEVICES]),
    "uptime": ([_UPTIME_MARKET], [_UPTIME_DEVICES]),
    "device_events": ([_FAULTS_MARKET], [_FAULTS_DEVICES]),
    "cluster_events": ([_OUTCOMES], []),
    "ledger": ([_LEDGER], [_EARNINGS]),
}


@dataclass
class RollupResult:
    """Raw rows taken per source in one run."""

    rows: dict[str, int]
    skipped: list[str]

    @property
    def total(self) -> int:
        return sum(self.rows.values())


async def _batch_end(
    session: AsyncSession, source: Source, last_id: int, cutoff: datetime, batch: int
) -> tuple[int, int]:
    """(highest id of the next batch, rows in it): stops before the first non-final row."""
    row = (
        await session.execute(
            text(
                f"""
WITH cand AS (
  SELECT s.id, {source.final_at_sql} AS final_at FROM {source.from_sql}
  WHERE s.id > :wm ORDER BY s.id LIMIT :batch
)
SELECT (SELECT min(id) FROM cand WHERE final_at > :cutoff),
       (SELECT max(id) FROM cand)"""  # noqa: S608
            ),
            {"wm": last_id, "batch": batch, "cutoff": cutoff},
        )
    ).one()
    stop, top = row
    hi = int(stop) - 1 if stop is not None else (int(top) if top is not None else last_id)
    if hi <= last_id:
        return last_id, 0
    n = await session.scalar(
        text(f"SELECT count(*) FROM {source.table} s WHERE s.id > :lo AND s.id <= :hi"),  # noqa: S608
        {"lo": last_id, "hi": hi},
    )
    return hi, int(n or 0)


async def _roll_batch(session: AsyncSession, source: Source, cutoff: datetime, batch: int) -> int:
    """One batch of one source in the caller's transaction; returns raw rows taken."""
    await session.execute(
        text("INSERT INTO analytics_watermarks (source, last_id, rows) VALUES (:s, 0, 0) "
             "ON CONFLICT (source) DO NOTHING"),
        {"s": source.name},
    )  # fmt: skip
    last_id = int(
        await session.scalar(
            text("SELECT last_id FROM analytics_watermarks WHERE source = :s FOR UPDATE"),
            {"s": source.name},
        )
        or 0
    )
    hi, n = await _batch_end(session, source, last_id, cutoff, batch)
    if n == 0 and hi == last_id:
        return 0
    bounds = {"lo": last_id, "hi": hi}
    per_grain, once = _STEPS[source.name]
    if source.name == "usage":
        await session.execute(text(_USAGE_BATCH), bounds)
    for stmt in per_grain:
        for grain in GRAINS:
            await session.execute(text(stmt), bounds | {"grain": grain})
    for stmt in once:
        await session.execute(text(stmt), bounds)
    if source.name == "usage":
        await session.execute(text("DROP TABLE analytics_usage_batch"))
    await session.execute(
        text("UPDATE analytics_watermarks SET last_id = :hi, rows = rows + :n, "
             "updated_at = now() WHERE source = :s"),
        {"hi": hi, "n": n, "s": source.name},
    )  # fmt: skip
    return n


async def rollup(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    batch: int = DEFAULT_BATCH,
    sources: tuple[str, ...] | None = None,
) -> RollupResult:
    """Roll every source up to its final rows; returns the raw rows taken per source."""
    cutoff = (now or utcnow()) - timedelta(seconds=grace_s)
    result = RollupResult(rows={}, skipped=[])
    for name in sources or tuple(SOURCES):
        source = SOURCES[name]
        taken = 0
        while True:
            async with sessionmaker() as session, session.begin():
                locked = await session.scalar(
                    text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"),
                    {"k": f"tesai.analytics.{name}"},
                )
                if not locked:
                    result.skipped.append(name)
                    break
                n = await _roll_batch(session, source, cutoff, batch)
            taken += n
            if n == 0:
                break
        result.rows[name] = taken
    if result.total:
        log.info("analytics_rollup", rows=result.rows, skipped=result.skipped)
    return result
