"""A head whose ``ray start`` failed: what its agent said reaches the cluster's events.

The agent's answer to the join command is written the way the heartbeat endpoint stores a
command result, from the wire models and Ray's output recorded on a real failed start.
"""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select, update

from tesai.agent.ray_failures import REASON_RAY_TEMP_DIR_TOO_LONG, failure_message
from tesai.clusters.models import ClusterEvent, ClusterNode, NodeState
from tesai.clusters.reconcile import reconcile
from tesai.devices.models import DeviceCommand
from tesai.kit.time import utcnow
from tesai.protocol.v1 import CommandResult
from tesai.protocol.v1 import NodeState as WireNodeState
from tesai.runtime import Runtime
from tests.agent import ray_recordings as rec
from tests.clusters.conftest import AddDevice, Grant


async def test_a_head_that_failed_to_start_keeps_rays_words_in_the_cluster_events(
    client: httpx.AsyncClient, runtime: Runtime, make_user, add_device: AddDevice, grant: Grant
) -> None:
    for _ in range(2):
        await add_device(gpu_model=None, gpus=0)
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    r = await client.post(
        "/api/v1/clusters", json={"request": {"nodes": 1, "duration_s": 3600}}, headers=headers
    )
    assert r.status_code == 201, r.text
    cid = uuid.UUID(r.json()["id"])
    await reconcile(runtime.task_context)  # sends the head's join
    async with runtime.sessionmaker() as s:
        head = (
            await s.execute(select(ClusterNode).where(ClusterNode.cluster_id == cid))
        ).scalar_one()
        join = (
            await s.execute(
                select(DeviceCommand).where(
                    DeviceCommand.device_id == head.device_id,
                    DeviceCommand.kind == "join_cluster",
                )
            )
        ).scalar_one()
    assert head.state is NodeState.starting

    said = failure_message(
        rec.HEAD_METRICS_HEAD_EOF_STDOUT + rec.HEAD_METRICS_HEAD_EOF_STDERR,
        {"dashboard_MetricsHead.log": rec.HEAD_METRICS_HEAD_EOF_MODULE_LOG},
        join.args["token"],
    )
    state = WireNodeState(
        cluster_id=cid,
        role="head",
        state="failed",
        reason=REASON_RAY_TEMP_DIR_TOO_LONG,
        message=said,
    )
    result = CommandResult(
        id=join.id, ok=False, detail=state.reason, data=state.model_dump(mode="json")
    )
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(DeviceCommand)
            .where(DeviceCommand.id == join.id)
            .values(result=result.model_dump(mode="json"), acked_at=utcnow())
        )
    await reconcile(runtime.task_context)

    detail = (await client.get(f"/api/v1/clusters/{cid}", headers=headers)).json()
    lost = [e for e in detail["events"] if e["reason"] == "head_lost"]
    assert len(lost) == 1
    assert (
        f"on device {head.device_id}: ray_temp_dir_too_long: ray start: RuntimeError: "
        in (lost[0]["message"])
    )
    assert "Module MetricsHead failed to start" in lost[0]["message"]
    async with runtime.sessionmaker() as s:
        event = (
            await s.execute(
                select(ClusterEvent).where(
                    ClusterEvent.cluster_id == cid, ClusterEvent.reason == "head_lost"
                )
            )
        ).scalar_one()
    assert event.data["failure"] == REASON_RAY_TEMP_DIR_TOO_LONG
    assert "AF_UNIX path length cannot exceed 107 bytes" in event.data["ray_log"]
