"""Periodic billing work: forget API idempotency answers past their retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete

from tesai.billing.models import IdempotencyRecord
from tesai.kit.time import utcnow
from tesai.tasks import TaskContext, periodic


@periodic("billing.cleanup_idempotency", every_s=3600)
async def cleanup_idempotency(ctx: TaskContext) -> dict[str, Any]:
    """Delete stored API answers older than ``idempotency_retention_days``.

    The ledger's own keys are never deleted: a movement happens once per key forever.
    """
    cutoff = utcnow() - timedelta(days=ctx.settings.idempotency_retention_days)
    async with ctx.sessionmaker() as session, session.begin():
        result = await session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff)
        )
    return {"deleted": int(getattr(result, "rowcount", 0) or 0)}
