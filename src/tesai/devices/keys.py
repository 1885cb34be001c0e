"""Cache keys of the devices domain (without the deployment prefix the cache adds)."""

from __future__ import annotations

LIVENESS = "liveness"
"""Sorted set: device id → time of its last heartbeat (watched devices only). Only ever a
time the device was really heard: reseeded from ``devices.last_seen_at`` when lost."""
HEARD_SINCE = "devices:heard_since"
"""Sorted set: device id → when its current run of heartbeats began (written by the beat
that starts a run); its nodes are billed from then at the earliest."""
REWATCHED = "devices:rewatched"
"""Sorted set: device id → when the control plane began watching it again without having
heard it (its own restart, a lost cache): the device's silence counts from then."""
SWEPT = "devices:swept"
"""Time of the last sweep; one much older tells the sweeper that nobody was watching."""
RESUMED = "devices:resumed"
"""Sorted set: offline devices that heartbeat again, for the sweeper to bring back."""
CLOSED_MINUTES = "devices:closed"
"""Sorted set: ``<device id>:<minute>`` accumulators waiting for the flush task."""
STORM = "devices:storm"
"""JSON of the current storm hold, absent when there is none."""
POOL = "devices:pool"
"""Cached public pool statistics."""
RECONCILE_LOCK = "devices:reconcile"
"""Held while one sweeper reconciles the cache with the database."""


def credential(token_hash: str) -> str:
    return f"devices:cred:{token_hash}"


def telemetry(device_id: str) -> str:
    """JSON of the device's latest heartbeat (time, status, telemetry, nodes)."""
    return f"devices:tel:{device_id}"


def accumulator(device_id: str) -> str:
    return f"devices:acc:{device_id}"


def closed_minute(device_id: str, minute: int) -> str:
    return f"devices:min:{device_id}:{minute}"


def commands_pending(device_id: str) -> str:
    """Set while the device may have unacknowledged commands."""
    return f"devices:cmd:{device_id}"


def offline_flag(device_id: str) -> str:
    """Set while the device is offline, so its next heartbeat asks to be brought back."""
    return f"devices:off:{device_id}"
