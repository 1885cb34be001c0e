"""The reconciler on a real database and cache, fed the heartbeat records agents leave.

The agents' side (real `ray start`, real heartbeats) is covered end to end in
tests/e2e; here the latest-heartbeat records are written the way the heartbeat endpoint
writes them, and the control plane's sightings of the nodes in their head's Ray state the
way its evidence task records them (``vouch``; the task itself: test_ray_evidence.py), to
drive each branch quickly and exactly.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import func, select, update

from tesai.billing import ledger
from tesai.billing import service as billing
from tesai.billing.models import NodeMeter, UsageBucket
from tesai.clusters import evidence
from tesai.clusters.models import Cluster, ClusterEvent, ClusterNode, ClusterStatus, NodeState
from tesai.clusters.reconcile import reconcile
from tesai.clusters.service import hold_ref
from tesai.clusters.usage import meter_all
from tesai.db import run_after_commit
from tesai.devices import agents, keys
from tesai.devices.deps import DeviceAuth
from tesai.devices.models import Device, DeviceStatus
from tesai.devices.service import record_transition
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tests.clusters.conftest import AddDevice, Grant


async def beat(
    runtime: Runtime, device_id: uuid.UUID, nodes: list[dict[str, Any]], peer: str | None = None
) -> None:
    """The record a heartbeat leaves (``peer``: the address it came from, when given)."""
    record = {"at": time.time(), "seq": 1, "status": "ready", "telemetry": {}, "nodes": nodes}
    if peer is not None:
        record["peer"] = peer
    await runtime.cache.set(keys.telemetry(str(device_id)), orjson.dumps(record), ttl_s=300)
    await runtime.cache.zadd(keys.LIVENESS, {str(device_id): record["at"]})


async def vouch(runtime: Runtime, node_ids: list[uuid.UUID], at: float | None = None) -> None:
    """Record that the control plane saw these nodes ALIVE in their head's Ray state."""
    await evidence.record(
        runtime.cache,
        node_ids,
        now=time.time() if at is None else at,
        window_s=runtime.settings.ray_evidence_window_s,
    )


async def meter(runtime: Runtime, seconds: int) -> None:
    """Let ``seconds`` pass for the metering tick: the devices heartbeating now heartbeat on
    (the silent ones stay silent), the nodes seen now are seen on (the unseen stay unseen),
    and the tick runs that much later than the meters."""
    async with runtime.sessionmaker() as s:
        latest = await s.scalar(select(func.max(NodeMeter.metered_until)))
    at = max(latest or utcnow(), utcnow()) + timedelta(seconds=seconds)
    fresh = time.time() - 1.5 * runtime.settings.heartbeat_interval_s
    watched = await runtime.cache.zrangebyscore(keys.LIVENESS, fresh, float("inf"))
    if watched:
        await runtime.cache.zadd(keys.LIVENESS, {d: at.timestamp() for d, _ in watched})
    seen_after = time.time() - runtime.settings.ray_evidence_window_s
    seen = await runtime.cache.zrangebyscore(evidence.RAY_SEEN, seen_after, float("inf"))
    if seen:
        await runtime.cache.zadd(evidence.RAY_SEEN, {n: at.timestamp() for n, _ in seen})
    await meter_all(runtime.task_context, now=at)


async def node_rows(runtime: Runtime, cluster_id: uuid.UUID) -> list[ClusterNode]:
    async with runtime.sessionmaker() as s:
        rows = await s.execute(
            select(ClusterNode)
            .where(ClusterNode.cluster_id == cluster_id)
            .order_by(ClusterNode.index)
        )
        return list(rows.scalars())


async def cluster_row(runtime: Runtime, cluster_id: uuid.UUID) -> Cluster:
    async with runtime.sessionmaker() as s:
        c = await s.get(Cluster, cluster_id)
        assert c is not None
        return c


async def bring_up(
    runtime: Runtime, cid: uuid.UUID, extra: dict[str, Any] | None = None
) -> list[ClusterNode]:
    """Let the reconciler send joins and the 'agents' report running, and the control plane
    see their nodes in Ray, until the cluster runs."""
    for _ in range(4):
        await reconcile(runtime.task_context)
        nodes = [n for n in await node_rows(runtime, cid) if n.released_at is None]
        for n in nodes:
            if n.state is NodeState.assigned:
                continue
            report: dict[str, Any] = {
                "cluster_id": str(cid),
                "role": n.role.value,
                "state": "running",
            }
            if n.role.value == "head":
                report |= {
                    "ray_address": "127.0.0.1:6379",
                    "dashboard_port": 8265,
                    "alive_nodes": len(nodes),
                }
                report |= extra or {}
            await beat(runtime, n.device_id, [report])
        await vouch(runtime, [n.id for n in nodes if n.state is not NodeState.assigned])
    return [n for n in await node_rows(runtime, cid) if n.released_at is None]


async def test_running_meters_healthy_time_and_a_silent_node_is_not_billed(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(2):
        await add_device(gpu_model=None, gpus=0, price=3_600_000)  # $3.60 per node-hour = 1,000 µ/s
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    r = await client.post(
        "/api/v1/clusters", json={"request": {"nodes": 2, "duration_s": 3600}}, headers=headers
    )
    cid = uuid.UUID(r.json()["id"])
    nodes = await bring_up(runtime, cid)
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.running
    assert {n.state for n in nodes} == {NodeState.running}

    # 4 s of healthy time for both nodes, metered by the tick, shown by the reconciler.
    await meter(runtime, 4)
    await reconcile(runtime.task_context)
    after = await node_rows(runtime, cid)
    assert all(4 <= n.healthy_seconds <= 6 for n in after), [n.healthy_seconds for n in after]

    # The worker's device stops heartbeating: its time is not billed.
    worker = next(n for n in after if n.role.value == "worker")
    await runtime.cache.delete(keys.telemetry(str(worker.device_id)))
    await runtime.cache.zadd(keys.LIVENESS, {str(worker.device_id): time.time() - 60})
    await meter(runtime, 4)
    await reconcile(runtime.task_context)
    later = {n.id: n for n in await node_rows(runtime, cid)}
    assert (
        later[worker.id].healthy_seconds
        == next(n for n in after if n.id == worker.id).healthy_seconds
    )
    head = next(n for n in after if n.role.value == "head")
    assert later[head.id].healthy_seconds >= head.healthy_seconds + 4

    # Terminate: providers are paid exactly the healthy seconds, the rest returns.
    await client.post(f"/api/v1/clusters/{cid}/terminate", headers=headers)
    await reconcile(runtime.task_context)
    final = await node_rows(runtime, cid)
    paid_seconds = sum(n.healthy_seconds for n in final)
    async with runtime.sessionmaker() as s:
        available = await ledger.balance_of(s, billing.available(user.id))
        held = await ledger.balance_of(s, billing.held(user.id, hold_ref(cid)))
    assert held == 0
    charged = 100_000_000 - available
    # 1,000 µ/s per node to providers + 10 % fee.
    assert charged == paid_seconds * 1000 + paid_seconds * 100
    # The usage statement's buckets hold exactly those seconds, all settled.
    async with runtime.sessionmaker() as s:
        buckets = list(
            (await s.execute(select(UsageBucket).where(UsageBucket.cluster_id == cid))).scalars()
        )
    assert sum(b.seconds for b in buckets) == paid_seconds
    assert all(b.settled for b in buckets)


async def test_autoscaler_grows_under_demand_and_shrinks_when_idle(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    runtime.settings.autoscale_up_after_s = 0
    runtime.settings.autoscale_idle_timeout_s = 0
    for _ in range(3):
        await add_device(gpu_model=None, gpus=0)
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    body = {"request": {"nodes": 1, "min_gpus": 1, "max_gpus": 2, "duration_s": 3600}}
    r = await client.post("/api/v1/clusters", json=body, headers=headers)
    assert r.status_code == 201, r.text
    cid = uuid.UUID(r.json()["id"])
    hold_before = r.json()["hold_micro"]
    demand = {"pending_demand": [{"shape": {"CPU": 1.0}, "count": 4}], "idle_node_ids": []}
    await bring_up(runtime, cid, demand)
    await reconcile(runtime.task_context)  # demand seen
    await reconcile(runtime.task_context)  # persisted → add
    nodes = [n for n in await node_rows(runtime, cid) if n.released_at is None]
    assert len(nodes) == 2
    c = await cluster_row(runtime, cid)
    assert c.gpus == 2
    assert c.hold_micro > hold_before
    # Never past max, however long the demand lasts.
    await bring_up(runtime, cid, demand)
    await reconcile(runtime.task_context)
    assert len([n for n in await node_rows(runtime, cid) if n.released_at is None]) == 2

    # Idle: the worker is removed, the head stays (min 1).
    worker = next(n for n in nodes if n.role.value == "worker")
    idle = {"pending_demand": [], "idle_node_ids": [f"index:{worker.index}", "index:0"]}
    await bring_up(runtime, cid, idle)
    await reconcile(runtime.task_context)
    await reconcile(runtime.task_context)
    live = [n for n in await node_rows(runtime, cid) if n.released_at is None]
    assert [n.role.value for n in live] == ["head"]
    async with runtime.sessionmaker() as s:
        device = await s.get(Device, worker.device_id)
        assert device is not None
        assert device.status is DeviceStatus.online
        reasons = (await s.execute(select(Cluster).where(Cluster.id == cid))).scalar_one()
    assert reasons.gpus == 1
    detail = (await client.get(f"/api/v1/clusters/{cid}", headers=headers)).json()
    assert [e["reason"] for e in detail["events"] if e["reason"].startswith("scale")] == [
        "scaled_up",
        "scaled_down",
    ]


async def test_a_cluster_over_its_budget_is_stopped_with_that_reason(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device(gpu_model=None, gpus=0, price=3_600_000)  # 1,000 µUSDC per second
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    body = {"request": {"nodes": 1, "duration_s": 3600}, "budget_micro": 2_200}  # 2 s
    cid = uuid.UUID(
        (await client.post("/api/v1/clusters", json=body, headers=headers)).json()["id"]
    )
    await bring_up(runtime, cid)
    await meter(runtime, 5)  # ~5 s: over budget
    await reconcile(runtime.task_context)
    await reconcile(runtime.task_context)  # stops it
    await reconcile(runtime.task_context)  # releases and settles
    detail = (await client.get(f"/api/v1/clusters/{cid}", headers=headers)).json()
    assert detail["status"] == "terminated"
    assert "budget_exhausted" in [e["reason"] for e in detail["events"]]
    async with runtime.sessionmaker() as s:
        assert await ledger.balance_of(s, billing.held(user.id, hold_ref(cid))) == 0


async def _books(runtime: Runtime, user_id: uuid.UUID, cid: uuid.UUID) -> tuple[int, int, int]:
    """(billed seconds, customer charged, unsettled buckets) of an ended cluster whose
    customer was granted 100 USDC."""
    async with runtime.sessionmaker() as s:
        billed = await s.scalar(
            select(func.coalesce(func.sum(NodeMeter.billed_seconds), 0)).where(
                NodeMeter.cluster_id == cid
            )
        )
        unsettled = await s.scalar(
            select(func.count()).where(
                UsageBucket.cluster_id == cid, UsageBucket.settled.is_(False)
            )
        )
        available = await ledger.balance_of(s, billing.available(user_id))
        assert await ledger.balance_of(s, billing.held(user_id, hold_ref(cid))) == 0
    return int(billed or 0), 100_000_000 - available, int(unsettled or 0)


async def _rent(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> uuid.UUID:
    r = await client.post("/api/v1/clusters", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["id"])


async def _end(
    client: httpx.AsyncClient, runtime: Runtime, cid: uuid.UUID, headers: dict[str, str]
) -> None:
    await client.post(f"/api/v1/clusters/{cid}/terminate", headers=headers)
    await reconcile(runtime.task_context)
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.terminated


async def test_a_60_s_cluster_is_never_billed_past_its_paid_end(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    """The tick runs 90 s after a 60 s cluster started (the reconciler has not stopped it
    yet): 60 s at most are billed, and the hold made for 60 s pays all of it."""
    await add_device(gpu_model=None, gpus=0, price=3_600_000)  # 1,000 µUSDC per second
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cid = await _rent(client, headers, request={"nodes": 1, "duration_s": 60})
    await bring_up(runtime, cid)
    for _ in range(3):  # ticks up to 90 s in (a gap longer than the stall cap is not billed)
        await meter(runtime, 30)
    await _end(client, runtime, cid, headers)
    billed, charged, unsettled = await _books(runtime, user.id, cid)
    assert 55 <= billed <= 60
    assert charged == billed * 1100  # every billed second paid: provider + 10 % fee
    assert unsettled == 0


async def test_an_extension_moves_the_paid_end_and_billing_follows_it(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device(gpu_model=None, gpus=0, price=3_600_000)
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cid = await _rent(client, headers, request={"nodes": 1, "duration_s": 60})
    await bring_up(runtime, cid)
    await meter(runtime, 30)
    r = await client.post(
        f"/api/v1/clusters/{cid}/extend",
        json={"duration_s": 60},
        headers=headers | {"Idempotency-Key": f"extend-{cid}"},
    )
    assert r.status_code == 200, r.text
    for _ in range(2):  # past the first end: billed, the end moved
        await meter(runtime, 30)
    async with runtime.sessionmaker() as s:
        meter_row = (
            await s.execute(select(NodeMeter).where(NodeMeter.cluster_id == cid))
        ).scalar_one()
        assert meter_row.billed_seconds >= 85
    for _ in range(2):  # past the new end: not billed
        await meter(runtime, 30)
    await _end(client, runtime, cid, headers)
    billed, charged, unsettled = await _books(runtime, user.id, cid)
    assert 115 <= billed <= 120
    assert charged == billed * 1100
    assert unsettled == 0


async def test_a_cluster_stops_at_its_budget_not_a_tick_after_it(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    """A budget of 5,500 at 1,100 µUSDC/s buys 5 s: a tick 7 s in bills 5 s (5,500, not
    7,700), and the reconciler stops the cluster there."""
    await add_device(gpu_model=None, gpus=0, price=3_600_000)
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cid = await _rent(client, headers, request={"nodes": 1, "duration_s": 3600}, budget_micro=5_500)
    await bring_up(runtime, cid)
    await meter(runtime, 7)
    await reconcile(runtime.task_context)  # out of money: stops it
    c = await cluster_row(runtime, cid)
    assert (c.status, c.status_reason) == (ClusterStatus.terminating, "budget_exhausted")
    await reconcile(runtime.task_context)  # releases and settles
    billed, charged, unsettled = await _books(runtime, user.id, cid)
    assert (billed, charged, unsettled) == (5, 5_500, 0)


async def test_a_lost_node_is_not_replaced_by_a_dearer_device_than_its_hold_was_made_for(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    """A 1 USDC/h node is lost and the only free device costs 60 USDC/h: no replacement is
    placed there (its usage would outrun the hold); one at the same price or less is."""
    for _ in range(2):
        await add_device(gpu_model=None, gpus=0, price=1_000_000)
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cid = await _rent(client, headers, request={"nodes": 2, "duration_s": 3600})
    nodes = await bring_up(runtime, cid)
    assert {n.price_per_hour_micro for n in nodes} == {1_000_000}
    dear = await add_device(gpu_model=None, gpus=0, price=60_000_000)

    async def lose(device_id: uuid.UUID) -> None:
        async with runtime.sessionmaker.begin() as s:
            d = await s.get(Device, device_id)
            assert d is not None
            record_transition(s, d, DeviceStatus.offline, "missed_heartbeats")
        await reconcile(runtime.task_context)

    await lose(nodes[1].device_id)
    live = [n for n in await node_rows(runtime, cid) if n.released_at is None]
    assert dear.id not in {n.device_id for n in live}
    detail = (await client.get(f"/api/v1/clusters/{cid}", headers=headers)).json()
    assert [e["reason"] for e in detail["events"]].count("no_replacement") == 1

    cheaper = await add_device(gpu_model=None, gpus=0, price=500_000)
    await lose(nodes[0].device_id)
    live = [n for n in await node_rows(runtime, cid) if n.released_at is None]
    assert [(n.device_id, n.price_per_hour_micro) for n in live] == [(cheaper.id, 500_000)]


async def _events(client: httpx.AsyncClient, cid: uuid.UUID, headers: dict[str, str]) -> list[str]:
    detail = (await client.get(f"/api/v1/clusters/{cid}", headers=headers)).json()
    return [e["reason"] for e in detail["events"]]


async def _live(runtime: Runtime, cid: uuid.UUID) -> list[ClusterNode]:
    return [n for n in await node_rows(runtime, cid) if n.released_at is None]


async def test_a_cluster_re_forms_on_its_own_device_when_that_comes_back(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    """`tesai up` restarted under a running 1-node cluster: its only device left, so no
    replacement could be placed when the head was lost. Once the device is back online and
    free, the next pass puts the head back on it (before any other free device) and the
    cluster runs again; a second restart soon after heals the same way."""
    device = await add_device(gpu_model=None, gpus=0)
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cid = await _rent(client, headers, request={"nodes": 1, "duration_s": 3600})
    await bring_up(runtime, cid)
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.running

    async def ctrl_c() -> None:
        """The agent says goodbye and its Ray node stops with it: no device is left."""
        tried = (await _events(client, cid, headers)).count("no_replacement")
        async with runtime.sessionmaker() as s, s.begin():
            auth = DeviceAuth(device.id, device.provider_id, uuid.uuid4(), time.time() + 60, "")
            await agents.leave(s, runtime.cache, auth, "agent_stopped")
        await run_after_commit(s)
        await runtime.cache.delete(keys.telemetry(str(device.id)))
        await reconcile(runtime.task_context)
        c = await cluster_row(runtime, cid)
        assert (c.status, c.status_reason) == (ClusterStatus.degraded, "head_lost")
        assert (await _events(client, cid, headers)).count("no_replacement") == tried + 1
        await reconcile(runtime.task_context)
        assert await _live(runtime, cid) == []

    async def back_up() -> None:
        """The device is back: online, heartbeating, no Ray node of the cluster on it."""
        async with runtime.sessionmaker.begin() as s:
            d = await s.get(Device, device.id)
            assert d is not None
            record_transition(s, d, DeviceStatus.online, "heartbeat_resumed")
        await beat(runtime, device.id, [])
        nodes = await bring_up(runtime, cid)
        assert [(n.device_id, n.role.value, n.state) for n in nodes] == [
            (device.id, "head", NodeState.running)
        ]
        c = await cluster_row(runtime, cid)
        assert (c.status, c.status_reason) == (ClusterStatus.running, "node_replaced")

    await ctrl_c()
    other = await add_device(gpu_model=None, gpus=0)  # frees up before the device is back
    await back_up()
    async with runtime.sessionmaker.begin() as s:
        spare = await s.get(Device, other.id)
        assert spare is not None
        assert spare.status is DeviceStatus.online  # not taken: the cluster's own came first
        record_transition(s, spare, DeviceStatus.offline, "missed_heartbeats")

    # Restarted again within the flap window: the same device is still the cluster's.
    await ctrl_c()
    await back_up()


async def test_a_lost_node_is_replaced_once_a_device_frees_up_backing_off_meanwhile(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    device = await add_device(gpu_model=None, gpus=0)
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cid = await _rent(client, headers, request={"nodes": 1, "duration_s": 3600})
    await bring_up(runtime, cid)
    async with runtime.sessionmaker.begin() as s:
        d = await s.get(Device, device.id)
        assert d is not None
        record_transition(s, d, DeviceStatus.offline, "missed_heartbeats")
    await reconcile(runtime.task_context)
    assert (await _events(client, cid, headers)).count("no_replacement") == 1

    spare = await add_device(gpu_model=None, gpus=0)
    await reconcile(runtime.task_context)  # the try just failed: backing off
    assert await _live(runtime, cid) == []

    # The backoff since that try runs out (time moved on by 10 s).
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(ClusterEvent)
            .where(ClusterEvent.cluster_id == cid)
            .values(at=ClusterEvent.at - timedelta(seconds=10))
        )
    nodes = await bring_up(runtime, cid)
    assert [(n.device_id, n.state) for n in nodes] == [(spare.id, NodeState.running)]
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.running
    events = await _events(client, cid, headers)
    assert events.count("no_replacement") == 1
    assert "node_replaced" in events
