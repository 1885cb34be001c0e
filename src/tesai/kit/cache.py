"""The small key-value interface the control plane needs from Redis.

Two implementations with the same behaviour: ``RedisCache`` (production, shared by every
process) and ``MemoryCache`` (embedded mode, one process). The same test suite runs against
both. Values are bytes or str; callers serialise.

Liveness uses a sorted set per kind (member → last-seen timestamp) so a sweeper finds the
silent ones with one range query instead of scanning keys.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import redis.asyncio as aioredis


@dataclass(frozen=True)
class BucketResult:
    allowed: bool
    retry_after_s: float
    """Seconds until one token is available (0 when allowed)."""


class Cache(ABC):
    """Keys are given without the deployment prefix; implementations add it."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def set(
        self, key: str, value: bytes | str, *, ttl_s: float | None = None, only_new: bool = False
    ) -> bool:
        """Store ``value``; with ``only_new`` only when the key is absent. True if stored."""

    @abstractmethod
    async def pop(self, key: str) -> bytes | None:
        """Atomically read and delete: exactly one of many concurrent callers gets the value."""

    @abstractmethod
    async def delete(self, *keys: str) -> int: ...

    @abstractmethod
    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int: ...

    @abstractmethod
    async def mset(self, values: dict[str, bytes | str], *, ttl_s: float | None = None) -> None: ...

    @abstractmethod
    async def mget(self, keys: list[str]) -> list[bytes | None]: ...

    @abstractmethod
    async def zadd(self, key: str, members: dict[str, float]) -> None: ...

    @abstractmethod
    async def zrangebyscore(self, key: str, low: float, high: float) -> list[tuple[str, float]]: ...

    @abstractmethod
    async def zrem(self, key: str, *members: str) -> None: ...

    @abstractmethod
    async def zcard(self, key: str) -> int: ...

    @abstractmethod
    async def take_token(self, key: str, rate_per_s: float, burst: int) -> BucketResult:
        """Token bucket: take one token from ``key`` refilled at ``rate_per_s`` up to ``burst``."""

    @abstractmethod
    async def ping(self) -> bool: ...

    @abstractmethod
    async def close(self) -> None: ...


# Token bucket in one round trip; state is (tokens, last refill time) in a hash.
_BUCKET_SCRIPT = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', key, 't', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = (1 - tokens) / rate
end
redis.call('HSET', key, 't', tokens, 'ts', now)
redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(retry)}
"""


class RedisCache(Cache):
    def __init__(self, url: str, prefix: str = "tesai:") -> None:
        self._redis = aioredis.Redis.from_url(url, max_connections=64)
        self._prefix = prefix
        self._bucket = self._redis.register_script(_BUCKET_SCRIPT)

    def _k(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._redis.get(self._k(key))
        return value

    async def set(
        self, key: str, value: bytes | str, *, ttl_s: float | None = None, only_new: bool = False
    ) -> bool:
        px = int(ttl_s * 1000) if ttl_s is not None else None
        return bool(await self._redis.set(self._k(key), value, px=px, nx=only_new))

    async def pop(self, key: str) -> bytes | None:
        value: bytes | None = await self._redis.getdel(self._k(key))
        return value

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._redis.delete(*(self._k(k) for k in keys)))

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(self._k(key), amount)
            if ttl_s is not None:
                pipe.pexpire(self._k(key), int(ttl_s * 1000), nx=True)
            result = await pipe.execute()
        return int(result[0])

    async def mset(self, values: dict[str, bytes | str], *, ttl_s: float | None = None) -> None:
        if not values:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            px = int(ttl_s * 1000) if ttl_s is not None else None
            for k, v in values.items():
                pipe.set(self._k(k), v, px=px)
            await pipe.execute()

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: list[bytes | None] = await self._redis.mget([self._k(k) for k in keys])
        return values

    async def zadd(self, key: str, members: dict[str, float]) -> None:
        if members:
            await self._redis.zadd(self._k(key), members)

    async def zrangebyscore(self, key: str, low: float, high: float) -> list[tuple[str, float]]:
        rows = await self._redis.zrangebyscore(self._k(key), low, high, withscores=True)
        return [(m.decode() if isinstance(m, bytes) else str(m), float(s)) for m, s in rows]

    async def zrem(self, key: str, *members: str) -> None:
        if members:
            await self._redis.zrem(self._k(key), *members)

    async def zcard(self, key: str) -> int:
        return int(await self._redis.zcard(self._k(key)))

    async def take_token(self, key: str, rate_per_s: float, burst: int) -> BucketResult:
        allowed, retry = await self._bucket(
            keys=[self._k(key)], args=[rate_per_s, burst, time.time()]
        )
        return BucketResult(bool(int(allowed)), float(retry))

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


class MemoryCache(Cache):
    """In-process implementation for embedded mode. Not shared between processes."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._zsets: dict[str, dict[str, float]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = asyncio.Lock()

    @staticmethod
    def _b(value: bytes | str) -> bytes:
        return value.encode() if isinstance(value, str) else value

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.monotonic():
            del self._data[key]
            return None
        return value

    @staticmethod
    def _expiry(ttl_s: float | None) -> float | None:
        return time.monotonic() + ttl_s if ttl_s is not None else None

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def set(
        self, key: str, value: bytes | str, *, ttl_s: float | None = None, only_new: bool = False
    ) -> bool:
        if only_new and self._live(key) is not None:
            return False
        self._data[key] = (self._b(value), self._expiry(ttl_s))
        return True

    async def pop(self, key: str) -> bytes | None:
        value = self._live(key)
        self._data.pop(key, None)
        return value

    async def delete(self, *keys: str) -> int:
        n = 0
        for k in keys:
            if self._live(k) is not None or k in self._zsets:
                n += 1
            self._data.pop(k, None)
            self._zsets.pop(k, None)
        return n

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        current = self._live(key)
        value = int(current or b"0") + amount
        expires = self._data[key][1] if current is not None else self._expiry(ttl_s)
        self._data[key] = (str(value).encode(), expires)
        return value

    async def mset(self, values: dict[str, bytes | str], *, ttl_s: float | None = None) -> None:
        expires = self._expiry(ttl_s)
        for k, v in values.items():
            self._data[k] = (self._b(v), expires)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        return [self._live(k) for k in keys]

    async def zadd(self, key: str, members: dict[str, float]) -> None:
        self._zsets.setdefault(key, {}).update(members)

    async def zrangebyscore(self, key: str, low: float, high: float) -> list[tuple[str, float]]:
        zset = self._zsets.get(key, {})
        rows = [(m, s) for m, s in zset.items() if low <= s <= high]
        rows.sort(key=lambda r: (r[1], r[0]))
        return rows

    async def zrem(self, key: str, *members: str) -> None:
        zset = self._zsets.get(key, {})
        for m in members:
            zset.pop(m, None)

    async def zcard(self, key: str) -> int:
        return len(self._zsets.get(key, {}))

    async def take_token(self, key: str, rate_per_s: float, burst: int) -> BucketResult:
        now = time.monotonic()
        tokens, ts = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + max(0.0, now - ts) * rate_per_s)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return BucketResult(True, 0.0)
        self._buckets[key] = (tokens, now)
        return BucketResult(False, (1 - tokens) / rate_per_s)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()
        self._zsets.clear()
        self._buckets.clear()

    def keys(self, pattern: str = "*") -> list[str]:
        """Live keys matching a glob pattern (diagnostics and tests)."""
        return [
            k for k in list(self._data) if self._live(k) is not None and fnmatch.fnmatch(k, pattern)
        ]


def create_cache(redis_url: str | None, prefix: str) -> Cache:
    return RedisCache(redis_url, prefix) if redis_url else MemoryCache()
