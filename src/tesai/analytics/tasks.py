"""Periodic work of the analytics domain.

- ``analytics.rollup`` (every 60 s): roll new raw rows (usage, uptime, device and cluster
  events, ledger postings) into the hourly and daily tables, from each source's watermark.
"""

from __future__ import annotations

from tesai.analytics.rollup import rollup
from tesai.tasks import TaskContext, periodic


@periodic("analytics.rollup", every_s=60.0)
async def rollup_analytics(ctx: TaskContext) -> None:
    await rollup(ctx.sessionmaker)
