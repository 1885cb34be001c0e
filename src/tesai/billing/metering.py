"""Per-second metering into per-minute usage buckets, and batched settlement.

Set-based on purpose: one metering tick and one settlement run are a handful of SQL
statements whatever the number of nodes, so 100,000 running nodes fit in a tick.

- ``start_meter`` / ``stop_meter``: a node starts or stops being billable.
- ``meter_tick(now, unhealthy)``: every active node's healthy seconds since its watermark
  go into its minute bucket(s); unhealthy nodes only move their watermark (not billed).
  Ticks must come at most 60 s apart (a gap is split over at most two minutes).
- ``record_interval``: the same for one node and any interval (pure splitting).
- ``settle_usage_batch(before)``: all unsettled buckets of closed minutes become ONE ledger
  transaction (holds → provider earnings + platform fees); buckets are marked settled in
  the same database transaction, so a replay settles nothing twice. Holds that cannot
  cover their charge are left out and reported, for ``settle_usage`` (capped) and a stop.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.audit.service import record as audit
from tesai.billing import service
from tesai.billing.holds import cluster_hold_ref
from tesai.billing.ledger import account_id, checkpoint
from tesai.billing.models import NodeMeter, UsageBucket
from tesai.billing.money import accrue, seconds_by_minute


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

    Time before the node's watermark is ignored, so replaying an interval adds nothing.
    """
    meter = await session.get(NodeMeter, node_id, with_for_update=True)
    if meter is None or not meter.active:
        return 0
    end = whole_second(end)
    if end <= meter.metered_until:
        return 0
    billed = 0
    if healthy:
        for minute, seconds in sorted(seconds_by_minute(start, end, meter.metered_until).items()):
            amount = accrue(meter.billed_seconds + billed, seconds, meter.price_per_hour_micro)
            await _add_bucket(session, meter, minute, seconds, amount)
            billed += seconds
    meter.metered_until = end
    meter.billed_seconds += billed
    await session.flush()
    return billed


async def _add_bucket(
    session: AsyncSession, meter: NodeMeter, minute: datetime, seconds: int, amount: int
) -> None:
    stmt = insert(UsageBucket).values(
        cluster_id=meter.cluster_id,
        node_id=meter.node_id,
        device_id=meter.device_id,
        hold_account_id=meter.hold_account_id,
        earnings_account_id=meter.earnings_account_id,
        minute=minute,
        seconds=seconds,
        price_per_hour_micro=meter.price_per_hour_micro,
        amount_micro=amount,
        settled=False,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["node_id", "minute"],
        set_={
            "seconds": UsageBucket.seconds + stmt.excluded.seconds,
            "amount_micro": UsageBucket.amount_micro + stmt.excluded.amount_micro,
        },
        where=UsageBucket.settled.is_(False),
    )
    await session.execute(stmt)


_NOW = "CAST(:now AS timestamptz)"
_UNHEALTHY = "CAST(:unhealthy AS uuid[])"

# Healthy active nodes: (watermark, now] split into minutes, cumulative rounding on the
# running total of billed seconds (see money.accrue). One statement for every node.
_TICK_SQL = f"""
WITH m AS (
  SELECT node_id, cluster_id, device_id, hold_account_id, earnings_account_id,
         price_per_hour_micro AS p, billed_seconds AS b, metered_until AS wm
  FROM billing_node_meters
  WHERE active AND metered_until < {_NOW} AND NOT (node_id = ANY({_UNHEALTHY}))
), s AS (
  SELECT m.*, g AS minute,
         CAST(extract(epoch FROM LEAST({_NOW}, g + interval '1 minute') - GREATEST(m.wm, g))
              AS bigint) AS seconds
  FROM m CROSS JOIN LATERAL
       generate_series(date_trunc('minute', m.wm), {_NOW}, interval '1 minute') AS g
), c AS (
  SELECT s.*, CAST(sum(seconds) OVER (PARTITION BY node_id ORDER BY minute) AS bigint) AS cum
  FROM s WHERE seconds > 0
), ins AS (
  INSERT INTO usage_buckets AS u (cluster_id, node_id, device_id, hold_account_id,
      earnings_account_id, minute, seconds, price_per_hour_micro, amount_micro, settled)
  SELECT cluster_id, node_id, device_id, hold_account_id, earnings_account_id, minute,
         seconds, p, ((b + cum) * p) / 3600 - ((b + cum - seconds) * p) / 3600, false
  FROM c
  ON CONFLICT (node_id, minute) DO UPDATE
    SET seconds = u.seconds + excluded.seconds,
        amount_micro = u.amount_micro + excluded.amount_micro
    WHERE NOT u.settled
)
UPDATE billing_node_meters n
SET metered_until = {_NOW},
    billed_seconds = n.billed_seconds + CASE WHEN n.node_id = ANY({_UNHEALTHY}) THEN 0
      ELSE CAST(extract(epoch FROM {_NOW} - n.metered_until) AS bigint) END
WHERE n.active AND n.metered_until < {_NOW}
"""  # noqa: S608


async def meter_tick(
    session: AsyncSession, *, now: datetime, unhealthy: Sequence[uuid.UUID] = ()
) -> int:
    """Accrue every active node up to ``now`` (≤ 60 s since its watermark); returns nodes moved.

    ``unhealthy`` nodes (offline per the control plane's heartbeats) get no usage for the
    interval: their watermark moves on, so that time is never billed later either.
    """
    result = await session.execute(
        text(_TICK_SQL), {"now": whole_second(now), "unhealthy": list(unhealthy)}
    )
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass
class BatchSettlement:
    transaction_id: int | None = None
    buckets: int = 0
    provider_micro: int = 0
    fee_micro: int = 0
    short_holds: list[int] = field(default_factory=list)
    """Hold accounts whose balance cannot cover their charge (not settled in this batch)."""


async def settle_usage_batch(
    session: AsyncSession, *, before: datetime, fee_bps: int, idempotency_key: str
) -> BatchSettlement:
    """Settle every complete, unsettled minute before ``before`` in one ledger transaction.

    A minute is complete when the node's watermark has passed its end (or the node stopped),
    so a later tick can never add seconds to a settled bucket. Runs are serialised by an
    advisory lock; a second run finds the buckets settled and does nothing.
    """
    out = BatchSettlement()
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('tesai.settle_batch'))"))
    await session.execute(
        text(
            """
CREATE TEMP TABLE IF NOT EXISTS settle_buckets (
  id bigint, hold_account_id bigint, earnings_account_id bigint, amount bigint
) ON COMMIT DELETE ROWS"""
        )
    )
    await session.execute(text("DELETE FROM settle_buckets"))
    await session.execute(
        text(
            """
INSERT INTO settle_buckets
SELECT u.id, u.hold_account_id, u.earnings_account_id, u.amount_micro
FROM usage_buckets u JOIN billing_node_meters n ON n.node_id = u.node_id
WHERE NOT u.settled AND u.minute < :before
  AND (u.minute + interval '1 minute' <= n.metered_until OR NOT n.active)"""
        ),
        {"before": before},
    )
    due = """
SELECT hold_account_id, earnings_account_id, CAST(sum(amount) AS bigint) AS amount,
       (CAST(sum(amount) AS bigint) * CAST(:bps AS bigint) + 9999) / 10000 AS fee
FROM settle_buckets GROUP BY hold_account_id, earnings_account_id"""
    # Lock the holds in id order and find the ones that cannot pay their charge.
    short = await session.execute(
        text(
            f"""
WITH due AS ({due}), charge AS (
  SELECT hold_account_id, sum(amount + fee) AS total FROM due GROUP BY hold_account_id
), locked AS (
  SELECT a.id, a.balance FROM ledger_accounts a
  WHERE a.id IN (SELECT hold_account_id FROM charge) ORDER BY a.id FOR UPDATE
)
SELECT l.id FROM locked l JOIN charge c ON c.hold_account_id = l.id WHERE c.total > l.balance"""  # noqa: S608
        ),
        {"bps": fee_bps},
    )
    out.short_holds = [int(r[0]) for r in short]
    if out.short_holds:
        await session.execute(
            text("DELETE FROM settle_buckets WHERE hold_account_id = ANY(:ids)"),
            {"ids": out.short_holds},
        )
    totals = (
        await session.execute(
            text(f"SELECT coalesce(sum(amount), 0), coalesce(sum(fee), 0) FROM ({due}) d"),  # noqa: S608
            {"bps": fee_bps},
        )
    ).one()
    out.provider_micro, out.fee_micro = int(totals[0]), int(totals[1])
    if out.provider_micro + out.fee_micro == 0:
        return out
    fees_account = await account_id(session, service.FEES)
    tx_id = await session.scalar(
        text(
            """
INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, memo, refs)
VALUES ('settle_batch', :key, '', :memo, CAST(:refs AS jsonb)) RETURNING id"""
        ),
        {
            "key": idempotency_key,
            "memo": f"usage before {before.isoformat()}",
            "refs": orjson.dumps(
                {"before": before.isoformat(), "fee_bps": fee_bps, "result": {}}
            ).decode(),
        },
    )
    assert tx_id is not None
    out.transaction_id = int(tx_id)
    checkpoint("batch_claimed")
    await session.execute(
        text(
            f"""
WITH due AS ({due})
INSERT INTO ledger_postings (transaction_id, account_id, amount)
SELECT CAST(:tx AS bigint), hold_account_id, -sum(amount + fee) FROM due
  GROUP BY hold_account_id
UNION ALL
SELECT CAST(:tx AS bigint), earnings_account_id, sum(amount) FROM due
  GROUP BY earnings_account_id HAVING sum(amount) <> 0
UNION ALL
SELECT CAST(:tx AS bigint), CAST(:fees AS bigint), sum(fee) FROM due HAVING sum(fee) <> 0"""  # noqa: S608
        ),
        {"tx": tx_id, "fees": fees_account, "bps": fee_bps},
    )
    checkpoint("batch_posted")
    marked = await session.execute(
        text(
            """
UPDATE usage_buckets u SET settled = true, settlement_transaction_id = :tx
FROM settle_buckets b WHERE u.id = b.id"""
        ),
        {"tx": tx_id},
    )
    out.buckets = int(getattr(marked, "rowcount", 0) or 0)
    await audit(
        session,
        action="money.usage_settled_batch",
        actor_kind="system",
        subject_type="ledger_transaction",
        subject_id=str(tx_id),
        details={
            "buckets": out.buckets,
            "provider_micro": out.provider_micro,
            "fee_micro": out.fee_micro,
            "short_holds": len(out.short_holds),
        },
    )
    return out


async def unsettled_seconds(session: AsyncSession, node_id: uuid.UUID) -> int:
    """Seconds of a node accrued but not yet settled (statements, tests)."""
    rows = await session.scalars(
        select(UsageBucket.seconds).where(
            UsageBucket.node_id == node_id, UsageBucket.settled.is_(False)
        )
    )
    return sum(rows.all())
