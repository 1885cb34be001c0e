"""Redis goes away and comes back: heartbeats are refused with 503 and Retry-After (no 500, no
traceback per request), the sweeper judges nobody over the time it could not see, devices
still backing off when Redis returns are not marked offline, and the first request after
Redis returns succeeds.

Each test runs its own redis-server on a free port (``tests.devices.fleet.PrivateRedis``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tesai.devices import keys
from tesai.devices.rollups import flush
from tesai.devices.sweeper import sweep
from tesai.kit.cache import CacheUnavailable, RedisCache, RedisOptions
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.devices.conftest import Pool, beat
from tests.devices.fleet import HEARTBEAT, Fleet, PrivateRedis
from tests.fixtures.clock import Clock
from tests.fixtures.processes import free_port


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, free_port())
    server.start()
    yield server
    if server.process is not None:
        server.stop(save=False)


@pytest.fixture
def settings(settings: Settings, private_redis: PrivateRedis) -> Settings:
    return settings.model_copy(update={"redis_url": private_redis.url})


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


async def test_redis_outage_of_20_s_marks_no_device_offline_and_answers_503(
    pool: Pool, runtime: Runtime, clock: Clock, private_redis: PrivateRedis
) -> None:
    """12 devices; Redis is down for 20 s. Beats meanwhile are refused with 503, Retry-After
    and problem+json; the sweeps fail quietly. When Redis is back the agents return over
    the 30 s of their backoff: nobody is marked offline (a hold that ended when half of
    them were back used to mark the rest). One that never returns is marked once the
    control plane's allowance has passed."""
    fleet = await Fleet.join(pool, runtime, clock, 12)
    await fleet.run(12)
    private_redis.stop(save=True)
    with capture_logs() as logs:
        for _ in range(20):
            clock.advance(1.0)
            report = await sweep(fleet.ctx)
            assert report.holding
            assert report.offline == []
        refused = await fleet.client.post(HEARTBEAT, json=beat(4), headers=fleet.members[0].headers)
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "cache_unavailable"
    assert int(refused.headers["Retry-After"]) >= 1
    events = [e["event"] for e in logs]
    assert "unhandled_error" not in events
    assert events.count("devices_sweep_blind") <= 3  # one line per 10 s, not per sweep
    assert not any(e.get("exc_info") for e in logs)

    private_redis.start()  # with the snapshot taken when it stopped
    dead = fleet.members[-1]
    dead.up = False
    fleet.next_sweep = time.time()
    fleet.back_after(time.time(), 29.0)
    await fleet.run(44)
    assert fleet.offline == []
    # Redis's own outage (20 s) and the agents' backoff cap (30 s), then the grace (15 s).
    await fleet.run(8)
    assert [d for _, d in fleet.offline] == [str(dead.device_id)]
    assert {await pool.status(m.device_id) for m in fleet.members[:-1]} == {"online"}


async def test_first_requests_after_a_redis_restart_succeed(
    settings: Settings, private_redis: PrivateRedis
) -> None:
    """Connections pooled before Redis restarted are stale: each used to fail a request
    (500s for more than a minute). They are checked, or retried on a fresh connection."""
    cache = RedisCache(private_redis.url, "t:")
    try:
        # Fill the pool with several connections, as a busy process has.
        await asyncio.gather(*(cache.set(f"k{i}", "v") for i in range(20)))
        private_redis.stop(save=True)
        private_redis.start()
        results = await asyncio.gather(*(cache.get(f"k{i}") for i in range(20)))
        assert results == [b"v"] * 20
    finally:
        await cache.close()


async def test_an_unreachable_or_exhausted_redis_is_unavailable_not_an_error(
    settings: Settings, private_redis: PrivateRedis
) -> None:
    """Every pooled connection busy (an overloaded process) or Redis gone: the caller gets
    ``CacheUnavailable`` (503 with Retry-After), never a raw Redis error (a 500)."""
    cache = RedisCache(private_redis.url, "t:", RedisOptions(max_connections=1, pool_timeout_s=0.1))
    try:
        hold = asyncio.create_task(cache._redis.blpop(["t:never"], timeout=1))
        await asyncio.sleep(0.1)
        with pytest.raises(CacheUnavailable) as busy:
            await cache.get("k")
        assert busy.value.headers["Retry-After"]
        await hold
        private_redis.stop(save=False)
        with pytest.raises(CacheUnavailable):
            await cache.get("k")
    finally:
        await cache.close()


async def test_a_redis_that_lost_everything_marks_nobody_offline(
    pool: Pool, runtime: Runtime, clock: Clock, private_redis: PrivateRedis
) -> None:
    """Redis restarts empty (no snapshot): the liveness set, the sweeper's own record and
    the intake counters are gone. Devices are reseeded from the database and get the
    allowance; nobody is marked offline while they come back."""
    fleet = await Fleet.join(pool, runtime, clock, 12)
    await fleet.run(12)
    await flush(fleet.ctx)  # the database learns when each was last seen
    private_redis.stop(save=False)
    clock.advance(20)
    private_redis.start()
    assert await runtime.cache.get(keys.WATCH) is None
    fleet.next_sweep = time.time()
    fleet.back_after(time.time(), 29.0)
    await fleet.run(50)
    assert fleet.offline == []
