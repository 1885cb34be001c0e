"""Storms: an outage or an overload of the control plane marks no device offline and loses no
uptime, and a device that really died is still found once the control plane is whole.

Devices beat through the real API on a test clock (``tests.devices.fleet``); the sweeper runs
every simulated second.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import select

from tesai.devices import agents
from tesai.devices.models import DeviceUptimeMinute, FleetEvent
from tesai.devices.rollups import flush
from tesai.kit.cache import Cache
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.devices.conftest import Pool, beat
from tests.devices.fleet import HEARTBEAT, Fleet
from tests.fixtures.clock import Clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def start_of_next_minute(clock: Clock, plus: float = 1.0) -> None:
    now = time.time()
    clock.advance((now // 60 + 1) * 60 + plus - now)


async def uptime(runtime: Runtime) -> dict[tuple[str, int], int]:
    async with runtime.sessionmaker() as s:
        rows = (await s.execute(select(DeviceUptimeMinute))).scalars().all()
    return {(str(r.device_id), int(r.minute.timestamp() // 60)): r.seconds_up for r in rows}


async def fleet_events(runtime: Runtime) -> list[str]:
    async with runtime.sessionmaker() as s:
        return list((await s.execute(select(FleetEvent.kind).order_by(FleetEvent.id))).scalars())


async def test_api_outage_of_20_s_marks_no_device_offline_and_loses_no_uptime(
    pool: Pool, runtime: Runtime, clock: Clock
) -> None:
    """20 devices, their beats spread over the interval; the API is unreachable for 20 s and
    the agents come back over the 30 s of their backoff. Each sweep sees only a slice of
    them past the grace: judged slice by slice against a shrinking watched set, all of them
    went offline. Nobody may: the control plane did not observe that time."""
    start_of_next_minute(clock)
    fleet = await Fleet.join(pool, runtime, clock, 20)
    first_full = int(time.time() // 60) + 1
    await fleet.run(75)  # into the next minute and past it
    outage_start = time.time()
    await fleet.run(20, reachable=lambda m: False)
    fleet.back_after(time.time(), 29.0)
    await fleet.run(60)
    assert fleet.offline == []
    assert {await pool.status(m.device_id) for m in fleet.members} == {"online"}
    kinds = await fleet_events(runtime)
    assert "watch_lost" in kinds
    assert "watch_resumed" in kinds

    # Every whole minute around the outage counts as up for every device.
    last_full = int(time.time() // 60) - 1
    await fleet.run(61 - time.time() % 60)  # a beat in the next minute closes the last one
    await flush(runtime.task_context)
    up = await uptime(runtime)
    assert int(outage_start // 60) in range(first_full, last_full + 1)
    for m in fleet.members:
        for minute in range(first_full, last_full + 1):
            assert up.get((str(m.device_id), minute)) == 60, (minute, m.device_id)

    # The control plane is whole again: a device that dies now is found in its grace.
    dead = fleet.members[0]
    dead.up = False
    died = time.time()
    await fleet.run(40)
    assert [d for _, d in fleet.offline] == [str(dead.device_id)]
    assert fleet.offline[0][0] - died <= 15 + 5 + 2


async def test_storm_of_slices_is_held_against_the_fleet_it_began_with(
    pool: Pool, runtime: Runtime, clock: Clock, settings: Settings
) -> None:
    """Some devices keep beating (the intake works), most go silent a slice per second:
    the sweeper holds once the slices add up to a storm of the fleet as it was, not of
    what is left of it."""
    fleet = await Fleet.join(pool, runtime, clock, 20)
    await fleet.run(10)
    for m in fleet.members[:14]:
        m.up = False
    await fleet.run(25)
    assert any(r.holding for r in fleet.reports)
    # Marked before the hold: fewer than half of the 20.
    assert len(fleet.offline) <= 10
    assert "storm_hold_started" in await fleet_events(runtime)


async def test_an_overloaded_intake_slows_beats_down_instead_of_marking_devices_offline(
    pool: Pool, runtime: Runtime, clock: Clock
) -> None:
    """An overloaded control plane answers each beat later and later: every device's beats
    land 10 s apart, then 20 s, beyond the 15 s grace. Judged slice by slice, every one of
    them flapped offline; many devices late at once is the intake's lag, and the grace
    stretches with it."""
    fleet = await Fleet.join(pool, runtime, clock, 20)
    await fleet.run(10)
    for m in fleet.members:
        m.interval_s = 10.0
    await fleet.run(30)
    for m in fleet.members:
        m.interval_s = 20.0
    await fleet.run(60)
    assert fleet.offline == []
    assert max(r.stretch for r in fleet.reports) == 4.0
    for m in fleet.members:
        m.interval_s = 5.0
    await fleet.run(40)
    assert fleet.reports[-1].stretch == 1.0
    # Whole again: a device that dies is found within its grace.
    dead = fleet.members[0]
    dead.up = False
    died = time.time()
    await fleet.run(30)
    assert [d for _, d in fleet.offline] == [str(dead.device_id)]
    assert fleet.offline[0][0] - died <= 15 + 5 + 2


async def test_too_many_heartbeats_at_once_are_answered_503_with_retry_after(
    pool: Pool, runtime: Runtime, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = await Fleet.join(pool, runtime, clock, 6)
    monkeypatch.setattr(agents, "HEARTBEATS_IN_FLIGHT_MAX", 2)
    real_mget = runtime.cache.mget

    async def slow_mget(keys: list[str]) -> list[bytes | None]:
        await asyncio.sleep(0.2)
        return await real_mget(keys)

    monkeypatch.setattr(runtime.cache, "mget", slow_mget)
    answers = await asyncio.gather(
        *(fleet.client.post(HEARTBEAT, json=beat(5), headers=m.headers) for m in fleet.members)
    )
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 200, 503, 503, 503, 503]
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["content-type"].startswith("application/problem+json")
    assert busy.json()["code"] == "intake_busy"
    assert int(busy.headers["Retry-After"]) >= 1


async def test_a_device_offline_and_back_within_a_minute_keeps_both_parts_of_it(
    pool: Pool, runtime: Runtime, clock: Clock
) -> None:
    """Beats at :02, :07, :12, silence (offline at about :28), back at :40 until the next
    minute: the minute holds 12 s and 25 s of uptime. A flush that replaced instead of
    adding kept only the second part."""
    start_of_next_minute(clock, plus=0.0)
    fleet = await Fleet.join(pool, runtime, clock, 1)
    [m] = fleet.members
    minute = int(time.time() // 60) + 1
    clock.advance(minute * 60 + 2 - time.time())
    m.next_beat = time.time()
    fleet.next_sweep = time.time() + 1
    await fleet.run(10.5)  # :02, :07, :12
    m.up = False
    await fleet.run(18)  # silent past the grace: offline
    assert [d for _, d in fleet.offline] == [str(m.device_id)]
    await flush(runtime.task_context)  # the first part reaches the database on its own
    clock.advance(minute * 60 + 40 - time.time())
    m.up, m.next_beat = True, time.time()
    await fleet.run(20.5)  # :40, :45, :50, :55, :60 (rollover)
    await flush(runtime.task_context)
    await flush(runtime.task_context)  # twice: nothing counted twice
    up = await uptime(runtime)
    # (:00, :12] from the first run, (:35, :60] from the second (its first beat vouches
    # for one interval).
    assert up[(str(m.device_id), minute)] == 12 + 25


async def test_a_rollover_that_cannot_be_stored_loses_no_minute(
    pool: Pool, runtime: Runtime, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The beat that closes a minute meets a dropped Redis connection when it writes the
    closed minute: the beat fails as a whole, and the agent's next try closes it."""
    if not runtime.settings.redis_url:
        pytest.skip("a Redis connection to drop")
    import redis.asyncio.connection as rconn
    from redis.exceptions import ConnectionError as RedisConnectionError

    start_of_next_minute(clock, plus=0.0)
    fleet = await Fleet.join(pool, runtime, clock, 1)
    [m] = fleet.members
    minute = int(time.time() // 60) + 1
    clock.advance(minute * 60 + 1 - time.time())
    m.next_beat, fleet.next_sweep = time.time(), time.time() + 1
    await fleet.run(57)  # :01 … :56
    real_send = rconn.Connection.send_packed_command
    failing = {"on": True}

    async def send(self: Any, command: Any, check_health: bool = True) -> None:
        packed = command if isinstance(command, bytes | bytearray) else b"".join(command)
        if failing["on"] and b"devices:min" in packed:
            raise RedisConnectionError("Connection reset by peer")
        await real_send(self, command, check_health)

    monkeypatch.setattr(rconn.Connection, "send_packed_command", send)
    clock.advance(minute * 60 + 61 - time.time())
    r = await fleet.client.post(HEARTBEAT, json=beat(7), headers=m.headers)
    assert r.status_code == 503
    assert r.headers["Retry-After"]
    failing["on"] = False
    clock.advance(2)
    r = await fleet.client.post(HEARTBEAT, json=beat(8), headers=m.headers)
    assert r.status_code == 200
    await flush(runtime.task_context)
    up = await uptime(runtime)
    assert up[(str(m.device_id), minute)] == 60


async def test_flush_of_the_same_minute_by_two_workers_at_once_counts_it_once(
    pool: Pool, runtime: Runtime, clock: Clock
) -> None:
    start_of_next_minute(clock, plus=0.0)
    fleet = await Fleet.join(pool, runtime, clock, 3)
    minute = int(time.time() // 60) + 1
    clock.advance(minute * 60 + 1 - time.time())
    for m in fleet.members:
        m.next_beat = time.time()
    fleet.next_sweep = time.time() + 1
    await fleet.run(62)
    await asyncio.gather(flush(runtime.task_context), flush(runtime.task_context))
    await flush(runtime.task_context)
    up = await uptime(runtime)
    assert [up[(str(m.device_id), minute)] for m in fleet.members] == [60, 60, 60]


async def test_minute_parts_and_writes_are_all_or_nothing(cache_pair: Cache) -> None:
    from tesai.kit.cache import Writes

    w = Writes().set("a", "1").hset("h", "p1", "x", ttl_s=60).zadd("z", {"m": 1.0}).incr("n")
    w.hset("h", "p1", "x", ttl_s=60).hset("h", "p2", "y", ttl_s=60).delete("gone")
    await cache_pair.set("gone", "1")
    await cache_pair.apply(w)
    assert await cache_pair.get("a") == b"1"
    assert await cache_pair.get("gone") is None
    assert await cache_pair.hgetall_many(["h", "missing"]) == [{"p1": b"x", "p2": b"y"}, {}]
    assert await cache_pair.zrangebyscore("z", 0, 2) == [("m", 1.0)]
    assert await cache_pair.get("n") == b"1"


@pytest.fixture(params=["redis", "memory"])
async def cache_pair(request: pytest.FixtureRequest, settings: Settings) -> Any:
    from tesai.kit.cache import MemoryCache, RedisCache

    if request.param == "memory" or not settings.redis_url:
        yield MemoryCache()
        return
    rc = RedisCache(settings.redis_url, settings.redis_prefix)
    yield rc
    await rc.delete("a", "h", "z", "n", "gone")
    await rc.close()


async def test_beats_at_the_interval_always_find_their_connection_open(
    settings: Settings,
) -> None:
    """uvicorn with the server's keep-alive, the agent's client at the production interval:
    a beat one interval (and a late wake-up) after the last reuses the same connection.
    With both sides at 5 s, the server closed it while the agent was about to send."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tesai.agent.http import agent_client
    from tesai.devices.liveness import server_keep_alive_s
    from tests.fixtures.processes import free_port

    async def peer(request: Request) -> JSONResponse:
        """The agent's side of the connection: the same port is the same connection."""
        assert request.client is not None
        return JSONResponse({"port": request.client.port})

    app = Starlette(routes=[Route("/peer", peer)])

    interval = 5.0
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=server_keep_alive_s(interval),
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        async with agent_client(
            f"http://127.0.0.1:{port}", interval_s=interval, timeout_s=5
        ) as http:
            ports = []
            for _ in range(2):
                r = await http.get("/peer")
                ports.append(r.json()["port"])
                await asyncio.sleep(interval + 0.3)
            ports.append((await http.get("/peer")).json()["port"])
        assert len(set(ports)) == 1, ports
    finally:
        server.should_exit = True
        await serving
