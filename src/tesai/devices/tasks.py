"""Periodic work of the devices domain (thin: each calls one function).

- ``devices.sweep`` (every 1 s): offline after missed heartbeats, back on return, storm holds.
- ``devices.flush`` (every 60 s): per-minute uptime and telemetry rollups to PostgreSQL.
- ``devices.reliability`` (every hour): reliability scores from 30-day uptime and failures.
- ``devices.verification`` (every 60 s): expire unanswered challenges, re-verify at random.

The sweep and flush intervals come from the process settings at import
(``TESAI_SWEEP_INTERVAL_S``, ``TESAI_DEVICE_FLUSH_INTERVAL_S``): the schedule is registered
before any runtime exists.
"""

from __future__ import annotations

from tesai.devices import rollups, sweeper
from tesai.settings import get_settings
from tesai.tasks import TaskContext, periodic

_settings = get_settings()


@periodic("devices.sweep", every_s=_settings.sweep_interval_s)
async def sweep_devices(ctx: TaskContext) -> None:
    await sweeper.sweep(ctx)


@periodic("devices.flush", every_s=_settings.device_flush_interval_s)
async def flush_device_minutes(ctx: TaskContext) -> None:
    await rollups.flush(ctx)


@periodic("devices.reliability", every_s=3600.0)
async def update_device_reliability(ctx: TaskContext) -> None:
    await rollups.update_reliability(ctx)


@periodic("devices.verification", every_s=rollups.VERIFICATION_ROUND_S)
async def device_verification_rounds(ctx: TaskContext) -> None:
    await rollups.verification_rounds(ctx)
