"""Periodic work of the operations domain (thin).

- ``ops.finish`` (every ``TESAI_CLUSTER_RECONCILE_INTERVAL_S``): draining devices with no node
  left become ``drained``; moved nodes leave once their replacement runs.
"""

from __future__ import annotations

from tesai.ops import service
from tesai.settings import get_settings
from tesai.tasks import TaskContext, periodic

_settings = get_settings()


@periodic("ops.finish", every_s=max(_settings.cluster_reconcile_interval_s, 1.0))
async def finish_operations(ctx: TaskContext) -> None:
    await service.finish_operations(ctx)
