"""The small key-value interface the control plane needs from Redis.

Two implementations with the same behaviour: ``RedisCache`` (production, shared by every
process) and ``MemoryCache`` (embedded mode, one process). The same test suite runs against
both. Values are bytes or str; callers serialise.

Liveness uses a sorted set per kind (member → last-seen timestamp) so a sweeper finds the
silent ones with one range query instead of scanning keys.

Redis that is down, restarting, still loading its snapshot, or whose connection pool is
exhausted raises ``CacheUnavailable``: a 503 with ``Retry-After`` for HTTP clients, logged
once every ``_LOG_EVERY_S`` per process instead of a traceback per request. A connection
that went stale while Redis was away is checked before reuse (``health_check_interval``)
and a command that meets a dropped connection is retried on a fresh one, so the first
requests after Redis returns succeed.
"""

from __future__ import annotations

import fnmatch
import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tesai.errors import ServiceUnavailable

log = structlog.get_logger(__name__)

CACHE_RETRY_AFTER_S = 2
"""What a request that could not reach the cache is told to wait before trying again."""


class CacheUnavailable(ServiceUnavailable):
    """The cache (Redis) could not be reached, or every pooled connection is busy."""

    code = "cache_unavailable"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message or f"The service is briefly unavailable; retry in {CACHE_RETRY_AFTER_S} s",
            headers={"Retry-After": str(CACHE_RETRY_AFTER_S)},
            retry_after=CACHE_RETRY_AFTER_S,
        )


@dataclass
class Writes:
    """Writes applied together, all or none, in one round trip (Redis ``MULTI``/``EXEC``).

    All are idempotent but ``incr``: a batch retried after a dropped reply writes the
    same state again.
    """

    ops: list[tuple[Any, ...]] = field(default_factory=list)

    def set(self, key: str, value: bytes | str, *, ttl_s: float | None = None) -> Writes:
        self.ops.append(("set", key, value, ttl_s))
        return self

    def zadd(self, key: str, members: dict[str, float]) -> Writes:
        if members:
            self.ops.append(("zadd", key, members))
        return self

    def hset(self, key: str, name: str, value: bytes | str, *, ttl_s: float) -> Writes:
        """Set field ``name`` of hash ``key``; the hash expires ``ttl_s`` after this write."""
        self.ops.append(("hset", key, name, value, ttl_s))
        return self

    def incr(self, key: str, amount: int = 1) -> Writes:
        self.ops.append(("incr", key, amount))
        return self

    def delete(self, *keys: str) -> Writes:
        if keys:
            self.ops.append(("delete", *keys))
        return self


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

    @abstractmethod
    async def apply(self, writes: Writes) -> None:
        """Apply ``writes`` atomically (all or none)."""

    @abstractmethod
    async def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, bytes]]:
        """Every field of each hash, in order ({} for a missing key)."""

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

_LOG_EVERY_S = 10.0
_unavailable_log = {"at": 0.0, "suppressed": 0}
_OUTAGE_GAP_S = 60.0
_outage: dict[str, float] = {}


def last_outage() -> tuple[float, float] | None:
    """When this process last found Redis unreachable: the wall-clock times of the first and
    the last failure of that outage (failures less than a minute apart are one outage).
    The heartbeat path credits uptime across it even before the sweeper has recorded it."""
    if not _outage:
        return None
    return _outage["first"], _outage["last"]


def _note_outage() -> None:
    now = time.time()
    if not _outage or now - _outage["last"] > _OUTAGE_GAP_S:
        _outage["first"] = now
    _outage["last"] = now


P = ParamSpec("P")
T = TypeVar("T")


def _guarded(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn Redis being unreachable (after the client's own retries) into ``CacheUnavailable``."""

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            _note_outage()
            # One line every _LOG_EVERY_S per process, not a traceback per request.
            now = time.monotonic()
            if now - _unavailable_log["at"] >= _LOG_EVERY_S:
                log.warning(
                    "cache_unavailable",
                    error=f"{type(exc).__name__}: {exc}",
                    suppressed=_unavailable_log["suppressed"],
                )
                _unavailable_log["at"], _unavailable_log["suppressed"] = now, 0
            else:
                _unavailable_log["suppressed"] += 1
            raise CacheUnavailable() from exc

    return call


@dataclass(frozen=True)
class RedisOptions:
    """How the control plane talks to Redis (one pool per process)."""

    max_connections: int = 64
    pool_timeout_s: float = 1.0
    """Wait for a free pooled connection this long, then answer 503 (never queue for long)."""
    socket_timeout_s: float = 2.0
    connect_timeout_s: float = 1.0
    health_check_interval_s: float = 5.0
    """A connection idle this long is PINGed before reuse: one left over from before a
    Redis restart is replaced instead of failing a request."""
    retries: int = 2
    """A command that meets a dropped connection or a timeout is retried this many times on
    a fresh connection, with jittered exponential backoff (50 ms, capped at 500 ms)."""


class RedisCache(Cache):
    def __init__(
        self, url: str, prefix: str = "tesai:", options: RedisOptions | None = None
    ) -> None:
        o = options or RedisOptions()
        # A blocking pool: with the plain pool, the 65th concurrent command would fail with
        # "Too many connections" instead of waiting for a free connection; past the pool
        # timeout it raises, and the caller gets CacheUnavailable (503 with Retry-After).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=o.max_connections,
            timeout=o.pool_timeout_s,
            socket_timeout=o.socket_timeout_s,
            socket_connect_timeout=o.connect_timeout_s,
            socket_keepalive=True,
            health_check_interval=o.health_check_interval_s,
            retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), o.retries),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._prefix = prefix
        self._bucket = self._redis.register_script(_BUCKET_SCRIPT)

    def _k(self, key: str) -> str:
        return self._prefix + key

    @_guarded
    async def get(self, key: str) -> bytes | None:
        return cast(bytes | None, await self._redis.get(self._k(key)))

    @_guarded
    async def set(
        self, key: str, value: bytes | str, *, ttl_s: float | None = None, only_new: bool = False
    ) -> bool:
        px = int(ttl_s * 1000) if ttl_s is not None else None
        return bool(await self._redis.set(self._k(key), value, px=px, nx=only_new))

    @_guarded
    async def pop(self, key: str) -> bytes | None:
        return cast(bytes | None, await self._redis.getdel(self._k(key)))

    @_guarded
    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._redis.delete(*(self._k(k) for k in keys)))

    @_guarded
    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(self._k(key), amount)
            if ttl_s is not None:
                pipe.pexpire(self._k(key), int(ttl_s * 1000), nx=True)
            result = await pipe.execute()
        return int(result[0])

    @_guarded
    async def mset(self, values: dict[str, bytes | str], *, ttl_s: float | None = None) -> None:
        if not values:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            px = int(ttl_s * 1000) if ttl_s is not None else None
            for k, v in values.items():
                pipe.set(self._k(k), v, px=px)
            await pipe.execute()

    @_guarded
    async def mget(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        return cast(list[bytes | None], await self._redis.mget([self._k(k) for k in keys]))

    @_guarded
    async def zadd(self, key: str, members: dict[str, float], *, only_new: bool = False) -> None:
        if members:
            await self._redis.zadd(self._k(key), members, nx=only_new)

    @_guarded
    async def zscores(self, key: str, members: Sequence[str]) -> list[float | None]:
        out: list[float | None] = []
        for i in range(0, len(members), _ZSCORES_CHUNK):
            chunk = list(members[i : i + _ZSCORES_CHUNK])
            scores = await self._redis.zmscore(self._k(key), chunk)
            out += [None if s is None else float(s) for s in scores]
        return out

    @_guarded
    async def zrangebyscore(self, key: str, low: float, high: float) -> list[tuple[str, float]]:
        rows = cast(
            list[tuple[bytes, float]],
            await self._redis.zrangebyscore(self._k(key), low, high, withscores=True),
        )
        return [(m.decode(), float(s)) for m, s in rows]

    @_guarded
    async def zrem(self, key: str, *members: str) -> None:
        if members:
            await self._redis.zrem(self._k(key), *members)

    @_guarded
    async def zcard(self, key: str) -> int:
        return int(await self._redis.zcard(self._k(key)))

    @_guarded
    async def apply(self, writes: Writes) -> None:
        if not writes.ops:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            for op in writes.ops:
                kind, key = op[0], self._k(op[1])
                if kind == "set":
                    px = int(op[3] * 1000) if op[3] is not None else None
                    pipe.set(key, op[2], px=px)
                elif kind == "zadd":
                    pipe.zadd(key, op[2])
                elif kind == "hset":
                    pipe.hset(key, op[2], op[3])
                    pipe.pexpire(key, int(op[4] * 1000))
                elif kind == "incr":
                    pipe.incrby(key, op[2])
                elif kind == "delete":
                    pipe.delete(*(self._k(k) for k in op[1:]))
            await pipe.execute()

    @_guarded
    async def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, bytes]]:
        if not keys:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hgetall(self._k(k))
            rows = cast(list[dict[bytes, bytes]], await pipe.execute())
        return [{f.decode(): v for f, v in row.items()} for row in rows]

    @_guarded
    async def take_tokens(self, buckets: Sequence[Bucket]) -> BucketResult:
        _check_buckets(buckets)
        args: list[float] = []
        for b in buckets:
            args += (b.rate_per_s, b.burst)
        allowed, retry = await self._bucket(keys=[self._k(b.key) for b in buckets], args=args)
        return BucketResult(bool(int(allowed)), float(retry))

    @_guarded
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
        self._hashes: dict[str, tuple[dict[str, bytes], float]] = {}
        """key → (fields, expiry on the monotonic clock)."""
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
        for k in [k for k, (_, exp) in self._hashes.items() if exp <= now]:
            del self._hashes[k]

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
            self._hashes.pop(k, None)
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

    async def apply(self, writes: Writes) -> None:
        # One event-loop step: nothing else runs between these writes.
        for op in writes.ops:
            kind, key = op[0], op[1]
            if kind == "set":
                await self.set(key, op[2], ttl_s=op[3])
            elif kind == "zadd":
                await self.zadd(key, op[2])
            elif kind == "hset":
                fields = self._hash(key)
                fields[op[2]] = self._b(op[3])
                self._hashes[key] = (fields, time.monotonic() + op[4])
                self._wrote()
            elif kind == "incr":
                await self.incr(key, op[2])
            elif kind == "delete":
                await self.delete(*op[1:])

    def _hash(self, key: str) -> dict[str, bytes]:
        item = self._hashes.get(key)
        if item is None or item[1] <= time.monotonic():
            self._hashes.pop(key, None)
            return {}
        return item[0]

    async def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, bytes]]:
        return [dict(self._hash(k)) for k in keys]

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
        self._hashes.clear()

    def keys(self, pattern: str = "*") -> list[str]:
        """Live keys matching a glob pattern (diagnostics and tests)."""
        return [
            k for k in list(self._data) if self._live(k) is not None and fnmatch.fnmatch(k, pattern)
        ]


def create_cache(redis_url: str | None, prefix: str) -> Cache:
    return RedisCache(redis_url, prefix) if redis_url else MemoryCache()
