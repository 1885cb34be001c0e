"""Per-second metering into per-minute usage buckets, and batched settlement.

Set-based on purpose: one metering tick and one settlement run are a handful of SQL
statements whatever the number of nodes, so 100,000 running nodes fit in a tick.

- ``start_meter`` / ``stop_meter``: a node starts or stops being billable.
- ``meter_tick(now, unhealthy)``: every active node's healthy seconds since its watermark
  go into its minute bucket(s); unhealthy nodes only move their watermark (not billed).
  One statement, whatever the number of nodes or the length of the gap.
- ``meter_nodes(now, node_ids, unhealthy)``: the same statement for some nodes (the
  reconciler, per cluster); ``record_interval``: one node, any interval.
- ``settle_usage_batch(before)``: all unsettled buckets of closed minutes become ONE ledger
  transaction (holds → provider earnings + platform fees); buckets are marked settled in
  the same statement, so a replay settles nothing twice. Holds that cannot cover their
  charge are left out and reported, for ``settle_usage`` (capped) and a stop.

A crash anywhere rolls back the open database transaction: a committed tick is a moved
watermark (replaying it adds nothing), a committed settlement is settled buckets (replaying
it finds nothing due).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

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
        customer_user_id=customer_user_id,
        provider_user_id=provider_user_id,
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
    """The node is no longer billable (left, replaced, cluster ended)."""
    meter = await session.get(NodeMeter, node_id, with_for_update=True)
    if meter is not None:
        meter.active = False
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
_UNHEALTHY = "CAST(:unhealthy AS uuid[])"


def _tick_sql(*, listed: bool) -> str:
    """Every active meter (or those in ``:nodes``) from its watermark to ``:now``, in ONE
    statement: healthy seconds into minute buckets (cumulative rounding on the running total
    of billed seconds, see ``money.accrue``), watermark and running total moved on.

    ``cum`` is the node's healthy seconds from its watermark to the end of the minute's part,
    so no window (sort) is needed. The meters are locked as they are read (``FOR UPDATE``
    re-reads a row another tick moved meanwhile), and each is updated only once read through
    ``m``, so two ticks never count a second twice. ``listed`` restricts to ``:nodes`` and
    returns each node's billed seconds.
    """
    only = "AND node_id = ANY(CAST(:nodes AS uuid[]))" if listed else ""
    returning = "RETURNING n.node_id, m.added" if listed else ""
    return f"""
WITH m AS (
  SELECT node_id, cluster_id, device_id, hold_account_id, earnings_account_id,
         price_per_hour_micro AS p, billed_seconds AS b,
         date_trunc('second', metered_until) AS wm,
         CASE WHEN node_id = ANY({_UNHEALTHY}) THEN 0
           ELSE CAST(extract(epoch FROM {_NOW} - date_trunc('second', metered_until)) AS bigint)
         END AS added
  FROM billing_node_meters
  WHERE active AND metered_until < {_NOW} {only}
  FOR UPDATE
), s AS (
  SELECT m.*, g AS minute,
         CAST(extract(epoch FROM LEAST({_NOW}, g + interval '1 minute') - GREATEST(m.wm, g))
              AS bigint) AS seconds,
         CAST(extract(epoch FROM LEAST({_NOW}, g + interval '1 minute') - m.wm) AS bigint) AS cum
  FROM m CROSS JOIN LATERAL
       generate_series(date_trunc('minute', m.wm), {_NOW}, interval '1 minute') AS g
  WHERE m.added > 0
), ins AS (
  INSERT INTO usage_buckets AS u (cluster_id, node_id, device_id, hold_account_id,
      earnings_account_id, minute, seconds, price_per_hour_micro, amount_micro, settled)
  SELECT cluster_id, node_id, device_id, hold_account_id, earnings_account_id, minute,
         seconds, p, ((b + cum) * p) / 3600 - ((b + cum - seconds) * p) / 3600, false
  FROM s WHERE seconds > 0
  ON CONFLICT (node_id, minute) DO UPDATE
    SET seconds = u.seconds + excluded.seconds,
        amount_micro = u.amount_micro + excluded.amount_micro
    WHERE NOT u.settled
)
UPDATE billing_node_meters n
SET metered_until = {_NOW}, billed_seconds = n.billed_seconds + m.added
FROM m WHERE n.node_id = m.node_id AND n.active AND n.metered_until < {_NOW}
{returning}
"""  # noqa: S608


_TICK_ALL = _tick_sql(listed=False)
_TICK_LISTED = _tick_sql(listed=True)


async def _no_jit(session: AsyncSession) -> None:
    """Row estimates of these set-based statements are far off (generate_series, CTEs), and
    JIT compiling them costs more than it saves."""
    await session.execute(text("SET LOCAL jit = off"))


async def meter_tick(
    session: AsyncSession, *, now: datetime, unhealthy: Sequence[uuid.UUID] = ()
) -> int:
    """Accrue every active node up to ``now``; returns the number of nodes moved.

    ``unhealthy`` nodes (offline per the control plane's heartbeats) get no usage for the
    interval: their watermark moves on, so that time is never billed later either.
    """
    await _no_jit(session)
    result = await session.execute(
        text(_TICK_ALL), {"now": whole_second(now), "unhealthy": list(unhealthy)}
    )
    return int(getattr(result, "rowcount", 0) or 0)


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
        text(_TICK_LISTED),
        {"now": whole_second(now), "nodes": list(node_ids), "unhealthy": list(unhealthy)},
    )
    return {node: int(seconds) for node, seconds in rows.tuples()}


@dataclass
class BatchSettlement:
    transaction_id: int | None = None
    buckets: int = 0
    provider_micro: int = 0
    fee_micro: int = 0
    short_holds: list[int] = field(default_factory=list)
    """Hold accounts whose balance cannot cover their charge (not settled in this batch)."""


# One statement: complete unsettled buckets → per (hold, provider) sums → holds locked in
# id order → the holds that can pay are charged in ONE ledger transaction (postings) and
# their buckets marked settled with it; holds that cannot pay are reported. One snapshot,
# so a tick committing meanwhile can neither slip a bucket in nor out.
_SETTLE_SQL = """
WITH b AS (
  SELECT u.id, u.hold_account_id AS hold, u.earnings_account_id AS earn, u.amount_micro AS amount
  FROM usage_buckets u JOIN billing_node_meters n ON n.node_id = u.node_id
  WHERE NOT u.settled AND u.minute < CAST(:before AS timestamptz)
    AND (u.minute + interval '1 minute' <= n.metered_until OR NOT n.active)
), due AS (
  SELECT hold, earn, CAST(sum(amount) AS bigint) AS amount,
         (CAST(sum(amount) AS bigint) * CAST(:bps AS bigint) + 9999) / 10000 AS fee
  FROM b GROUP BY hold, earn
), charge AS (
  SELECT hold, sum(amount + fee) AS total FROM due GROUP BY hold
), locked AS (
  SELECT a.id, a.balance FROM ledger_accounts a
  WHERE a.id IN (SELECT hold FROM charge) ORDER BY a.id FOR UPDATE
), verdict AS (
  SELECT c.hold, c.total <= l.balance AS pays FROM charge c JOIN locked l ON l.id = c.hold
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
), marked AS (
  UPDATE usage_buckets u SET settled = true, settlement_transaction_id = (SELECT id FROM tx)
  WHERE u.id = ANY(ARRAY(
    SELECT b.id FROM b JOIN verdict v ON v.hold = b.hold WHERE v.pays))
  RETURNING 1
)
SELECT (SELECT id FROM tx), (SELECT count(*) FROM marked), (SELECT count(*) FROM posted),
       (SELECT coalesce(sum(amount), 0) FROM pay), (SELECT coalesce(sum(fee), 0) FROM pay),
       ARRAY(SELECT hold FROM verdict WHERE NOT pays ORDER BY hold)
"""


async def settle_usage_batch(
    session: AsyncSession, *, before: datetime, fee_bps: int, idempotency_key: str
) -> BatchSettlement:
    """Settle every complete, unsettled minute before ``before`` in one ledger transaction.

    A minute is complete when the node's watermark has passed its end (or the node stopped),
    so a later tick can never add seconds to a settled bucket. Runs are serialised by an
    advisory lock; a second run finds the buckets settled and does nothing. Buckets worth
    nothing are marked settled without a ledger transaction.
    """
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('tesai.settle_batch'))"))
    await _no_jit(session)
    await session.execute(text("SET LOCAL work_mem = '64MB'"))
    fees_account = await account_id(session, service.FEES)
    checkpoint("batch_claimed")
    row = (
        await session.execute(
            text(_SETTLE_SQL),
            {
                "before": before,
                "bps": fee_bps,
                "fees": fees_account,
                "key": idempotency_key,
                "memo": f"usage before {before.isoformat()}",
                "refs": orjson.dumps(
                    {"before": before.isoformat(), "fee_bps": fee_bps, "result": {}}
                ).decode(),
            },
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
    if out.transaction_id is None:
        return out
    await audit(
        session,
        action="money.usage_settled_batch",
        actor_kind="system",
        subject_type="ledger_transaction",
        subject_id=str(out.transaction_id),
        details={
            "buckets": out.buckets,
            "postings": int(row[2]),
            "provider_micro": out.provider_micro,
            "fee_micro": out.fee_micro,
            "short_holds": len(out.short_holds),
        },
    )
    return out


async def oldest_unsettled_end(session: AsyncSession) -> datetime | None:
    """When the oldest complete, unsettled minute of usage ended (None: nothing waits).

    Settlement lag is measured from it: right after a settlement run nothing complete is
    left; when settlement stops, this stays put while time goes on.
    """
    oldest: datetime | None = await session.scalar(
        text(
            """
SELECT min(u.minute) + interval '1 minute'
FROM usage_buckets u JOIN billing_node_meters n ON n.node_id = u.node_id
WHERE NOT u.settled AND (u.minute + interval '1 minute' <= n.metered_until OR NOT n.active)"""
        )
    )
    return oldest


async def unsettled_seconds(session: AsyncSession, node_id: uuid.UUID) -> int:
    """Seconds of a node accrued but not yet settled (statements, tests)."""
    rows = await session.scalars(
        select(UsageBucket.seconds).where(
            UsageBucket.node_id == node_id, UsageBucket.settled.is_(False)
        )
    )
    return sum(rows.all())


async def spent_by_cluster(
    session: AsyncSession, fee_bps: int, cluster_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """What each cluster has cost so far: its metered usage plus the platform fee."""
    if not cluster_ids:
        return {}
    rows = await session.execute(
        select(UsageBucket.cluster_id, func.sum(UsageBucket.amount_micro))
        .where(UsageBucket.cluster_id.in_(cluster_ids))
        .group_by(UsageBucket.cluster_id)
    )
    return {cid: customer_charge(int(total or 0), fee_bps) for cid, total in rows.tuples()}
