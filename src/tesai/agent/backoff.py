"""Retry delays: exponential backoff with full jitter (the AWS architecture blog's), and the
server's ``Retry-After`` honoured when it gives one.

A server that is overloaded or cannot reach its cache answers 503 (or 429) with
``Retry-After``: it knows when trying again is useful, so its word replaces the exponential
guess, with jitter on top so that agents told the same number do not come back in lockstep.
Either way no delay is longer than the cap (the control plane's grace after its own outage
counts on that cap: ``tesai.devices.liveness.AGENT_RETRY_CAP_S``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_JITTER = 0.5
"""A ``Retry-After`` of R seconds is honoured as a delay drawn from [R, R·(1 + this))."""


def backoff_ceiling(
    attempt: int, *, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S
) -> float:
    """The largest delay for the ``attempt``-th consecutive failure (0-based): min(cap, base·2ᵃ)."""
    return min(cap, base * float(2 ** min(max(attempt, 0), 32)))


def backoff_delay(
    attempt: int,
    *,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_CAP_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """A delay drawn uniformly from [0, ceiling): many agents retrying never move in lockstep."""
    return rand() * backoff_ceiling(attempt, base=base, cap=cap)


def retry_after_s(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """The server's ``Retry-After`` in seconds (delta-seconds or an HTTP date); None when
    absent or unreadable."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def retry_delay(
    attempt: int,
    retry_after: float | None,
    *,
    cap: float = BACKOFF_CAP_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """How long to wait before trying a failed call again: the server's ``retry_after``
    (with jitter) when it gave one, else the exponential backoff; never more than ``cap``."""
    if retry_after is None:
        return backoff_delay(attempt, cap=cap, rand=rand)
    return min(cap, retry_after * (1.0 + RETRY_AFTER_JITTER * rand()))
