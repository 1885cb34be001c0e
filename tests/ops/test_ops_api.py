"""The operations API on a real database and cache, with the real reconciler.

Agents' heartbeat records are written the way the heartbeat endpoint writes them (as in
tests/clusters/test_reconcile.py); placement, replacement, metering and release are the
production code paths.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from tesai.audit.models import AuditEvent
from tesai.billing.models import NodeMeter
from tesai.clusters.models import ClusterEvent, ClusterNode, ClusterStatus, NodeState
from tesai.clusters.reconcile import reconcile
from tesai.devices.models import Device, DeviceEvent, DeviceStatus
from tesai.devices.service import record_transition
from tesai.kit.time import utcnow
from tesai.ops.service import finish_operations
from tesai.runtime import Runtime
from tests.clusters.conftest import AddDevice, Grant
from tests.clusters.test_reconcile import beat, bring_up, cluster_row, node_rows

OPS = "/api/v1/internal/ops"


async def audit_rows(runtime: Runtime, action: str) -> list[AuditEvent]:
    async with runtime.sessionmaker() as s:
        rows = await s.execute(select(AuditEvent).where(AuditEvent.action == action))
        return list(rows.scalars())


async def device_row(runtime: Runtime, device_id: uuid.UUID) -> Device:
    async with runtime.sessionmaker() as s:
        d = await s.get(Device, device_id)
        assert d is not None
        return d


async def offered(client: httpx.AsyncClient, headers: dict[str, str]) -> set[str]:
    r = await client.get("/api/v1/offers", headers=headers)
    assert r.status_code == 200, r.text
    return {o["device_id"] for o in r.json()["offers"]}


async def rent(client: httpx.AsyncClient, headers: dict[str, str], nodes: int) -> uuid.UUID:
    body: dict[str, Any] = {"request": {"nodes": nodes, "duration_s": 3600}}
    r = await client.post("/api/v1/clusters", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["id"])


async def test_drain_takes_an_idle_device_out_of_offers_and_undrain_brings_it_back(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice
) -> None:
    provider, provider_headers = await make_user(roles=("provider",))
    device = await add_device(gpu_model=None, gpus=0, provider_id=provider.id)
    other = await add_device(gpu_model=None, gpus=0)
    admin, admin_headers = await make_user(roles=("admin",))
    _, customer_headers = await make_user()
    assert str(device.id) in await offered(client, customer_headers)

    # Customers (and providers) may not.
    r = await client.post(f"{OPS}/devices/{device.id}/drain", headers=customer_headers)
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (await device_row(runtime, device.id)).status is DeviceStatus.online

    r = await client.post(
        f"{OPS}/devices/{device.id}/drain", json={"reason": "disk swap"}, headers=admin_headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "drained"
    assert r.json()["live_nodes"] == 0
    assert str(device.id) not in await offered(client, customer_headers)
    assert str(other.id) in await offered(client, customer_headers)
    # The provider sees it, with the reason code.
    mine = await client.get(f"/api/v1/provider/devices/{device.id}", headers=provider_headers)
    assert mine.json()["device"]["status"] == "drained"
    assert mine.json()["device"]["status_reason"] == "drained"
    [row] = await audit_rows(runtime, "ops.device_drain")
    assert row.actor_user_id == admin.id
    assert row.subject_id == str(device.id)
    assert row.details["reason"] == "disk swap"
    # Draining again changes nothing but is recorded.
    r = await client.post(f"{OPS}/devices/{device.id}/drain", headers=admin_headers)
    assert r.status_code == 200
    assert r.json()["status"] == "drained"

    # Undrain: heartbeating and verified → online and offered again.
    await beat(runtime, device.id, [])
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(Device)
            .where(Device.id == device.id)
            .values(agent_version="1", verified_at=utcnow())
        )
    r = await client.post(f"{OPS}/devices/{device.id}/undrain", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "online"
    assert str(device.id) in await offered(client, customer_headers)
    assert len(await audit_rows(runtime, "ops.device_undrain")) == 1

    # Undrain of a device that is not drained; unknown ids; a device outside the pool.
    r = await client.post(f"{OPS}/devices/{device.id}/undrain", headers=admin_headers)
    assert r.status_code == 409
    assert r.json()["code"] == "device_status_conflict"
    r = await client.post(f"{OPS}/devices/{uuid.uuid4()}/drain", headers=admin_headers)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    async with runtime.sessionmaker.begin() as s:
        d = await s.get(Device, other.id)
        assert d is not None
        record_transition(s, d, DeviceStatus.disabled, "disabled_by_admin")
    r = await client.post(f"{OPS}/devices/{other.id}/drain", headers=admin_headers)
    assert r.status_code == 409
    assert (await device_row(runtime, other.id)).status is DeviceStatus.disabled
    r = await client.post(
        f"{OPS}/devices/{device.id}/drain", json={"reason": "x" * 201}, headers=admin_headers
    )
    assert r.status_code == 422
    assert (await device_row(runtime, device.id)).status is DeviceStatus.online


async def test_a_draining_device_finishes_its_node_then_is_drained(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    device = await add_device(gpu_model=None, gpus=0)
    _, admin_headers = await make_user(roles=("admin",))
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cid = await rent(client, headers, 1)
    await bring_up(runtime, cid)
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.running

    r = await client.post(f"{OPS}/devices/{device.id}/drain", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "draining"
    assert r.json()["live_nodes"] == 1
    # The node keeps running and billed; nothing new is placed on the device.
    await finish_operations(runtime.task_context)
    await reconcile(runtime.task_context)
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.running
    assert (await device_row(runtime, device.id)).status is DeviceStatus.draining
    r = await client.post("/api/v1/quotes", json={"nodes": 1, "duration_s": 600}, headers=headers)
    assert r.status_code == 409, r.text

    # The cluster ends: the release leaves the device out of the pool, then drained.
    await client.post(f"/api/v1/clusters/{cid}/terminate", headers=headers)
    await reconcile(runtime.task_context)
    assert (await device_row(runtime, device.id)).status is DeviceStatus.draining
    assert (await finish_operations(runtime.task_context))["drained"] == 1
    assert (await device_row(runtime, device.id)).status is DeviceStatus.drained


async def test_a_draining_device_that_goes_offline_is_drained_once_its_node_is_replaced(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    device = await add_device(gpu_model=None, gpus=0)
    _, admin_headers = await make_user(roles=("admin",))
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cid = await rent(client, headers, 1)
    await bring_up(runtime, cid)
    spare = await add_device(gpu_model=None, gpus=0)
    r = await client.post(f"{OPS}/devices/{device.id}/drain", headers=admin_headers)
    assert r.json()["status"] == "draining"
    async with runtime.sessionmaker.begin() as s:  # the sweeper's move
        d = await s.get(Device, device.id)
        assert d is not None
        record_transition(s, d, DeviceStatus.offline, "missed_heartbeats")
    # Its node is still live until the reconciler sees the loss: not drained yet.
    r = await client.post(f"{OPS}/devices/{device.id}/drain", headers=admin_headers)
    assert r.status_code == 409
    assert (await finish_operations(runtime.task_context))["drained"] == 0
    await reconcile(runtime.task_context)
    live = [n for n in await node_rows(runtime, cid) if n.released_at is None]
    assert [n.device_id for n in live] == [spare.id]
    assert (await finish_operations(runtime.task_context))["drained"] == 1
    assert (await device_row(runtime, device.id)).status is DeviceStatus.drained


async def test_move_places_a_replacement_and_the_old_node_leaves_once_it_runs(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    devices = [await add_device(gpu_model=None, gpus=0) for _ in range(2)]
    admin, admin_headers = await make_user(roles=("admin",))
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cid = await rent(client, headers, 2)
    nodes = await bring_up(runtime, cid)
    worker = next(n for n in nodes if n.role.value == "worker")
    url = f"{OPS}/clusters/{cid}/nodes/{worker.id}/move"

    # Admin only; unknown ids are 404; with no free device nothing changes (409).
    assert (await client.post(url, headers=headers)).status_code == 403
    r = await client.post(f"{OPS}/clusters/{cid}/nodes/{uuid.uuid4()}/move", headers=admin_headers)
    assert r.status_code == 404
    assert r.json()["code"] == "node_not_found"
    r = await client.post(
        f"{OPS}/clusters/{uuid.uuid4()}/nodes/{worker.id}/move", headers=admin_headers
    )
    assert r.status_code == 404
    r = await client.post(url, headers=admin_headers)
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "no_replacement"
    assert {n.state for n in await node_rows(runtime, cid)} == {NodeState.running}
    assert await audit_rows(runtime, "ops.node_move") == []

    spare = await add_device(gpu_model=None, gpus=0)
    # A NUL in the reason is refused at the edge (422), and nothing moves.
    r = await client.post(url, json={"reason": "host\x00 maintenance"}, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert {n.state for n in await node_rows(runtime, cid)} == {NodeState.running}
    assert await audit_rows(runtime, "ops.node_move") == []
    r = await client.post(url, json={"reason": "host maintenance"}, headers=admin_headers)
    assert r.status_code == 200, r.text
    move = r.json()
    assert move["replacement_device_id"] == str(spare.id)
    assert move["device_id"] == str(worker.device_id)
    assert not move["left_at_once"]
    async with runtime.sessionmaker() as s:
        old = await s.get(ClusterNode, worker.id)
        meter = await s.get(NodeMeter, worker.id)
    assert old is not None
    assert meter is not None
    assert old.state is NodeState.lost
    assert old.state_reason == "moved_by_operator"
    assert old.released_at is None  # still in Ray until the replacement runs
    assert not meter.active  # but no longer billed
    [row] = await audit_rows(runtime, "ops.node_move")
    assert row.actor_user_id == admin.id
    assert row.details["replacement_device_id"] == str(spare.id)
    assert row.details["reason"] == "host maintenance"

    # The reconciler neither heals the moved node again nor lets it go before the new one runs.
    await reconcile(runtime.task_context)
    await finish_operations(runtime.task_context)
    live = [n for n in await node_rows(runtime, cid) if n.released_at is None]
    assert len(live) == 3
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.running

    # The replacement joins and runs: the old node leaves and its device is free again.
    await bring_up(runtime, cid)
    assert (await finish_operations(runtime.task_context))["moved"] == 1
    final = {n.id: n for n in await node_rows(runtime, cid)}
    assert final[worker.id].released_at is not None
    assert final[worker.id].state is NodeState.released
    live = [n for n in final.values() if n.released_at is None]
    assert {n.device_id for n in live} == {devices[0].id, devices[1].id, spare.id} - {
        worker.device_id
    }
    assert all(n.state is NodeState.running for n in live)
    assert (await device_row(runtime, worker.device_id)).status is DeviceStatus.online
    async with runtime.sessionmaker() as s:
        reasons = [
            e.reason
            for e in (
                await s.execute(
                    select(ClusterEvent)
                    .where(ClusterEvent.cluster_id == cid)
                    .order_by(ClusterEvent.id)
                )
            ).scalars()
        ]
    assert reasons.count("moved_by_operator") == 2
    assert "node_replaced" in reasons

    # A terminated cluster's nodes do not move.
    await client.post(f"/api/v1/clusters/{cid}/terminate", headers=headers)
    head = next(n for n in live if n.role.value == "head")
    r = await client.post(f"{OPS}/clusters/{cid}/nodes/{head.id}/move", headers=admin_headers)
    assert r.status_code == 409
    assert r.json()["code"] == "node_not_movable"


async def test_moving_the_head_reforms_the_cluster_on_the_new_head(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(3):
        await add_device(gpu_model=None, gpus=0)
    _, admin_headers = await make_user(roles=("admin",))
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cid = await rent(client, headers, 2)
    nodes = await bring_up(runtime, cid)
    head = next(n for n in nodes if n.role.value == "head")
    r = await client.post(f"{OPS}/clusters/{cid}/nodes/{head.id}/move", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["left_at_once"]
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.degraded
    assert (await device_row(runtime, head.device_id)).status is DeviceStatus.online
    live = await bring_up(runtime, cid)
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.running
    [new_head] = [n for n in live if n.role.value == "head"]
    assert str(new_head.id) == r.json()["replacement_node_id"]
    assert len(live) == 2
    assert all(n.state is NodeState.running for n in live)


async def test_force_terminate_keeps_the_reason_and_is_audited(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    await add_device(gpu_model=None, gpus=0)
    admin, admin_headers = await make_user(roles=("admin",))
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cid = await rent(client, headers, 1)
    url = f"/api/v1/internal/clusters/{cid}/terminate"
    assert (await client.post(url, headers=headers)).status_code == 403
    r = await client.post(url, params={"reason": "abuse report 42"}, headers=admin_headers)
    assert r.status_code == 200, r.text
    detail = (await client.get(f"/api/v1/clusters/{cid}", headers=headers)).json()
    [event] = [e for e in detail["events"] if e["reason"] == "admin_terminated"]
    assert "abuse report 42" in event["message"]
    [row] = await audit_rows(runtime, "ops.cluster_terminate")
    assert row.actor_user_id == admin.id
    assert row.details["reason"] == "abuse report 42"
    r = await client.post(
        f"/api/v1/internal/clusters/{uuid.uuid4()}/terminate", headers=admin_headers
    )
    assert r.status_code == 404


async def test_admins_list_every_customers_clusters_by_status_and_customer(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(3):
        await add_device(gpu_model=None, gpus=0)
    _, admin_headers = await make_user(roles=("admin",))
    ann, ann_headers = await make_user()
    bob, bob_headers = await make_user()
    for user in (ann, bob):
        await grant(user.id, 100_000_000)
    first = await rent(client, ann_headers, 1)
    second = await rent(client, ann_headers, 1)
    third = await rent(client, bob_headers, 1)
    r = await client.post(f"/api/v1/clusters/{first}/terminate", headers=ann_headers)
    assert r.status_code == 200, r.text

    url = "/api/v1/internal/clusters"
    assert (await client.get(url, headers=ann_headers)).status_code == 403
    r = await client.get(url, headers=admin_headers)
    assert r.status_code == 200, r.text
    assert [c["id"] for c in r.json()] == [str(third), str(second), str(first)]  # newest first
    assert r.json()[0]["customer_id"] == str(bob.id)
    r = await client.get(url, params={"customer_id": str(ann.id)}, headers=admin_headers)
    assert [c["id"] for c in r.json()] == [str(second), str(first)]
    r = await client.get(url, params={"status": "terminating"}, headers=admin_headers)
    statuses = {c["id"]: c["status"] for c in r.json()}
    assert list(statuses) == [str(first)], statuses
    # Paging: what came before the oldest of a page of two.
    page = (await client.get(url, params={"limit": 2}, headers=admin_headers)).json()
    r = await client.get(url, params={"before": page[-1]["created_at"]}, headers=admin_headers)
    assert [c["id"] for c in r.json()] == [str(first)]
    for bad in ({"status": "sleeping"}, {"limit": 0}, {"limit": 201}, {"customer_id": "x"}):
        r = await client.get(url, params=bad, headers=admin_headers)
        assert r.status_code in (400, 422), (bad, r.text)
        assert r.headers["content-type"] == "application/problem+json"


async def test_incident_timelines_of_a_cluster_and_its_failed_device(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(3):
        await add_device(gpu_model=None, gpus=0, price=3_600_000)  # 1,000 µUSDC per second
    _, admin_headers = await make_user(roles=("admin",))
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cid = await rent(client, headers, 2)
    nodes = await bring_up(runtime, cid)
    worker = next(n for n in nodes if n.role.value == "worker")
    # The worker's device fails (as the sweeper marks it) and the cluster heals.
    async with runtime.sessionmaker.begin() as s:
        d = await s.get(Device, worker.device_id)
        assert d is not None
        record_transition(s, d, DeviceStatus.offline, "missed_heartbeats")
    await reconcile(runtime.task_context)
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.degraded
    await bring_up(runtime, cid)
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.running

    # Fix the times so the figures are exact: the lost node ran 100 s before it was lost and
    # was billed 40 of them; its replacement ran 30 s after the loss.
    async with runtime.sessionmaker.begin() as s:
        lost = await s.get(ClusterNode, worker.id)
        assert lost is not None
        assert lost.lost_at is not None
        event = (
            (
                await s.execute(
                    select(ClusterEvent)
                    .where(ClusterEvent.cluster_id == cid, ClusterEvent.reason == "node_lost")
                    .order_by(ClusterEvent.id)
                )
            )
            .scalars()
            .first()
        )
        assert event is not None
        lost.lost_at = event.at
        lost.running_at = event.at - timedelta(seconds=100)
        await s.execute(
            update(NodeMeter).where(NodeMeter.node_id == worker.id).values(billed_seconds=40)
        )
        new_id = uuid.UUID(
            (
                await s.execute(
                    select(ClusterEvent).where(
                        ClusterEvent.cluster_id == cid, ClusterEvent.reason == "node_replaced"
                    )
                )
            )
            .scalars()
            .first()
            .data["node_id"]  # type: ignore[union-attr]
        )
        new = await s.get(ClusterNode, new_id)
        assert new is not None
        new.running_at = event.at + timedelta(seconds=30)

    url = f"{OPS}/clusters/{cid}/incidents"
    assert (await client.get(url, headers=headers)).status_code == 403
    r = await client.get(url, headers=admin_headers)
    assert r.status_code == 200, r.text
    timeline = r.json()
    [incident] = timeline["incidents"]
    assert incident["reason"] == "node_lost"
    assert incident["kind"] == "fault"
    assert incident["node_id"] == str(worker.id)
    assert incident["device_id"] == str(worker.device_id)
    assert (incident["nodes_affected"], incident["gpus_affected"]) == (1, 0)
    assert incident["unbilled_seconds"] == 60 + 30
    assert incident["credit_micro"] == 90 * 1000 + 90 * 100  # price + 10 % fee
    assert incident["recovered_at"] is not None
    assert timeline["impact_seconds"] == incident["impact_seconds"] >= 0
    assert timeline["counts_by_reason"] == {"node_lost": 1}

    r = await client.get(f"{OPS}/devices/{worker.device_id}/incidents", headers=admin_headers)
    assert r.status_code == 200, r.text
    [fault] = [i for i in r.json()["incidents"] if i["kind"] == "fault"]
    assert fault["reason"] == "missed_heartbeats"
    assert fault["node_id"] == str(worker.id)
    assert fault["cluster_id"] == str(cid)
    assert fault["nodes_affected"] == 1
    assert fault["unbilled_seconds"] == 60
    assert fault["credit_micro"] == 66_000
    assert fault["recovered_at"] is None  # still offline
    assert r.json()["status"] == "offline"

    for path in (f"clusters/{uuid.uuid4()}", f"devices/{uuid.uuid4()}"):
        r = await client.get(f"{OPS}/{path}/incidents", headers=admin_headers)
        assert r.status_code == 404
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_sla_report_compares_uptime_with_the_promise(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice
) -> None:
    steady, _ = await make_user(roles=("provider",))
    flaky, _ = await make_user(roles=("provider",))
    await add_device(gpu_model=None, gpus=0, provider_id=steady.id)
    device = await add_device(gpu_model=None, gpus=0, provider_id=flaky.id)
    admin, admin_headers = await make_user(roles=("admin",))
    _, customer_headers = await make_user()
    # A window after the devices were listed: one fault of 100 s in 10,000 s.
    since = utcnow() + timedelta(hours=1)
    until = since + timedelta(seconds=10_000)
    async with runtime.sessionmaker.begin() as s:
        for offset, frm, to, reason in (
            (900, "online", "offline", "missed_heartbeats"),
            (1000, "offline", "online", "heartbeat_resumed"),
        ):
            s.add(
                DeviceEvent(
                    device_id=device.id,
                    at=since + timedelta(seconds=offset),
                    from_status=frm,
                    to_status=to,
                    reason=reason,
                    message="",
                )
            )
    params = {"since": since.isoformat(), "until": until.isoformat()}
    assert (
        await client.get(f"{OPS}/sla", params=params, headers=customer_headers)
    ).status_code == 403
    r = await client.get(f"{OPS}/sla", params=params, headers=admin_headers)
    assert r.status_code == 200, r.text
    report = r.json()
    by_provider = {p["provider_id"]: p for p in report["providers"]}
    f = by_provider[str(flaky.id)]
    assert (f["up_seconds"], f["down_seconds"]) == (9900, 100)
    assert f["uptime"] == 0.99
    assert f["promised_uptime"] == 0.99
    assert f["met"] is True
    assert f["faults_by_reason"] == {"missed_heartbeats": 1}
    assert f["mttr_seconds"] == 100
    s_ = by_provider[str(steady.id)]
    assert (s_["uptime"], s_["faults"], s_["mttr_seconds"]) == (1.0, 0, None)
    assert report["providers"][0]["provider_id"] == str(flaky.id)  # worst first
    assert report["faults"]["device_faults_by_reason"] == {"missed_heartbeats": 1}
    assert report["faults"]["device_mttr_seconds"] == 100

    # A stricter promise for the flaky provider: now missed. Audited.
    r = await client.put(
        f"{OPS}/providers/{flaky.id}/sla", json={"promised_uptime": 0.995}, headers=admin_headers
    )
    assert r.status_code == 200, r.text
    r = await client.get(
        f"{OPS}/sla", params=params | {"provider_id": str(flaky.id)}, headers=admin_headers
    )
    [f] = r.json()["providers"]
    assert f["promised_uptime"] == 0.995
    assert f["met"] is False
    [row] = await audit_rows(runtime, "ops.provider_sla")
    assert row.actor_user_id == admin.id
    assert row.details == {"promised_uptime": 0.995}

    # Bad input: 4xx problem+json, nothing stored.
    bad = [
        client.get(
            f"{OPS}/sla",
            params={"since": until.isoformat(), "until": since.isoformat()},
            headers=admin_headers,
        ),
        client.get(f"{OPS}/sla", params={"since": "yesterday"}, headers=admin_headers),
        client.get(f"{OPS}/sla", params={"since": "2026-01-01T00:00:00"}, headers=admin_headers),
        client.get(f"{OPS}/sla", params={"until": "0001-01-02T00:00:00Z"}, headers=admin_headers),
        client.put(
            f"{OPS}/providers/{flaky.id}/sla", json={"promised_uptime": 1.5}, headers=admin_headers
        ),
    ]
    for call in bad:
        r = await call
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.put(
        f"{OPS}/providers/{uuid.uuid4()}/sla", json={"promised_uptime": 0.9}, headers=admin_headers
    )
    assert r.status_code == 404
    assert len(await audit_rows(runtime, "ops.provider_sla")) == 1
