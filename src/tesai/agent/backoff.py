"""Reconnect delays: exponential backoff with full jitter (the AWS architecture blog's)."""

from __future__ import annotations

import random
from collections.abc import Callable

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


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
