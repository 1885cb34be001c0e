"""Password hashing with argon2id (RFC 9106 parameters from argon2-cffi).

One hash costs about 0.2 s of CPU and 64 MiB, on purpose. A request must therefore never
hold anything shared while it hashes (a pooled database connection: see
``tesai.auth.flows.password_login``), and a host bounds how many hashes run at once
(``HashGate``, ``HostSlots``): a burst of sign-ins then waits in a short queue or gets 503,
instead of taking every core and the database pool from everybody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from functools import cache
from pathlib import Path
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tesai.auth.errors import PasswordCheckBusy

T = TypeVar("T")

_hasher = PasswordHasher()  # argon2id, t=3, m=64 MiB, p=4

HASH_NICE = 19
"""Niceness of the hashing threads: the kernel gives a nice-19 thread about 1/70 of the CPU a
busy request-serving thread gets, yet all of an idle core, so on a busy host sign-ins are
the work that waits (and, past the queue, gets 503). On 2 cores (bench/login_abuse.py), a
wrong-password storm hashed at nice 0 multiplied the normal requests' p99 by 13."""


@cache
def _dummy_hash() -> str:
    """Verified against when the email is unknown, so both paths cost the same time."""
    return _hasher.hash("not a real password")


def _check(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; with no hash, the same work against a dummy one."""
    try:
        ok = bool(_hasher.verify(password_hash or _dummy_hash(), password))
    except (VerificationError, InvalidHashError):
        return False
    return ok and password_hash is not None


async def hash_password(password: str) -> str:
    """argon2id hash, in a thread (for the CLI and `tesai up`; requests use ``HashGate``)."""
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; a missing hash still spends the verification time."""
    return await asyncio.to_thread(_check, password_hash, password)


def _hashing_thread(cores: frozenset[int]) -> None:
    """A hashing thread yields the CPU to the event loops and stays on ``cores``. Linux
    applies both to this thread only, and to the lane threads argon2 starts from it (one
    hash runs 4 lanes in parallel: unpinned, a single hash spreads over every core)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICE)
    if cores:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(0, cores)


def hashing_cores(count: int) -> frozenset[int]:
    """The last ``count`` cores this process may use (the same ones in every process of
    the host); empty where affinity is not supported or when there is only one core."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return frozenset()
    if len(cores) < 2:
        return frozenset()
    return frozenset(cores[-min(count, len(cores) - 1) :])


def default_concurrency() -> int:
    """Half the CPU cores of this host, at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 2
    return max(1, cores // 2)


class HostSlots:
    """``count`` hashing slots shared by every API process of a host: lock files in a
    directory they share (``TESAI_HOME``), each held with ``flock`` while one hash runs.

    Per-process bounds add up: two workers allowed one hash each kept both cores of a
    2-core host hashing during a storm, and even at the lowest CPU priority that tripled
    the other requests' tail latency. One bound per host leaves the other half free.
    Blocking, so it is taken on the hashing thread, never on the event loop.
    """

    def __init__(self, directory: Path, count: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.paths = [directory / f"argon2-{i}.lock" for i in range(count)]

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold a free slot, waiting (blocking this thread) when none is."""
        fd = -1
        for path in self.paths:
            candidate = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(candidate, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(candidate)
            else:
                fd = candidate
                break
        if fd < 0:
            fd = os.open(random.choice(self.paths), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            os.close(fd)  # releases the lock


class HashGate:
    """At most ``concurrency`` argon2 computations at once on this host (``HostSlots``,
    shared by its API processes), on threads of low CPU priority (``HASH_NICE``) kept to
    ``concurrency`` cores, so the others never hash. In this process at most
    ``concurrency`` turns, and ``max_waiting`` requests waiting for one; a request beyond
    that gets ``PasswordCheckBusy`` (503, Retry-After) at once.

    A sign-in takes its turn before reading the user, so a storm of them also reaches the
    database only ``concurrency`` at a time (``tesai.auth.flows.password_login``). The
    executor has ``concurrency`` threads, so a request cancelled mid-hash frees its turn
    without letting more hashes run at once.
    """

    def __init__(self, concurrency: int, max_waiting: int, slots: HostSlots) -> None:
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self._slots = slots
        self._turns = asyncio.Semaphore(concurrency)
        self._admitted = 0
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency,
            thread_name_prefix="tesai-argon2",
            initializer=_hashing_thread,
            initargs=(hashing_cores(concurrency),),
        )
        # The dummy hash is made once, ahead of the first unknown email, which would
        # otherwise pay for it and stand out by its time.
        self._executor.submit(self._in_slot, _dummy_hash)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for, and hold, one of the ``concurrency`` turns. Raises
        ``PasswordCheckBusy`` at once when ``max_waiting`` requests already wait."""
        if self._admitted >= self.concurrency + self.max_waiting:
            raise PasswordCheckBusy("Too many sign-ins at once; retry shortly")
        self._admitted += 1
        try:
            async with self._turns:
                yield
        finally:
            self._admitted -= 1

    def _in_slot(self, work: Callable[..., T], *args: object) -> T:
        with self._slots.hold():
            return work(*args)

    async def _compute(self, work: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._in_slot, work, *args)

    async def hash(self, password: str) -> str:
        """The argon2id hash of ``password``, in a turn of its own. Raises
        ``PasswordCheckBusy``."""
        async with self.turn():
            return await self._compute(_hasher.hash, password)

    async def verify_in_turn(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches; call it holding a ``turn()``. A missing hash costs
        the same (a dummy hash), so an unknown email cannot be told from a wrong password by
        timing."""
        return await self._compute(_check, password_hash, password)
