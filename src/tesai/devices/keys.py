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
heard it (a lost cache): the device's silence counts from then."""
GAP_CLASSES = 5
"""Gap classes of accepted heartbeats (``liveness.gap_class``)."""


def intake(gap_class: int) -> str:
    """Counter of heartbeats accepted, fleet-wide, that came this late after their device's
    previous one: the sweeper reads from them whether the intake worked between two sweeps,
    and whether beats come around late (an overloaded intake)."""
    return f"devices:intake:{gap_class}"


WATCH = "devices:watch"
"""JSON of the sweeper's own record: its last sweep, the intake counter as it last saw it
and recent samples of it, the current run of offline markings."""
UNOBSERVED = "devices:unobserved"
"""JSON of the latest window in which the control plane could not observe heartbeats, and
the grace stretch of a slow intake; heartbeats read it to credit uptime across it."""
RESUMED = "devices:resumed"
"""Sorted set: offline devices that heartbeat again, for the sweeper to bring back."""
CLOSED_MINUTES = "devices:closed"
"""Sorted set: ``<device id>:<minute>`` minutes with parts waiting for the flush task."""
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
    """A closed minute as one accumulator (written before minutes had parts; read by the
    flush task so an upgrade loses nothing)."""
    return f"devices:min:{device_id}:{minute}"


def minute_parts(device_id: str, minute: int) -> str:
    """Hash: the parts of one minute of a device (closed accumulators, credited uptime),
    by part id, so writing a part twice changes nothing."""
    return f"devices:minute:{device_id}:{minute}"


def commands_pending(device_id: str) -> str:
    """Set while the device may have unacknowledged commands."""
    return f"devices:cmd:{device_id}"


def offline_flag(device_id: str) -> str:
    """Set while the device is offline, so its next heartbeat asks to be brought back."""
    return f"devices:off:{device_id}"
