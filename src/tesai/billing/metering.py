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
  ledger transaction). The fee rounds once over each hold's whole usage (running totals
  in ``billing_hold_totals``). A hold that cannot pay in full pays what it has and is
  reported; the part it could not pay is recorded on its buckets (``unpaid_micro``).
- ``meter_tick`` / ``meter_nodes``: the same accrual without settling (all nodes, or the
  listed ones: a node's last seconds before it stops); ``record_interval``: one node.
- ``settle_usage_batch(before)``: the sweep: buckets left unsettled (written by
  ``meter_nodes``/``stop_meter``) in one ledger transaction, by the same rules.
- ``limit_cluster_billing``: a meter bills nothing after its ``billable_until``: the
  cluster's paid end, or the second its budget or hold runs out, if sooner. So a hold
  computed for the paid duration at the quoted prices always covers the usage, and a
  budget is never passed.

Only observed whole seconds are billed: a meter starts at the next whole second after the
node started, and a tick bills up to the whole second before its ``now``.

Unhealthy nodes (offline per the control plane's heartbeats) get no usage for the interval:
their watermark moves on, so that time is never billed later either. A crash anywhere rolls
back the open database transaction: a committed tick is a moved watermark plus its buckets
and postings (replaying it adds nothing); a committed sweep is settled buckets.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.audit.service import record as audit
from tesai.billing import service
from tesai.billing.holds import cluster_hold_ref
from tesai.billing.ledger import account_id, checkpoint
from tesai.billing.models import NodeMeter, UsageBucket
from tesai.billing.money import MeterState, SpendState, customer_charge, spend_state


def whole_second(t: datetime) -> datetime:
    """``t`` rounded down to its second: the end of observed time."""
    return t.replace(microsecond=0)


def next_whole_second(t: datetime) -> datetime:
    """``t`` rounded up to a second: the start of observed time (a meter started at
    ``12:00:00.19`` bills from ``12:00:01``, so only whole observed seconds are billed)."""
    return whole_second(t) + timedelta(seconds=1) if t.microsecond else t


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
    billable_until: datetime | None = None,
) -> NodeMeter:
    """Begin billing a node from ``started_at`` (rounded up to a whole second), no further
    than ``billable_until`` (see ``limit_cluster_billing``); idempotent per node."""
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
        metered_until=next_whole_second(started_at),
        billable_until=billable_until,
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
    await meter_nodes(
        session, now=next_whole_second(start), node_ids=[node_id], unhealthy=[node_id]
    )
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
    (or to the meter's ``billable_until``, if sooner: the paid end, or when the budget or
    hold runs out) is cut at minute boundaries; a piece's amount uses cumulative rounding on
    the node's
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
    # Billed time ends at :now or at the meter's limit, whichever is first (LEAST skips
    # a NULL limit); time after the limit moves the watermark unbilled.
    end = "LEAST(:now_s, CAST(floor(date_part('epoch', n.billable_until)) AS bigint))"
    added = f"(CASE WHEN {healthy} THEN GREATEST(0, {end} - {wm}) ELSE 0 END)"
    open_healthy = (
        f"(CASE WHEN {healthy} THEN GREATEST(0, {end} - GREATEST({wm}, :cur_s)) ELSE 0 END)"
    )
    keep_s = f"(CASE WHEN n.open_minute = {_CUR} THEN n.open_seconds ELSE 0 END)"
    keep_a = f"(CASE WHEN n.open_minute = {_CUR} THEN n.open_amount ELSE 0 END)"
    was = "CAST(floor(date_part('epoch', n.metered_from)) AS bigint)"  # in RETURNING
    was_added = f"(CASE WHEN {healthy} THEN GREATEST(0, {end} - {was}) ELSE 0 END)"
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
    {was} AS wm, {end} AS e, n.billed_seconds - {was_added} AS b, {was_added} AS added,
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
             THEN GREATEST(0, LEAST({minute} + 60, moved.e) - GREATEST(moved.wm, {minute}))
             ELSE 0
           END AS seconds,
           CASE WHEN moved.healthy THEN GREATEST(0, LEAST({minute} + 60, moved.e) - moved.wm)
             ELSE 0
           END AS cum
  ) AS h
  WHERE {where} AND (h.seconds > 0 OR {minute} = moved.om)
)"""  # noqa: S608


_BUCKET_COLUMNS = """cluster_id, node_id, device_id, hold_account_id, earnings_account_id,
    minute, seconds, price_per_hour_micro, amount_micro, settled, settlement_transaction_id,
    unpaid_micro"""


def _meter_sql(*, listed: bool) -> str:
    """Accrue without settling: the closed minutes are written as unsettled buckets."""
    out = "SELECT node_id, added FROM moved" if listed else "SELECT count(*) FROM moved"
    return f"""
WITH {_accrue_sql(listed=listed)}, ins AS (
  INSERT INTO usage_buckets ({_BUCKET_COLUMNS})
  SELECT cluster_id, node_id, device_id, hold, earn, minute, seconds, p, amount, false, NULL, 0
  FROM done
)
{out}
"""  # noqa: S608


def _settle_sql(usage: str, keys: str) -> str:
    """The CTEs that settle the usage rows of CTE ``usage`` (``hold``, ``earn``, ``amount``
    and the columns ``keys`` that tell its rows apart), each hold by ``money.settle_hold``:

    - ``verdict``: per hold, its usage, whether it ``pays`` in full, what is ``paid`` to
      providers, the ``fee`` (rounded once over the hold's whole usage, from its running
      totals in ``billing_hold_totals``) and, for a hold that cannot pay in full, the
      ``paid`` part that fits with the rest of the hold as fee: the hold is emptied;
    - ``shares``: the rows of the holds that cannot pay in full, each with its ``paid`` part
      (the hold's paid amount shared pro rata by cumulative rounding, so the parts add up
      exactly); ``pay``: what each provider gets per hold;
    - ONE ledger transaction (``tx``) with its postings (``posted``: holds debited,
      providers and the platform fee credited) and the hold totals moved on (``kept``).

    Hold balances are read without row locks: a hold's balance only falls by a settlement or
    by its release at the cluster's end, and both run under the settlement lock the caller
    holds (a fall from elsewhere would fail the balance CHECK and roll the statement back
    whole, never overdraw). The totals are only written under that lock too.
    """
    bps = "CAST(:bps AS bigint)"
    rows = ", ".join(f"u.{k}" for k in keys.split(", "))
    return f"""due AS (
  SELECT hold, earn, CAST(sum(amount) AS bigint) AS amount FROM {usage} GROUP BY hold, earn
), held AS (
  SELECT hold, CAST(sum(amount) AS bigint) AS amount FROM due GROUP BY hold
), owed AS (
  SELECT h.hold, h.amount, a.balance, coalesce(t.provider_micro, 0) AS p0,
         coalesce(t.fee_micro, 0) AS f0,
         GREATEST(0, ((coalesce(t.provider_micro, 0) + h.amount) * {bps} + 9999) / 10000
                     - coalesce(t.fee_micro, 0)) AS full_fee
  FROM held h JOIN ledger_accounts a ON a.id = h.hold
  LEFT JOIN billing_hold_totals t ON t.hold_account_id = h.hold
), verdict AS (
  SELECT hold, amount, pays, paid, CASE WHEN pays THEN full_fee ELSE balance - paid END AS fee
  FROM (
    SELECT o.*, o.amount + o.full_fee <= o.balance AS pays,
           CASE WHEN o.amount + o.full_fee <= o.balance THEN o.amount
             ELSE LEAST(o.amount, o.balance, GREATEST(0, CAST(div(
               CAST(o.balance + o.f0 AS numeric) * 10000 - CAST(o.p0 AS numeric) * {bps},
               10000 + {bps}) AS bigint)))
           END AS paid
    FROM owed o
  ) AS x
), shares AS (
  SELECT u.hold, u.earn, {rows},
         CAST(div(CAST(v.paid AS numeric) * sum(u.amount) OVER w, v.amount)
              - div(CAST(v.paid AS numeric) * (sum(u.amount) OVER w - u.amount), v.amount)
              AS bigint) AS paid
  FROM {usage} u JOIN verdict v ON v.hold = u.hold AND NOT v.pays
  WINDOW w AS (PARTITION BY u.hold ORDER BY u.earn, {rows}
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
), pay AS (
  SELECT due.earn, due.amount FROM due JOIN verdict v ON v.hold = due.hold WHERE v.pays
  UNION ALL
  SELECT earn, paid FROM shares
), tx AS (
  INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, memo, refs)
  SELECT 'settle_batch', :key, '', :memo, CAST(:refs AS jsonb)
  WHERE EXISTS (SELECT 1 FROM verdict WHERE paid + fee <> 0)
  RETURNING id
), posted AS (
  INSERT INTO ledger_postings (transaction_id, account_id, amount)
  SELECT tx.id, p.account_id, p.amount FROM tx, (
    SELECT hold AS account_id, -(paid + fee) AS amount FROM verdict WHERE paid + fee <> 0
    UNION ALL
    SELECT earn, sum(amount) FROM pay GROUP BY earn HAVING sum(amount) <> 0
    UNION ALL
    SELECT CAST(:fees AS bigint), sum(fee) FROM verdict HAVING sum(fee) <> 0
  ) AS p
  RETURNING 1
), kept AS (
  INSERT INTO billing_hold_totals AS t (hold_account_id, provider_micro, fee_micro,
                                        shortfall_micro)
  SELECT hold, paid, fee, amount - paid FROM verdict WHERE paid + fee <> 0 OR amount <> paid
  ON CONFLICT (hold_account_id) DO UPDATE
  SET provider_micro = t.provider_micro + excluded.provider_micro,
      fee_micro = t.fee_micro + excluded.fee_micro,
      shortfall_micro = t.shortfall_micro + excluded.shortfall_micro
)"""  # noqa: S608


_SETTLED = """(SELECT id FROM tx), (SELECT count(*) FROM posted),
       (SELECT coalesce(sum(paid), 0) FROM verdict), (SELECT coalesce(sum(fee), 0) FROM verdict),
       ARRAY(SELECT hold FROM verdict WHERE NOT pays ORDER BY hold),
       (SELECT coalesce(sum(amount - paid), 0) FROM verdict)"""
"""What a settlement statement reports: transaction, postings, provider and fee amounts,
the holds that could not pay in full and their shortfall."""

# The tick: what closed is settled in the statement that closes it, every bucket written
# settled with its ledger transaction; a hold that cannot pay in full pays what it has, and
# its buckets carry the part it could not pay.
_METER_AND_SETTLE = f"""
WITH {_accrue_sql(listed=False)}, {_settle_sql("done", "node_id, minute")}, ins AS (
  INSERT INTO usage_buckets ({_BUCKET_COLUMNS})
  SELECT d.cluster_id, d.node_id, d.device_id, d.hold, d.earn, d.minute, d.seconds, d.p,
         d.amount, true, (SELECT id FROM tx), coalesce(d.amount - sh.paid, 0)
  FROM done d LEFT JOIN shares sh ON sh.node_id = d.node_id AND sh.minute = d.minute
  RETURNING 1
)
SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM ins), {_SETTLED}
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
    """Hold accounts whose balance could not cover their charge: each paid what it had and
    is empty now (their clusters are out of money)."""
    shortfall_micro: int = 0
    """Provider usage those holds could not pay (recorded on the buckets and hold totals)."""
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
            "shortfall_micro": out.shortfall_micro,
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
    out, postings = _settlement(row[1:], moved=int(row[0]))
    await session.execute(text("SET LOCAL enable_nestloop = on"))
    checkpoint("batch_posted")
    await _audit_settlement(session, out, postings, "money.usage_metered_settled")
    return out


# The sweep: unsettled buckets (all complete: a bucket is written when its minute closes),
# settled like the tick's, then marked settled with their ledger transaction and the part
# their hold could not pay.
_SWEEP_SQL = f"""
WITH b AS (
  SELECT u.id, u.hold_account_id AS hold, u.earnings_account_id AS earn, u.amount_micro AS amount
  FROM usage_buckets u
  WHERE NOT u.settled AND u.minute < CAST(:before AS timestamptz)
), {_settle_sql("b", "id")}, marked AS (
  UPDATE usage_buckets u SET settled = true, settlement_transaction_id = (SELECT id FROM tx),
    unpaid_micro = x.unpaid
  FROM (SELECT b.id, coalesce(b.amount - sh.paid, 0) AS unpaid
        FROM b LEFT JOIN shares sh ON sh.id = b.id) AS x
  WHERE u.id = x.id
  RETURNING 1
)
SELECT (SELECT count(*) FROM marked), {_SETTLED}
"""  # noqa: S608


async def settle_usage_batch(
    session: AsyncSession, *, before: datetime, fee_bps: int, idempotency_key: str
) -> BatchSettlement:
    """Settle every unsettled bucket of a minute before ``before`` in one ledger transaction,
    each hold as far as its balance goes (``money.settle_hold``).

    Runs are serialised with the metering tick by an advisory lock; a second run finds the
    buckets settled and does nothing. Buckets worth nothing are marked settled without a
    ledger transaction. After it, no bucket before ``before`` is left unsettled: a hold that
    could not pay in full is emptied and the rest recorded as its shortfall.
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
    out, postings = _settlement(row)
    checkpoint("batch_posted")
    await _audit_settlement(session, out, postings, "money.usage_settled_batch")
    return out


def _settlement(row: Sequence[Any], moved: int = 0) -> tuple[BatchSettlement, int]:
    """A settlement statement's row (buckets, then ``_SETTLED``) → its result, postings."""
    buckets, tx, postings, provider, fee, short, shortfall = row[:7]
    out = BatchSettlement(
        transaction_id=None if tx is None else int(tx),
        buckets=int(buckets),
        provider_micro=int(provider),
        fee_micro=int(fee),
        short_holds=[int(h) for h in short],
        shortfall_micro=int(shortfall),
        moved=moved,
    )
    return out, int(postings)


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


async def unsettled_buckets(session: AsyncSession, cluster_id: uuid.UUID) -> int:
    """How many usage buckets of the cluster wait to be settled (0 before its hold may be
    released)."""
    count = await session.scalar(
        select(func.count()).where(
            UsageBucket.cluster_id == cluster_id, UsageBucket.settled.is_(False)
        )
    )
    return int(count or 0)


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


async def cluster_meters(
    session: AsyncSession, cluster_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[MeterState]]:
    """Every meter of these clusters (stopped ones too: they count for spend), one query."""
    if not cluster_ids:
        return {}
    rows = await session.execute(
        select(
            NodeMeter.cluster_id,
            NodeMeter.billed_seconds,
            NodeMeter.metered_until,
            NodeMeter.price_per_hour_micro,
            NodeMeter.active,
        ).where(NodeMeter.cluster_id.in_(list(cluster_ids)))
    )
    out: dict[uuid.UUID, list[MeterState]] = {}
    for cid, billed, until, price, active in rows.tuples():
        out.setdefault(cid, []).append(
            MeterState(int(billed), int(until.timestamp()), int(price), bool(active))
        )
    return out


async def limit_cluster_billing(
    session: AsyncSession,
    *,
    cluster_id: uuid.UUID,
    ends_at: datetime | None,
    limit_micro: int,
    fee_bps: int,
) -> SpendState:
    """Bill the cluster's running nodes no further than its paid end (``ends_at``) nor past
    the second its spend limit (``money.spend_limit``: budget or hold) would be passed;
    returns where its spend stands.

    Call it whenever the end, the limit or the set of meters changes (and it may be called
    at any time: the end is recomputed from the meters, so usage that fell short of the
    estimate — unhealthy time — moves it on). Takes the settlement lock before it changes a
    meter (see ``settlement_lock``: a caller that moves money afterwards must have taken it
    first).
    """
    meters = (await cluster_meters(session, [cluster_id])).get(cluster_id, [])
    state = spend_state(meters, limit_micro, fee_bps)
    ends = [] if ends_at is None else [whole_second(ends_at)]
    if state.end_s is not None:
        ends.append(datetime.fromtimestamp(state.end_s, UTC))
    until = min(ends, default=None)
    stale = await session.scalar(
        select(func.count())
        .select_from(NodeMeter)
        .where(
            NodeMeter.cluster_id == cluster_id,
            NodeMeter.active,
            NodeMeter.billable_until.is_distinct_from(until),
        )
    )
    if stale:
        await settlement_lock(session)
        await session.execute(
            update(NodeMeter)
            .where(NodeMeter.cluster_id == cluster_id, NodeMeter.active)
            .values(billable_until=until)
        )
    return state
