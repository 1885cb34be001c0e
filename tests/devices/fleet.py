"""A simulated fleet on a test clock: devices beating through the real API, a sweeper every
simulated second, outages and late returns without sleeping through them."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from sqlalchemy import update

from tesai.devices.models import Device, DeviceStatus
from tesai.devices.sweeper import SweepReport, sweep
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tesai.tasks import TaskContext
from tests.devices.conftest import Pool, beat, hardware
from tests.fixtures.clock import Clock

HEARTBEAT = "/api/v1/agent/heartbeat"


@dataclass
class Member:
    device_id: uuid.UUID
    headers: dict[str, str]
    next_beat: float
    interval_s: float
    up: bool = True


@dataclass
class Fleet:
    """``n`` devices, online, their beats spread evenly over one interval."""

    client: httpx.AsyncClient
    ctx: TaskContext
    clock: Clock
    members: list[Member]
    offline: list[tuple[float, str]] = field(default_factory=list)
    answers: list[httpx.Response] = field(default_factory=list)
    reports: list[SweepReport] = field(default_factory=list)
    next_sweep: float = 0.0

    @classmethod
    async def join(
        cls,
        pool: Pool,
        runtime: Runtime,
        clock: Clock,
        n: int,
        *,
        interval_s: float = 5.0,
    ) -> Fleet:
        members: list[Member] = []
        for i in range(n):
            created = await pool.create(f"d{i}")
            r = await pool.join(created["join_token"], hardware(cores=2))
            assert r.status_code == 200, r.text
            headers = {"Authorization": f"Bearer {r.json()['device_token']}"}
            # First beat: the proof-of-compute command; second: its acknowledgement, so the
            # beats that follow stay on the cache-only path.
            hb = await pool.client.post(HEARTBEAT, json=beat(1), headers=headers)
            assert hb.status_code == 200, hb.text
            acked = [c["id"] for c in hb.json()["commands"]]
            hb = await pool.client.post(
                HEARTBEAT, json=beat(2, acked_commands=acked), headers=headers
            )
            assert hb.status_code == 200, hb.text
            members.append(Member(uuid.UUID(r.json()["device_id"]), headers, 0.0, interval_s))
        # Online without running the proof (proof of compute is tested on its own).
        async with runtime.sessionmaker.begin() as s:
            await s.execute(
                update(Device)
                .where(Device.id.in_([m.device_id for m in members]))
                .values(status=DeviceStatus.online, verified_at=utcnow())
            )
        now = time.time()
        for i, m in enumerate(members):
            m.next_beat = now + interval_s * i / n
        return cls(pool.client, runtime.task_context, clock, members, next_sweep=now + 1)

    async def run(
        self,
        seconds: float,
        *,
        reachable: Callable[[Member], bool] = lambda m: True,
        step: float = 0.25,
    ) -> None:
        """Let ``seconds`` pass: due devices beat (when ``reachable``), the sweeper sweeps
        every second. A beat that fails is tried again after the answer's Retry-After."""
        end = time.time() + seconds
        while time.time() < end:
            self.clock.advance(step)
            now = time.time()
            for m in self.members:
                if not m.up or m.next_beat > now:
                    continue
                if not reachable(m):
                    continue
                r = await self.client.post(HEARTBEAT, json=beat(3), headers=m.headers)
                self.answers.append(r)
                if r.status_code == 200:
                    m.next_beat = now + m.interval_s
                else:
                    m.next_beat = now + float(r.headers.get("Retry-After", "1"))
            if now >= self.next_sweep:
                report = await sweep(self.ctx)
                self.reports.append(report)
                self.offline += [(now, d) for d in report.offline]
                self.next_sweep = now + 1.0

    def back_after(self, start: float, spread_s: float) -> None:
        """Each device's next beat lands somewhere in ``spread_s`` after ``start`` (agents
        coming back from backoff)."""
        n = len(self.members)
        for i, m in enumerate(self.members):
            m.next_beat = start + spread_s * i / n


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that the test stops and restarts."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--dbfilename", "dump.rdb"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self, *, save: bool) -> None:
        """Shut down, keeping the data in a snapshot (``save``) or losing it."""
        assert self.process is not None
        with contextlib.suppress(redis.ConnectionError):  # it hangs up as it goes
            redis.Redis(port=self.port).shutdown(save=save, nosave=not save)
        self.process.wait(timeout=10)
        self.process = None
