"""The small key-value interface the control plane needs from Redis.

Two implementations with the same behaviour: ``RedisCache`` (production, shared by every
process) and ``MemoryCache`` (embedded mode, one process). The same test suite runs against
both. Values are bytes or str; callers serialise.

Liveness uses a sorted set per kind (member → last-seen timestamp) so a sweeper finds the
silent ones with one range query instead of scanning keys.
"""

from __future__ import annotations

import fnmatch
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis


@dataclass(frozen=True)
class Bucket:
    """One token bucket: ``key`` refilled at ``rate_per_s`` tokens per second up to ``burst``."""

    key: str
    rate_per_s: float
    burst: int


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
    async def zadd(self, key: str, members: dict[str, float], *, only_new: bool = False) -> None:
        """Set members' scores; with ``only_new`` only of members not in the set yet."""

    @abstractmethod
    async def zscores(self, key: str, members: Sequence[str]) -> list[float | None]:
        """The scores of ``members``, in order (None for a member not in the set)."""

    @abstractmethod
    async def zrangebyscore(self, key: str, low: float, high: float) -> list[tuple[str, float]]: ...

    @abstractmethod
    async def zrem(self, key: str, *members: str) -> None: ...

    @abstractmethod
    async def zcard(self, key: str) -> int: ...

    async def take_token(self, key: str, rate_per_s: float, burst: int) -> BucketResult:
        """Token bucket: take one token from ``key`` refilled at ``rate_per_s`` up to ``burst``."""
        return await self.take_tokens([Bucket(key, rate_per_s, burst)])

    @abstractmethod
    async def take_tokens(self, buckets: Sequence[Bucket]) -> BucketResult:
        """Take one token from every bucket, or from none when any is empty (one round trip).

        ``retry_after_s`` is then the longest wait until every bucket has a token. Raises
        ``ValueError`` for a rate ≤ 0 or a burst < 1.
        """

    @abstractmethod
    async def ping(self) -> bool: ...

    @abstractmethod
    async def close(self) -> None: ...


# Token buckets in one round trip; each bucket's state is (tokens, last refill time) in a
# hash. ARGV holds rate, burst per key. The clock is Redis's own (TIME), so API processes on
# hosts with skewed clocks share one timeline. (Several keys in one script: not for Redis
# Cluster unless they share a hash slot.)
_BUCKET_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local tokens = {}
local retry = 0
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local t = tonumber(state[1])
  local ts = tonumber(state[2])
  if t == nil then t = burst; ts = now end
  t = math.min(burst, t + math.max(0, now - ts) * rate)
  if t < 1 then retry = math.max(retry, (1 - t) / rate) end
  tokens[i] = t
end
local allowed = 0
if retry == 0 then allowed = 1 end
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local t = tokens[i] - allowed
  redis.call('HSET', KEYS[i], 't', t, 'ts', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
end
return {allowed, tostring(retry)}
"""


def _check_buckets(buckets: Sequence[Bucket]) -> None:
    if not buckets:
        raise ValueError("no token bucket given")
    for b in buckets:
        if b.rate_per_s <= 0 or b.burst < 1:
            raise ValueError("a token bucket needs rate_per_s > 0 and burst >= 1")


_ZSCORES_CHUNK = 10_000
"""Members per ZMSCORE: one command for a running pool's devices would be megabytes."""


class RedisCache(Cache):
    def __init__(self, url: str, prefix: str = "tesai:") -> None:
        # A blocking pool: with the plain pool, the 65th concurrent command would fail with
        # "Too many connections" instead of waiting for a free connection.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=5)
        self._redis = aioredis.Redis.from_pool(pool)
        self._prefix = prefix
        self._bucket = self._redis.register_script(_BUCKET_SCRIPT)

    def _k(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> bytes | None:
        return cast(bytes | None, await self._redis.get(self._k(key)))

    async def set(
        self, key: str, value: bytes | str, *, ttl_s: float | None = None, only_new: bool = False
    ) -> bool:
        px = int(ttl_s * 1000) if ttl_s is not None else None
        return bool(await self._redis.set(self._k(key), value, px=px, nx=only_new))

    async def pop(self, key: str) -> bytes | None:
        return cast(bytes | None, await self._redis.getdel(self._k(key)))

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
        return cast(list[bytes | None], await self._redis.mget([self._k(k) for k in keys]))

    async def zadd(self, key: str, members: dict[str, float], *, only_new: bool = False) -> None:
        if members:
            await self._redis.zadd(self._k(key), members, nx=only_new)

    async def zscores(self, key: str, members: Sequence[str]) -> list[float | None]:
        out: list[float | None] = []
        for i in range(0, len(members), _ZSCORES_CHUNK):
            chunk = list(members[i : i + _ZSCORES_CHUNK])
            scores = await self._redis.zmscore(self._k(key), chunk)
            out += [None if s is None else float(s) for s in scores]
        return out

    async def zrangebyscore(self, key: str, low: float, high: float) -> list[tuple[str, float]]:
        rows = cast(
            list[tuple[bytes, float]],
            await self._redis.zrangebyscore(self._k(key), low, high, withscores=True),
        )
        return [(m.decode(), float(s)) for m, s in rows]

    async def zrem(self, key: str, *members: str) -> None:
        if members:
            await self._redis.zrem(self._k(key), *members)

    async def zcard(self, key: str) -> int:
        return int(await self._redis.zcard(self._k(key)))

    async def take_tokens(self, buckets: Sequence[Bucket]) -> BucketResult:
        _check_buckets(buckets)
        args: list[float] = []
        for b in buckets:
            args += (b.rate_per_s, b.burst)
        allowed, retry = await self._bucket(keys=[self._k(b.key) for b in buckets], args=args)
        return BucketResult(bool(int(allowed)), float(retry))

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


_SWEEP_EVERY = 1024


class MemoryCache(Cache):
    """In-process implementation for embedded mode. Not shared between processes."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._zsets: dict[str, dict[str, float]] = {}
        self._buckets: dict[str, tuple[float, float, float]] = {}
        """key → (tokens, last refill, time it is full again)."""
        self._writes = 0

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

    def _wrote(self) -> None:
        # Expired keys and full buckets are dropped now and then, so keys nobody reads
        # again (one rate-limit bucket per client IP) do not accumulate for ever.
        self._writes += 1
        if self._writes % _SWEEP_EVERY:
            return
        now = time.monotonic()
        for k in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
            del self._data[k]
        for k in [k for k, (_, _, full) in self._buckets.items() if full <= now]:
            del self._buckets[k]

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def set(
        self, key: str, value: bytes | str, *, ttl_s: float | None = None, only_new: bool = False
    ) -> bool:
        if only_new and self._live(key) is not None:
            return False
        self._data[key] = (self._b(value), self._expiry(ttl_s))
        self._wrote()
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
        # Like PEXPIRE NX: an existing expiry is kept, a key without one gets ttl_s.
        kept = self._data[key][1] if current is not None else None
        expires = kept if kept is not None else self._expiry(ttl_s)
        self._data[key] = (str(value).encode(), expires)
        self._wrote()
        return value

    async def mset(self, values: dict[str, bytes | str], *, ttl_s: float | None = None) -> None:
        expires = self._expiry(ttl_s)
        for k, v in values.items():
            self._data[k] = (self._b(v), expires)
            self._wrote()

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        return [self._live(k) for k in keys]

    async def zadd(self, key: str, members: dict[str, float], *, only_new: bool = False) -> None:
        zset = self._zsets.setdefault(key, {})
        for m, score in members.items():
            if not (only_new and m in zset):
                zset[m] = score

    async def zscores(self, key: str, members: Sequence[str]) -> list[float | None]:
        zset = self._zsets.get(key, {})
        return [zset.get(m) for m in members]

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

    async def take_tokens(self, buckets: Sequence[Bucket]) -> BucketResult:
        _check_buckets(buckets)
        now = time.monotonic()
        levels: list[float] = []
        retry = 0.0
        for b in buckets:
            tokens, ts, _ = self._buckets.get(b.key, (float(b.burst), now, now))
            tokens = min(float(b.burst), tokens + max(0.0, now - ts) * b.rate_per_s)
            if tokens < 1:
                retry = max(retry, (1 - tokens) / b.rate_per_s)
            levels.append(tokens)
        allowed = retry == 0.0
        for b, tokens in zip(buckets, levels, strict=True):
            left = tokens - 1 if allowed else tokens
            self._buckets[b.key] = (left, now, now + (b.burst - left) / b.rate_per_s)
        self._wrote()
        return BucketResult(allowed, retry)

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
