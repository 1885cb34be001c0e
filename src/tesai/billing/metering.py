"""Per-second metering into per-minute usage buckets, settled as the minutes close.

Set-based on purpose: one metering tick is ONE SQL statement whatever the number of nodes,
so 100,000 running nodes fit in a tick.

- ``start_meter`` / ``stop_meter``: a node starts or stops being billable.
- A node's meter holds its watermark (``metered_until``: time already accounted), its running
  total of billed seconds, and the minute in progress (``open_minute`` with its seconds and
  amount). A usage bucket is written once, when its minute is complete, never updated after
  (except to mark a bucket settled that could not be settled when written).
- ``meter_and_settle(now, ...)``: the metering tick. Every active node's healthy seconds
  since its watermark are accrued; each minute that closes becomes a bucket, and the closed
  minutes are settled in the same statement (holds → provider earnings + platform fees, ONE
  ledger transaction). Holds that cannot pay are reported; their buckets stay unsettled.
- ``meter_tick`` / ``meter_nodes``: the same accrual without settling (all nodes, or the
  listed ones: a node's last seconds before it stops); ``record_interval``: one node.
- ``settle_usage_batch(before)``: the sweep: buckets left unsettled (written by
  ``meter_nodes``/``stop_meter``, or of a hold that could not pay) in one ledger transaction.

Unhealthy nodes (offline per the control plane's heartbeats) get no usage for the interval:
their watermark moves on, so that time is never billed later either. A crash anywhere rolls
back the open database transaction: a committed tick is a moved watermark plus its buckets
and postings (replaying it adds nothing); a committed sweep is settled buckets.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.audit.service import record as audit
from tesai.billing import service
from tesai.billing.holds import cluster_hold_ref
from tesai.billing.ledger import account_id, checkpoint
from tesai.billing.models import NodeMeter, UsageBucket
from tesai.billing.money import customer_charge


def whole_second(t: datetime) -> datetime:
    return t.replace(microsecond=0)


async def start_meter(
    session: AsyncSession,
    *,
    node_id: uuid.UUID,
    cluster_id: uuid.UUID,
    device_id: uuid.UUID,
    customer_user_id: uuid.UUID,
    provider_user_id: uuid.UUID,
    price_per_hour_micro: int,
    started_at: datetime,
) -> NodeMeter:
    """Begin billing a node from ``started_at`` (idempotent per node)."""
    existing = await session.get(NodeMeter, node_id)
    if existing is not None:
        return existing
    meter = NodeMeter(
        node_id=node_id,
        cluster_id=cluster_id,
        device_id=device_id,
        hold_account_id=await account_id(
            session, service.held(customer_user_id, cluster_hold_ref(cluster_id))
        ),
        earnings_account_id=await account_id(session, service.earnings(provider_user_id)),
        price_per_hour_micro=price_per_hour_micro,
        metered_until=whole_second(started_at),
        billed_seconds=0,
        active=True,
    )
    session.add(meter)
    await session.flush()
    return meter


async def stop_meter(session: AsyncSession, node_id: uuid.UUID) -> None:
    """The node is no longer billable (left, replaced, cluster ended): its minute in
    progress is complete now and becomes an unsettled bucket (for the sweep)."""
    meter = await session.get(NodeMeter, node_id, with_for_update=True)
    if meter is None or not meter.active:
        return
    if meter.open_minute is not None and (meter.open_seconds or meter.open_amount):
        session.add(
            UsageBucket(
                cluster_id=meter.cluster_id,
                node_id=meter.node_id,
                device_id=meter.device_id,
                hold_account_id=meter.hold_account_id,
                earnings_account_id=meter.earnings_account_id,
                minute=meter.open_minute,
                seconds=meter.open_seconds,
                price_per_hour_micro=meter.price_per_hour_micro,
                amount_micro=meter.open_amount,
                settled=False,
            )
        )
    meter.active = False
    meter.open_minute, meter.open_seconds, meter.open_amount = None, 0, 0
    await session.flush()


async def record_interval(
    session: AsyncSession, node_id: uuid.UUID, start: datetime, end: datetime, *, healthy: bool
) -> int:
    """Account for ``[start, end)`` of one node; returns the seconds billed.

    Time before the node's watermark is ignored, so replaying an interval adds nothing; time
    between the watermark and ``start`` is skipped (not billed).
    """
    await meter_nodes(session, now=start, node_ids=[node_id], unhealthy=[node_id])
    billed = await meter_nodes(
        session, now=end, node_ids=[node_id], unhealthy=() if healthy else [node_id]
    )
    return billed.get(node_id, 0)


_NOW = "CAST(:now AS timestamptz)"
_CUR = "to_timestamp(:cur_s)"


def _accrue_sql(*, listed: bool) -> str:
    """The CTEs ``moved`` (the meters moved on to ``:now``, ONE update without a join) and
    ``done`` (their closed minutes: the buckets to write).

    Times are whole epoch seconds (``:now_s``, ``:cur_s`` = the start of ``:now``'s minute).
    For each active meter behind ``:now``, the healthy time from its watermark to ``:now``
    is cut at minute boundaries; a piece's amount uses cumulative rounding on the node's
    running total of billed seconds (see ``money.accrue``), so the amounts of all pieces add
    up to the rounded price of the total. The minute in progress stays on the meter; each
    closed minute adds the part carried on the meter and becomes a bucket. ``:bill`` false
    (or the node or its device listed unhealthy) moves the watermark without billing.

    The update keeps what it replaced (``metered_from``, ``prev_open_*``), so ``RETURNING``
    gives the interval it moved over and ``done`` is built from exactly those rows. A
    concurrent tick's committed move is re-checked by PostgreSQL before the update (the row
    is skipped, or moved on from the newer watermark), so two ticks never count a second
    twice.
    """
    only = "AND n.node_id = ANY(CAST(:nodes AS uuid[]))" if listed else ""
    healthy = (
        "(CAST(:bill AS boolean) AND NOT (n.node_id = ANY(CAST(:unhealthy AS uuid[]))"
        " OR n.device_id = ANY(CAST(:unhealthy_devices AS uuid[]))))"
    )
    wm = "CAST(floor(date_part('epoch', n.metered_until)) AS bigint)"  # the old watermark
    added = f"(CASE WHEN {healthy} THEN :now_s - {wm} ELSE 0 END)"
    open_healthy = f"(CASE WHEN {healthy} THEN :now_s - GREATEST({wm}, :cur_s) ELSE 0 END)"
    keep_s = f"(CASE WHEN n.open_minute = {_CUR} THEN n.open_seconds ELSE 0 END)"
    keep_a = f"(CASE WHEN n.open_minute = {_CUR} THEN n.open_amount ELSE 0 END)"
    was = "CAST(floor(date_part('epoch', n.metered_from)) AS bigint)"  # in RETURNING
    was_added = f"(CASE WHEN {healthy} THEN :now_s - {was} ELSE 0 END)"
    return f"""
moved AS (
  UPDATE billing_node_meters n
  SET metered_from = n.metered_until, prev_open_minute = n.open_minute,
      prev_open_seconds = n.open_seconds, prev_open_amount = n.open_amount,
      metered_until = {_NOW},
      billed_seconds = n.billed_seconds + {added},
      open_minute = CASE WHEN {open_healthy} + {keep_s} > 0 OR {keep_a} > 0 THEN {_CUR} END,
      open_seconds = {open_healthy} + {keep_s},
      open_amount = ((n.billed_seconds + {added}) * n.price_per_hour_micro) / 3600
        - ((n.billed_seconds + {added} - {open_healthy}) * n.price_per_hour_micro) / 3600
        + {keep_a}
  WHERE n.active AND n.metered_until < {_NOW} {only}
  RETURNING n.node_id, n.cluster_id, n.device_id, n.hold_account_id AS hold,
    n.earnings_account_id AS earn, n.price_per_hour_micro AS p, {healthy} AS healthy,
    {was} AS wm, n.billed_seconds - {was_added} AS b, {was_added} AS added,
    CAST(date_part('epoch', n.prev_open_minute) AS bigint) AS om,
    n.prev_open_seconds AS os, n.prev_open_amount AS oa,
    LEAST({was} - {was} % 60, CAST(date_part('epoch', n.prev_open_minute) AS bigint)) AS first
), {_pieces("one", "moved.first", "moved.first = :cur_s - 60")}, {
        _pieces(
            "many",
            "g",
            "moved.first < :cur_s - 60",
            "CROSS JOIN LATERAL generate_series(moved.first, CAST(:cur_s AS bigint) - 60, 60) AS g",
        )
    }, done AS (
  SELECT * FROM one UNION ALL SELECT * FROM many
)"""  # noqa: S608


def _pieces(name: str, minute: str, where: str, series: str = "") -> str:
    """CTE ``name``: the closed minutes ``minute`` (epoch seconds) of the moved meters as
    buckets to write. Most ticks close exactly one minute per node (``one``, no set-returning
    function); a longer gap closes several (``many``)."""
    return f"""{name} AS (
  SELECT moved.node_id, moved.cluster_id, moved.device_id, moved.hold, moved.earn, moved.p,
         to_timestamp({minute}) AS minute,
         h.seconds + CASE WHEN {minute} = moved.om THEN moved.os ELSE 0 END AS seconds,
         ((moved.b + h.cum) * moved.p) / 3600 - ((moved.b + h.cum - h.seconds) * moved.p) / 3600
           + CASE WHEN {minute} = moved.om THEN moved.oa ELSE 0 END AS amount
  FROM moved {series}
  CROSS JOIN LATERAL (
    SELECT CASE WHEN moved.healthy
             THEN GREATEST(0, {minute} + 60 - GREATEST(moved.wm, {minute})) ELSE 0
           END AS seconds,
           CASE WHEN moved.healthy THEN GREATEST(0, {minute} + 60 - moved.wm) ELSE 0 END AS cum
  ) AS h
  WHERE {where} AND (h.seconds > 0 OR {minute} = moved.om)
)"""  # noqa: S608


_BUCKET_COLUMNS = """cluster_id, node_id, device_id, hold_account_id, earnings_account_id,
    minute, seconds, price_per_hour_micro, amount_micro, settled, settlement_transaction_id"""


def _meter_sql(*, listed: bool) -> str:
    """Accrue without settling: the closed minutes are written as unsettled buckets."""
    out = "SELECT node_id, added FROM moved" if listed else "SELECT count(*) FROM moved"
    return f"""
WITH {_accrue_sql(listed=listed)}, ins AS (
  INSERT INTO usage_buckets ({_BUCKET_COLUMNS})
  SELECT cluster_id, node_id, device_id, hold, earn, minute, seconds, p, amount, false, NULL
  FROM done
)
{out}
"""  # noqa: S608


def _settle_sql(usage: str) -> str:
    """The CTEs that settle the usage rows of CTE ``usage`` (``hold``, ``earn``, ``amount``):
    per (hold, provider) sums (``due``), the holds that can pay (``verdict``), ONE ledger
    transaction (``tx``) with their postings (``posted``): holds debited, providers and the
    platform fee credited.

    Hold balances are read without row locks: a hold's balance only falls by a settlement or
    by its release at the cluster's end, and both run under the settlement lock the caller
    holds (a fall from elsewhere would fail the balance CHECK and roll the statement back
    whole, never overdraw).
    """
    return f"""due AS (
  SELECT hold, earn, CAST(sum(amount) AS bigint) AS amount,
         (CAST(sum(amount) AS bigint) * CAST(:bps AS bigint) + 9999) / 10000 AS fee
  FROM {usage} GROUP BY hold, earn
), charge AS (
  SELECT hold, sum(amount + fee) AS total FROM due GROUP BY hold
), verdict AS (
  SELECT c.hold, c.total <= a.balance AS pays
  FROM charge c JOIN ledger_accounts a ON a.id = c.hold
), pay AS (
  SELECT due.* FROM due JOIN verdict v ON v.hold = due.hold WHERE v.pays
), tx AS (
  INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, memo, refs)
  SELECT 'settle_batch', :key, '', :memo, CAST(:refs AS jsonb)
  WHERE EXISTS (SELECT 1 FROM pay WHERE amount + fee <> 0)
  RETURNING id
), posted AS (
  INSERT INTO ledger_postings (transaction_id, account_id, amount)
  SELECT tx.id, p.account_id, p.amount FROM tx, (
    SELECT hold AS account_id, -sum(amount + fee) AS amount FROM pay
      GROUP BY hold HAVING sum(amount + fee) <> 0
    UNION ALL
    SELECT earn, sum(amount) FROM pay GROUP BY earn HAVING sum(amount) <> 0
    UNION ALL
    SELECT CAST(:fees AS bigint), sum(fee) FROM pay HAVING sum(fee) <> 0
  ) AS p
  RETURNING 1
)"""  # noqa: S608


# The tick: what closed is settled in the statement that closes it; the buckets of the holds
# that pay are written settled with their ledger transaction, the others unsettled.
_METER_AND_SETTLE = f"""
WITH {_accrue_sql(listed=False)}, {_settle_sql("done")}, ins AS (
  INSERT INTO usage_buckets ({_BUCKET_COLUMNS})
  SELECT d.cluster_id, d.node_id, d.device_id, d.hold, d.earn, d.minute, d.seconds, d.p,
         d.amount, coalesce(v.pays, false), CASE WHEN v.pays THEN (SELECT id FROM tx) END
  FROM done d LEFT JOIN verdict v ON v.hold = d.hold
  RETURNING settled
)
SELECT (SELECT count(*) FROM moved), (SELECT id FROM tx),
       (SELECT count(*) FROM ins WHERE settled), (SELECT count(*) FROM posted),
       (SELECT coalesce(sum(amount), 0) FROM pay), (SELECT coalesce(sum(fee), 0) FROM pay),
       ARRAY(SELECT hold FROM verdict WHERE NOT pays ORDER BY hold)
"""  # noqa: S608

_TICK_ALL = _meter_sql(listed=False)
_TICK_LISTED = _meter_sql(listed=True)


async def _no_jit(session: AsyncSession) -> None:
    """Row estimates of these set-based statements are far off (generate_series, CTEs), and
    JIT compiling them costs more than it saves."""
    await session.execute(text("SET LOCAL jit = off"))


def _params(
    now: datetime,
    unhealthy: Sequence[uuid.UUID],
    unhealthy_devices: Sequence[uuid.UUID],
    *,
    bill: bool = True,
) -> dict[str, Any]:
    now = whole_second(now)
    now_s = int(now.timestamp())
    return {
        "now": now,
        "now_s": now_s,
        "cur_s": now_s - now_s % 60,
        "bill": bill,
        "unhealthy": list(unhealthy),
        "unhealthy_devices": list(unhealthy_devices),
    }


async def meter_tick(
    session: AsyncSession,
    *,
    now: datetime,
    unhealthy: Sequence[uuid.UUID] = (),
    unhealthy_devices: Sequence[uuid.UUID] = (),
    bill: bool = True,
) -> int:
    """Accrue every active node up to ``now`` without settling; returns the nodes moved.

    ``unhealthy`` nodes, and nodes on ``unhealthy_devices``, get no usage for the interval;
    ``bill=False`` bills no node (time nobody observed). The closed minutes become
    unsettled buckets, for ``settle_usage_batch``.
    """
    await _no_jit(session)
    result = await session.execute(
        text(_TICK_ALL), _params(now, unhealthy, unhealthy_devices, bill=bill)
    )
    return int(result.scalar_one())


async def meter_nodes(
    session: AsyncSession,
    *,
    now: datetime,
    node_ids: Sequence[uuid.UUID],
    unhealthy: Sequence[uuid.UUID] = (),
) -> dict[uuid.UUID, int]:
    """``meter_tick`` for the listed nodes only (one statement); returns the seconds billed
    per node moved. Nodes already metered up to ``now`` or stopped are left alone."""
    if not node_ids:
        return {}
    await _no_jit(session)
    rows = await session.execute(
        text(_TICK_LISTED), _params(now, unhealthy, ()) | {"nodes": list(node_ids)}
    )
    return {node: int(seconds) for node, seconds in rows.tuples()}


@dataclass
class BatchSettlement:
    transaction_id: int | None = None
    buckets: int = 0
    """Buckets settled."""
    provider_micro: int = 0
    fee_micro: int = 0
    short_holds: list[int] = field(default_factory=list)
    """Hold accounts whose balance cannot cover their charge (not settled in this batch)."""
    moved: int = 0
    """Meters moved on (``meter_and_settle`` only)."""


async def settlement_lock(session: AsyncSession) -> None:
    """Take the settlement lock until the end of the transaction (re-entrant).

    The runs that post settlements hold it (each updates many provider accounts, and reads
    hold balances that only settlements and a cluster's final release lower); so must a
    transaction before it touches a meter, as the tick updates every meter under it.
    """
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('tesai.settle_batch'))"))


async def _settle_lock(session: AsyncSession) -> int:
    """The settlement lock and the settings of a settlement run; returns the platform fees
    account."""
    await settlement_lock(session)
    await _no_jit(session)
    await session.execute(text("SET LOCAL work_mem = '64MB'"))
    return await account_id(session, service.FEES)


async def _audit_settlement(
    session: AsyncSession, out: BatchSettlement, postings: int, action: str
) -> None:
    if out.transaction_id is None:
        return
    await audit(
        session,
        action=action,
        actor_kind="system",
        subject_type="ledger_transaction",
        subject_id=str(out.transaction_id),
        details={
            "buckets": out.buckets,
            "postings": postings,
            "provider_micro": out.provider_micro,
            "fee_micro": out.fee_micro,
            "short_holds": len(out.short_holds),
        },
    )


def _settle_params(key: str, fee_bps: int, fees: int, what: str) -> dict[str, Any]:
    return {
        "bps": fee_bps,
        "fees": fees,
        "key": key,
        "memo": f"usage {what}",
        "refs": orjson.dumps({"usage": what, "fee_bps": fee_bps, "result": {}}).decode(),
    }


async def meter_and_settle(
    session: AsyncSession,
    *,
    now: datetime,
    fee_bps: int,
    idempotency_key: str,
    unhealthy: Sequence[uuid.UUID] = (),
    unhealthy_devices: Sequence[uuid.UUID] = (),
) -> BatchSettlement:
    """The metering tick: accrue every active node up to ``now`` and settle every minute
    that closed, in one statement (see the module docstring); returns what was settled.

    A replay after a commit finds every meter at ``now`` and does nothing; the key is the
    ledger transaction's, so the same key can never post twice either.
    """
    fees = await _settle_lock(session)
    checkpoint("batch_claimed")
    # Its row estimates are far off (a few hundred for 100,000 meters): left to itself the
    # planner looks holds up one by one; the lateral minute series is the only nested loop
    # it needs.
    await session.execute(text("SET LOCAL enable_nestloop = off"))
    row = (
        await session.execute(
            text(_METER_AND_SETTLE),
            _params(now, unhealthy, unhealthy_devices)
            | _settle_params(idempotency_key, fee_bps, fees, f"to {whole_second(now).isoformat()}"),
        )
    ).one()
    out = BatchSettlement(
        moved=int(row[0]),
        transaction_id=None if row[1] is None else int(row[1]),
        buckets=int(row[2]),
        provider_micro=int(row[4]),
        fee_micro=int(row[5]),
        short_holds=[int(h) for h in row[6]],
    )
    await session.execute(text("SET LOCAL enable_nestloop = on"))
    checkpoint("batch_posted")
    await _audit_settlement(session, out, int(row[3]), "money.usage_metered_settled")
    return out


# The sweep: unsettled buckets (all complete: a bucket is written when its minute closes),
# settled like the tick's, then marked settled with their ledger transaction.
_SWEEP_SQL = f"""
WITH b AS (
  SELECT u.id, u.hold_account_id AS hold, u.earnings_account_id AS earn, u.amount_micro AS amount
  FROM usage_buckets u
  WHERE NOT u.settled AND u.minute < CAST(:before AS timestamptz)
), {_settle_sql("b")}, marked AS (
  UPDATE usage_buckets u SET settled = true, settlement_transaction_id = (SELECT id FROM tx)
  WHERE u.id = ANY(ARRAY(
    SELECT b.id FROM b JOIN verdict v ON v.hold = b.hold WHERE v.pays))
  RETURNING 1
)
SELECT (SELECT id FROM tx), (SELECT count(*) FROM marked), (SELECT count(*) FROM posted),
       (SELECT coalesce(sum(amount), 0) FROM pay), (SELECT coalesce(sum(fee), 0) FROM pay),
       ARRAY(SELECT hold FROM verdict WHERE NOT pays ORDER BY hold)
"""  # noqa: S608


async def settle_usage_batch(
    session: AsyncSession, *, before: datetime, fee_bps: int, idempotency_key: str
) -> BatchSettlement:
    """Settle every unsettled bucket of a minute before ``before`` in one ledger transaction.

    Runs are serialised with the metering tick by an advisory lock; a second run finds the
    buckets settled and does nothing. Buckets worth nothing are marked settled without a
    ledger transaction.
    """
    fees = await _settle_lock(session)
    checkpoint("batch_claimed")
    row = (
        await session.execute(
            text(_SWEEP_SQL),
            {"before": before}
            | _settle_params(idempotency_key, fee_bps, fees, f"before {before.isoformat()}"),
        )
    ).one()
    out = BatchSettlement(
        transaction_id=None if row[0] is None else int(row[0]),
        buckets=int(row[1]),
        provider_micro=int(row[3]),
        fee_micro=int(row[4]),
        short_holds=[int(h) for h in row[5]],
    )
    checkpoint("batch_posted")
    await _audit_settlement(session, out, int(row[2]), "money.usage_settled_batch")
    return out


async def oldest_unsettled_end(session: AsyncSession) -> datetime | None:
    """When the oldest minute of usage that is not settled yet ends (None: no usage).

    Settlement lag is measured from it: an unsettled bucket, or the minute in progress at an
    active meter's watermark. While the tick runs, that is the current minute; when metering
    or settlement stops, it stays put while time goes on.
    """
    oldest: datetime | None = await session.scalar(
        text(
            """
SELECT least(
  (SELECT min(minute) FROM usage_buckets WHERE NOT settled),
  (SELECT min(date_trunc('minute', metered_until)) FROM billing_node_meters WHERE active)
) + interval '1 minute'"""
        )
    )
    return oldest


async def unsettled_seconds(session: AsyncSession, node_id: uuid.UUID) -> int:
    """Seconds of a node accrued but not yet settled, the minute in progress included
    (statements, tests)."""
    rows = await session.scalars(
        select(UsageBucket.seconds).where(
            UsageBucket.node_id == node_id, UsageBucket.settled.is_(False)
        )
    )
    meter = await session.get(NodeMeter, node_id)
    return sum(rows.all()) + (meter.open_seconds if meter is not None else 0)


async def spent_by_cluster(
    session: AsyncSession, fee_bps: int, cluster_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """What each cluster has cost so far: its metered usage plus the platform fee.

    Read off the meters, not the buckets: with cumulative rounding a node's usage so far
    (its buckets plus its minute in progress) is exactly ``billed_seconds × price / 3600``
    rounded down, so this is one indexed lookup per cluster however long it ran.
    """
    if not cluster_ids:
        return {}
    used = func.sum((NodeMeter.billed_seconds * NodeMeter.price_per_hour_micro) // 3600)
    rows = await session.execute(
        select(NodeMeter.cluster_id, used)
        .where(NodeMeter.cluster_id.in_(cluster_ids))
        .group_by(NodeMeter.cluster_id)
    )
    return {cid: customer_charge(int(total or 0), fee_bps) for cid, total in rows.tuples()}
