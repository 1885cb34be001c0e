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

import httpx
import pytest
from sqlalchemy import select, update

from tesai.clusters import evidence
from tesai.clusters.evidence import Evidence, alive_resources, node_resource_name
from tesai.clusters.models import ClusterEvent, ClusterNode, ClusterStatus, NodeState
from tesai.clusters.reconcile import reconcile
from tesai.clusters.service import secret_box
from tesai.runtime import Runtime
from tests.clusters.conftest import AddDevice, Grant
from tests.clusters.test_reconcile import beat, cluster_row, meter, node_rows
from tests.fixtures.ray_state import FakeRayHead, fake_ray_head

U1, U2 = uuid.uuid4(), uuid.uuid4()


def test_the_alive_nodes_of_a_ray_state_answer_are_read_by_their_resources() -> None:
    head = FakeRayHead()
    head.alive = {"tesai_node_a", "tesai_node_b"}
    head.dead = {"tesai_node_c"}
    assert alive_resources(head.node_list()) >= {"tesai_node_a", "tesai_node_b", "CPU"}
    assert "tesai_node_c" not in alive_resources(head.node_list())
    head.stop()
    # A resource a node has none of is not one it carries.
    rows = [{"state": "ALIVE", "resources_total": {"tesai_node_d": 0.0, "tesai_node_e": 1}}]
    assert alive_resources({"data": {"result": {"result": rows}}}) == {"tesai_node_e"}
    for nonsense in ({}, {"data": {"result": {"result": "x"}}}, [], None, {"data": None}):
        with pytest.raises(ValueError, match="node list"):
            alive_resources(nonsense)


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
