"""Reconnect backoff: exponential ceiling, capped, with full jitter."""

from __future__ import annotations

import random

from tesai.agent.backoff import backoff_ceiling, backoff_delay


def test_ceiling_doubles_then_caps_at_30_seconds() -> None:
    assert [backoff_ceiling(a) for a in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_ceiling(10_000) == 30


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    assert backoff_delay(3, rand=lambda: 0.0) == 0.0
    assert backoff_delay(3, rand=lambda: 0.999) == 0.999 * 4
    rng = random.Random(7)
    delays = [backoff_delay(20, rand=rng.random) for _ in range(2000)]
    assert all(0 <= d < 30 for d in delays)
    # Spread over the whole range, so a fleet of agents never retries in lockstep.
    assert min(delays) < 1.5
    assert max(delays) > 28.5
    assert 13 < sum(delays) / len(delays) < 17
