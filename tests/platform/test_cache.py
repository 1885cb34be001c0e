"""The cache interface: the same tests against Redis and the in-process implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tesai.kit.cache import Bucket, Cache, MemoryCache, RedisCache
from tesai.settings import Settings


@pytest.fixture(params=["redis", "memory"])
async def cache(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Cache]:
    if request.param == "memory":
        mem = MemoryCache()
        yield mem
        await mem.close()
        return
    assert settings.redis_url
    rc = RedisCache(settings.redis_url, settings.redis_prefix)
    yield rc
    await rc.close()
    raw = aioredis.Redis.from_url(settings.redis_url)
    keys = [k async for k in raw.scan_iter(match=settings.redis_prefix + "*")]
    if keys:
        await raw.delete(*keys)
    await raw.aclose()


async def test_get_set_delete(cache: Cache) -> None:
    assert await cache.get("a") is None
    assert await cache.set("a", "1") is True
    assert await cache.get("a") == b"1"
    assert await cache.set("a", b"2") is True
    assert await cache.get("a") == b"2"
    assert await cache.delete("a", "missing") == 1
    assert await cache.get("a") is None


async def test_ttl_expires(cache: Cache) -> None:
    await cache.set("short", "x", ttl_s=0.15)
    await cache.set("long", "y", ttl_s=30)
    assert await cache.get("short") == b"x"
    await asyncio.sleep(0.3)
    assert await cache.get("short") is None
    assert await cache.get("long") == b"y"


async def test_only_new(cache: Cache) -> None:
    assert await cache.set("nonce", "first", only_new=True) is True
    assert await cache.set("nonce", "second", only_new=True) is False
    assert await cache.get("nonce") == b"first"
    await cache.set("gone", "v", ttl_s=0.1)
    await asyncio.sleep(0.2)
    assert await cache.set("gone", "again", only_new=True) is True


async def test_pop_has_one_winner(cache: Cache) -> None:
    await cache.set("prize", "token")
    results = await asyncio.gather(*(cache.pop("prize") for _ in range(100)))
    assert [r for r in results if r is not None] == [b"token"]
    assert await cache.get("prize") is None


async def test_incr_keeps_first_ttl(cache: Cache) -> None:
    assert await cache.incr("n") == 1
    assert await cache.incr("n", 5) == 6
    assert await cache.incr("win", ttl_s=0.2) == 1
    assert await cache.incr("win", ttl_s=60) == 2
    await asyncio.sleep(0.35)
    # The second call did not extend the window: the counter started over.
    assert await cache.incr("win", ttl_s=0.2) == 1


async def test_mset_mget(cache: Cache) -> None:
    assert await cache.mget([]) == []
    await cache.mset({"k1": "a", "k2": b"b"}, ttl_s=0.2)
    assert await cache.mget(["k1", "nope", "k2"]) == [b"a", None, b"b"]
    await asyncio.sleep(0.35)
    assert await cache.mget(["k1", "k2"]) == [None, None]


async def test_sorted_sets(cache: Cache) -> None:
    await cache.zadd("seen", {"d1": 10.0, "d2": 20.0, "d3": 30.0})
    await cache.zadd("seen", {"d1": 25.0})
    assert await cache.zcard("seen") == 3
    assert await cache.zrangebyscore("seen", 0, 26) == [("d2", 20.0), ("d1", 25.0)]
    await cache.zrem("seen", "d2", "missing")
    assert await cache.zrangebyscore("seen", float("-inf"), float("inf")) == [
        ("d1", 25.0),
        ("d3", 30.0),
    ]
    assert await cache.zcard("nothing") == 0


async def test_sorted_set_scores_and_adding_only_new_members(cache: Cache) -> None:
    await cache.zadd("seen", {"d1": 10.0, "d2": 20.0})
    await cache.zadd("seen", {"d1": 99.0, "d3": 30.0}, only_new=True)
    assert await cache.zscores("seen", ["d1", "missing", "d3", "d2"]) == [10.0, None, 30.0, 20.0]
    assert await cache.zscores("nothing", ["d1"]) == [None]
    assert await cache.zscores("seen", []) == []


async def test_token_bucket_burst_deny_refill(cache: Cache) -> None:
    rate, burst = 10.0, 5
    results = [await cache.take_token("bucket", rate, burst) for _ in range(burst)]
    assert all(r.allowed for r in results)
    denied = await cache.take_token("bucket", rate, burst)
    assert not denied.allowed
    assert 0 < denied.retry_after_s <= 1 / rate + 0.01
    # Another key has its own bucket.
    assert (await cache.take_token("other", rate, burst)).allowed
    await asyncio.sleep(denied.retry_after_s + 0.05)
    assert (await cache.take_token("bucket", rate, burst)).allowed
    assert not (await cache.take_token("bucket", rate, burst)).allowed


async def test_token_bucket_rejects_nonsense_limits(cache: Cache) -> None:
    with pytest.raises(ValueError, match="token bucket"):
        await cache.take_token("b", 0, 5)


async def test_ping(cache: Cache) -> None:
    assert await cache.ping() is True


async def test_take_tokens_is_all_or_nothing(cache: Cache) -> None:
    wide = Bucket("ip", 10.0, 10)
    narrow = Bucket("principal", 2.0, 2)
    assert (await cache.take_tokens([wide, narrow])).allowed
    assert (await cache.take_tokens([wide, narrow])).allowed
    denied = await cache.take_tokens([wide, narrow])
    assert not denied.allowed
    assert 0.3 < denied.retry_after_s <= 0.5 + 0.01  # the narrow bucket's wait
    # The denied call took nothing from the wide bucket: 8 tokens are left in it.
    results = [(await cache.take_tokens([wide])).allowed for _ in range(9)]
    assert results == [True] * 8 + [False]
