"""The control plane's own evidence that a cluster's nodes are alive: its reading of the head's
Ray state (``tesai.clusters.evidence``), what makes a cluster run and a node billed.

A real database and cache; the head is ``tests.fixtures.ray_state.FakeRayHead`` (Ray's state
API node list, shaped as Ray 2.x answers it), the agents' heartbeats are the records the
heartbeat endpoint leaves. Real Ray: tests/e2e.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from tesai.clusters import evidence
from tesai.clusters.evidence import (
    NODE_ADDRESS_MISMATCH,
    NODE_RESOURCE_SHARED,
    Evidence,
    ExpectedNode,
    Matched,
    alive_ray_nodes,
    match_nodes,
    node_resource_name,
    same_host,
)
from tesai.clusters.models import ClusterEvent, ClusterNode, ClusterStatus, NodeState
from tesai.clusters.reconcile import reconcile
from tesai.clusters.service import secret_box
from tesai.devices.models import DeviceEvent
from tesai.devices.reputation import OFFENCES
from tesai.runtime import Runtime
from tests.clusters.conftest import AddDevice, Grant
from tests.clusters.test_reconcile import beat, cluster_row, meter, node_rows
from tests.fixtures.ray_state import FakeRayHead, fake_ray_head

U1, U2 = uuid.uuid4(), uuid.uuid4()


A, B, C = (node_resource_name(uuid.uuid4()) for _ in range(3))
HERE, THERE = ip_address("203.0.113.7"), ip_address("198.51.100.9")


def _answer(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"data": {"result": {"result": list(rows)}}}


def _row(ip: str, *resources: str, state: str = "ALIVE") -> dict[str, Any]:
    return {
        "state": state,
        "node_ip": ip,
        "resources_total": {"CPU": 4.0, "tesai_node_0": 1.0, **dict.fromkeys(resources, 1.0)},
    }


def test_the_alive_nodes_of_a_ray_state_answer_are_read_with_their_node_resources() -> None:
    head = FakeRayHead()
    head.alive = {A, B}
    head.dead = {C}
    listed = alive_ray_nodes(head.node_list())
    head.stop()
    assert len(listed) == 2
    assert {n.claims for n in listed} == {frozenset({A}), frozenset({B})}
    assert {n.ip for n in listed} == {ip_address("127.0.0.1")}
    # A resource a node has none of is not one it claims; the agent's own
    # tesai_node_<index> and other resources are no node resources.
    rows = [{"state": "ALIVE", "node_ip": "::ffff:10.0.0.1", "resources_total": {A: 0.0, B: 1}}]
    [node] = alive_ray_nodes(_answer(*rows))
    assert (node.claims, node.ip) == (frozenset({B}), ip_address("10.0.0.1"))
    [odd] = alive_ray_nodes(_answer({"state": "ALIVE", "node_ip": "nonsense"}))
    assert (odd.claims, odd.ip) == (frozenset(), None)
    for nonsense in ({}, {"data": {"result": {"result": "x"}}}, [], None, {"data": None}):
        with pytest.raises(ValueError, match="node list"):
            alive_ray_nodes(nonsense)


def test_a_node_counts_only_held_by_a_ray_node_of_its_own_at_its_agents_address() -> None:
    n1, n2, n3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    expected = {
        n1: ExpectedNode(A, HERE),
        n2: ExpectedNode(B, THERE),
        n3: ExpectedNode(C, HERE),
    }

    def match(*rows: dict[str, Any], allow_internal: bool = False) -> Matched:
        return match_nodes(expected, alive_ray_nodes(_answer(*rows)), allow_internal=allow_internal)

    honest = match(_row("203.0.113.7", A), _row("198.51.100.9", B))
    assert (honest.seen, honest.refused) == ([n1, n2], {})
    # One Ray node claiming two nodes' resources verifies neither.
    shared = match(_row("203.0.113.7", A, B))
    assert shared.seen == []
    assert shared.refused == {n1: NODE_RESOURCE_SHARED, n2: NODE_RESOURCE_SHARED}
    # Even claiming a node of another cluster (any tesai_node_<12 hex>).
    other = node_resource_name(uuid.uuid4())
    assert match(_row("203.0.113.7", A, other)).refused == {n1: NODE_RESOURCE_SHARED}
    # At an address the device's agent does not connect from: not seen.
    moved = match(_row("198.51.100.9", A), _row("198.51.100.9", B))
    assert (moved.seen, moved.refused) == ([n2], {n1: NODE_ADDRESS_MISMATCH})
    # Two Ray nodes of one host, each with its own resource: both seen.
    assert match(_row("203.0.113.7", A), _row("203.0.113.7", C)).seen == [n1, n3]
    # A Ray node of its own beside a sharing one: the own one counts.
    assert match(_row("203.0.113.7", A, B), _row("203.0.113.7", A)).seen == [n1]
    # A dead node and an unknown agent address count for nothing.
    assert match(_row("203.0.113.7", A, state="DEAD")) == Matched()
    unknown = match_nodes({n1: ExpectedNode(A, None)}, alive_ray_nodes(_answer(_row("::1", A))))
    assert unknown.refused == {n1: NODE_ADDRESS_MISMATCH}


def test_in_development_an_agent_on_loopback_may_run_its_ray_node_at_any_address() -> None:
    loopback, lan = ip_address("127.0.0.1"), ip_address("192.168.1.20")
    assert same_host(loopback, loopback, allow_internal=False)
    assert not same_host(lan, loopback, allow_internal=False)
    assert same_host(lan, loopback, allow_internal=True)
    # Only for an agent on loopback: one on another host is held to its own address.
    assert not same_host(THERE, HERE, allow_internal=True)
    assert not same_host(None, loopback, allow_internal=True)


def test_a_sighting_counts_within_the_window_and_silence_only_once_somebody_looked() -> None:
    now = 1_000.0
    seen = Evidence(seen={U1: now - 10}, watched_since=now - 100, gathered_at=now)
    assert seen.fresh(U1, now, 15)
    assert not seen.fresh(U1, now + 6, 15)
    assert not seen.fresh(U2, now, 15)  # never seen: never alive
    # Silence counts from the last sighting, or for a node never seen from when it ran.
    assert not seen.lapsed(U1, now, 15, None)
    assert seen.lapsed(U1, now + 6, 15, None)
    assert not seen.lapsed(U2, now, 15, now - 5)
    assert seen.lapsed(U2, now, 15, now - 20)
    # Gathering resumed 5 s ago (the control plane's restart): nobody looked for 15 s yet.
    restarted = Evidence(seen={U1: now - 300}, watched_since=now - 5, gathered_at=now)
    assert not restarted.lapsed(U1, now, 15, now - 600)
    # Gathering is not running, or never ran: no verdict (and nothing billed).
    stalled = Evidence(seen={U1: now - 300}, watched_since=now - 600, gathered_at=now - 60)
    assert not stalled.lapsed(U1, now, 15, now - 600)
    assert not stalled.fresh(U1, now, 15)
    assert not Evidence().lapsed(U1, now, 15, now - 600)
    assert evidence.unverified(seen, [U1, U2], now=now, window_s=15) == [U2]


async def test_a_cluster_runs_and_is_billed_only_on_what_the_control_plane_sees_in_ray(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(2):
        await add_device(gpu_model=None, gpus=0, price=3_600_000)  # 1,000 µUSDC per second
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    r = await client.post(
        "/api/v1/clusters", json={"request": {"nodes": 2, "duration_s": 3600}}, headers=headers
    )
    assert r.status_code == 201, r.text
    cid = uuid.UUID(r.json()["id"])
    cluster = await cluster_row(runtime, cid)
    token = secret_box(runtime.settings).open(cluster.ray_token_sealed)
    ctx = runtime.task_context

    with fake_ray_head(token="not the cluster's") as head:

        async def agents_say_running() -> list[ClusterNode]:
            """Every agent whose join was sent reports its node running, the head with
            every node of the cluster alive; the control plane reads the head's Ray state."""
            await reconcile(ctx)
            nodes = [n for n in await node_rows(runtime, cid) if n.released_at is None]
            for n in nodes:
                if n.state is NodeState.assigned:
                    continue
                report = {"cluster_id": str(cid), "role": n.role.value, "state": "running"}
                if n.role.value == "head":
                    report |= {
                        "ray_address": "127.0.0.1:6379",
                        "dashboard_port": head.port,
                        "alive_nodes": 2,
                    }
                await beat(runtime, n.device_id, [report], peer="127.0.0.1")
            await evidence.gather(ctx)
            await reconcile(ctx)
            return [n for n in await node_rows(runtime, cid) if n.released_at is None]

        # The agents' word alone, and a head that does not take the cluster's token.
        for _ in range(4):
            nodes = await agents_say_running()
        assert {n.state for n in nodes} == {NodeState.running}  # their word, as a hint
        assert (await cluster_row(runtime, cid)).status is ClusterStatus.provisioning
        headnode = next(n for n in nodes if n.role.value == "head")
        worker = next(n for n in nodes if n.role.value == "worker")
        assert headnode.dashboard_url == f"http://127.0.0.1:{head.port}"
        assert head.requests
        assert {auth for _, auth in head.requests} == {f"Bearer {token}"}

        # Ray lists the head only: not every node is seen, the cluster does not run.
        head.token = token
        head.alive = {node_resource_name(headnode.id)}
        await agents_say_running()
        assert (await cluster_row(runtime, cid)).status is ClusterStatus.provisioning

        # Every node seen: running, and billed from then on.
        head.alive.add(node_resource_name(worker.id))
        await agents_say_running()
        assert (await cluster_row(runtime, cid)).status is ClusterStatus.running
        await meter(runtime, 4)
        await reconcile(ctx)
        billed = {n.id: n.healthy_seconds for n in await node_rows(runtime, cid)}
        assert all(4 <= s <= 6 for s in billed.values()), billed

        # The worker's Ray node is gone while its agent still says it runs: once the window
        # has passed without a sighting, the cluster is degraded and the worker not billed.
        head.alive.discard(node_resource_name(worker.id))
        head.dead.add(node_resource_name(worker.id))
        await evidence.gather(ctx)
        # As if the window had passed since: the last sighting, the node's start and the
        # start of gathering are that long ago.
        long_ago = time.time() - runtime.settings.ray_evidence_window_s - 1
        await runtime.cache.zadd(evidence.RAY_SEEN, {str(worker.id): long_ago})
        await runtime.cache.set(evidence.WATCHED_SINCE, repr(long_ago))
        async with runtime.sessionmaker.begin() as s:
            await s.execute(
                update(ClusterNode)
                .where(ClusterNode.cluster_id == cid)
                .values(running_at=datetime.fromtimestamp(long_ago, UTC))
            )
        await reconcile(ctx)
        c = await cluster_row(runtime, cid)
        assert (c.status, c.status_reason) == (ClusterStatus.degraded, "node_unverified")
        await meter(runtime, 4)
        await reconcile(ctx)
        later = {n.id: n.healthy_seconds for n in await node_rows(runtime, cid)}
        assert later[worker.id] == billed[worker.id]
        assert later[headnode.id] >= billed[headnode.id] + 4

        # Its agent still says it runs, and the head's Ray state answers without it: a
        # caught lie, charged to the worker's device once however many runs find it.
        said = {"cluster_id": str(cid), "role": "worker", "state": "running"}
        for _ in range(3):
            await beat(runtime, worker.device_id, [said], peer="127.0.0.1")
            await evidence.gather(ctx)
        caught = await offences(runtime, worker.device_id)
        assert [e.reason for e in caught] == ["node_unverified"]
        assert str(worker.id) in caught[0].message
        assert (caught[0].from_status, caught[0].to_status) == ("busy", "busy")
        assert await offences(runtime, headnode.device_id) == []

        # Seen again: running again, and billed again from the first sighting.
        head.dead.clear()
        head.alive.add(node_resource_name(worker.id))
        await agents_say_running()
        c = await cluster_row(runtime, cid)
        assert (c.status, c.status_reason) == (ClusterStatus.running, "node_verified")
        await meter(runtime, 4)
        await reconcile(ctx)
        again = {n.id: n.healthy_seconds for n in await node_rows(runtime, cid)}
        assert 3 <= again[worker.id] - later[worker.id] <= 5, (later, again)

    async with runtime.sessionmaker() as s:
        reasons = list(
            (
                await s.scalars(
                    select(ClusterEvent.reason)
                    .where(ClusterEvent.cluster_id == cid)
                    .order_by(ClusterEvent.id)
                )
            ).all()
        )
    assert reasons[-3:] == ["all_nodes_alive", "node_unverified", "node_verified"]
    # Seen again: that episode is over, and no other began.
    assert len(await offences(runtime, worker.device_id)) == 1


async def offences(runtime: Runtime, device_id: uuid.UUID) -> list[DeviceEvent]:
    async with runtime.sessionmaker() as s:
        rows = await s.scalars(
            select(DeviceEvent)
            .where(DeviceEvent.device_id == device_id, DeviceEvent.reason.in_(OFFENCES))
            .order_by(DeviceEvent.id)
        )
        return list(rows.all())
