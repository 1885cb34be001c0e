"""Canary rounds (``tesai.clusters.canary``): what counts as a node's answer, on plain data;
what a failed or passing round does to a cluster, its billing and its devices, on a real
database and cache. Real Ray answering real rounds: tests/e2e/test_cluster_lifecycle.py.
"""

from __future__ import annotations

import random
import shlex
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tesai.clusters import canary, evidence
from tesai.clusters.canary import CanaryRound, expected_answer, holders, judge, new_round
from tesai.clusters.job_list import merge
from tesai.clusters.models import ClusterEvent, ClusterStatus, NodeRole, NodeState
from tesai.clusters.plan import next_steps
from tesai.clusters.reconcile import reconcile
from tesai.devices.models import DeviceEvent
from tesai.runtime import Runtime
from tests.clusters.conftest import AddDevice, Grant
from tests.clusters.test_plan import node, view
from tests.clusters.test_reconcile import bring_up, cluster_row, meter, node_rows
from tests.fixtures.auth import MakeUser

HEAD, WORKER = "tesai_node_aaaaaaaaaaaa", "tesai_node_bbbbbbbbbbbb"
RAY_HEAD, RAY_WORKER = "a1" * 28, "b2" * 28


def answer_line(rnd: CanaryRound, resource: str, ray_node: str, answer: str | None = None) -> str:
    answer = answer or expected_answer(rnd.seed, resource, ray_node)
    return f"TESAI_CANARY {rnd.submission_id} {resource} {ray_node} {answer}"


def honest_logs(rnd: CanaryRound) -> list[str]:
    return [
        "2026-12-08 01:00:00,000 INFO worker.py:1 -- Connecting to existing Ray cluster",
        f"TESAI_CANARY_START {rnd.submission_id}",
        *(answer_line(rnd, r, n) for r, n in rnd.nodes.items()),
    ]


def test_every_node_answering_from_its_own_ray_node_passes() -> None:
    rnd = new_round({HEAD: RAY_HEAD, WORKER: RAY_WORKER})
    assert rnd.submission_id.startswith("tesai-canary-")
    assert judge(rnd, "\n".join(honest_logs(rnd)), HEAD) == {HEAD: "passed", WORKER: "passed"}
    # Each round its own seed and id: last round's answers are not this one's.
    other = new_round(rnd.nodes)
    assert (other.seed, other.submission_id) != (rnd.seed, rnd.submission_id)
    assert expected_answer(other.seed, WORKER, RAY_WORKER) != expected_answer(
        rnd.seed, WORKER, RAY_WORKER
    )


def test_an_answer_from_another_ray_node_fails_even_with_a_right_mac() -> None:
    rnd = new_round({HEAD: RAY_HEAD, WORKER: RAY_WORKER})
    # The head's raylet ran the worker's task: the MAC is right for where it ran.
    logs = [*honest_logs(rnd)[:3], answer_line(rnd, WORKER, RAY_HEAD)]
    assert judge(rnd, "\n".join(logs), HEAD) == {HEAD: "passed", WORKER: "wrong_node"}
    # The right node id with a MAC made for another node.
    forged = answer_line(rnd, WORKER, RAY_WORKER, expected_answer(rnd.seed, WORKER, RAY_HEAD))
    logs = [*honest_logs(rnd)[:3], forged]
    assert judge(rnd, "\n".join(logs), HEAD)[WORKER] == "wrong_answer"


def test_an_answer_replayed_from_an_earlier_round_fails() -> None:
    earlier = new_round({HEAD: RAY_HEAD, WORKER: RAY_WORKER})
    rnd = new_round(earlier.nodes)
    old = answer_line(earlier, WORKER, RAY_WORKER)
    # As it was printed then (the earlier round's id): not an answer to this round.
    logs = [*honest_logs(rnd)[:3], old]
    assert judge(rnd, "\n".join(logs), HEAD)[WORKER] == "no_answer"
    # Relabelled with this round's id: the MAC is the earlier seed's.
    relabelled = old.replace(earlier.submission_id, rnd.submission_id)
    logs = [*honest_logs(rnd)[:3], relabelled]
    assert judge(rnd, "\n".join(logs), HEAD)[WORKER] == "wrong_answer"


def test_a_missing_node_fails_and_a_driver_that_never_ran_fails_the_head_alone() -> None:
    rnd = new_round({HEAD: RAY_HEAD, WORKER: RAY_WORKER})
    logs = honest_logs(rnd)[:3]  # the worker's task never answered
    assert judge(rnd, "\n".join(logs), HEAD) == {HEAD: "passed", WORKER: "no_answer"}
    # Two answers for one node: someone else wrote into the log.
    doubled = [*honest_logs(rnd), answer_line(rnd, WORKER, RAY_WORKER)]
    assert judge(rnd, "\n".join(doubled), HEAD)[WORKER] == "repeated_answer"
    # No start line: the workers were never asked.
    answers = [answer_line(rnd, r, n) for r, n in rnd.nodes.items()]
    assert judge(rnd, "\n".join(answers), HEAD) == {HEAD: "no_driver"}
    assert judge(rnd, "", None) == {}


def test_a_node_resource_is_asked_of_the_one_alive_ray_node_that_holds_it() -> None:
    def row(node_id: str, state: str, *resources: str) -> dict[str, Any]:
        return {
            "node_id": node_id,
            "state": state,
            "resources_total": {"CPU": 2.0, **dict.fromkeys(resources, 1.0)},
        }

    shared = "tesai_node_cccccccccccc"
    rows = [
        row(RAY_HEAD, "ALIVE", HEAD, shared),
        row(RAY_WORKER, "ALIVE", WORKER, shared),
        row("d3" * 28, "DEAD", "tesai_node_dddddddddddd"),
    ]
    payload = {"data": {"result": {"result": rows}}}
    wanted = [HEAD, WORKER, shared, "tesai_node_dddddddddddd", "tesai_node_eeeeeeeeeeee"]
    assert holders(payload, wanted) == {HEAD: RAY_HEAD, WORKER: RAY_WORKER}
    for nonsense in ({}, {"data": {"result": {"result": "x"}}}, None):
        with pytest.raises(ValueError, match="node list"):
            holders(nonsense, wanted)


def test_rounds_come_at_random_times_around_the_mean_within_bounds() -> None:
    rng = random.Random(7)
    waits = [canary.draw_wait(600, rng) for _ in range(4000)]
    assert min(waits) >= 60
    assert max(waits) <= 3000
    assert 540 < sum(waits) / len(waits) < 660
    assert len({round(w) for w in waits}) > 1000


def test_the_driver_is_one_shell_word_of_python_with_the_round_in_it() -> None:
    rnd = new_round({HEAD: RAY_HEAD, WORKER: RAY_WORKER})
    words = shlex.split(canary.entrypoint(rnd, 30))
    assert words[:2] == ["python", "-c"]
    assert len(words) == 3
    compile(words[2], "<canary>", "exec")
    assert rnd.submission_id in words[2]
    assert rnd.seed.hex() in words[2]


def test_canary_jobs_are_not_listed_as_the_customers() -> None:
    now = datetime.now(UTC)
    ray_rows = [
        {"submission_id": "raysubmit_abc", "status": "RUNNING", "entrypoint": "python a.py"},
        {"submission_id": "tesai-canary-0123456789abcdef", "status": "RUNNING"},
    ]
    listed = merge(uuid.uuid4(), [], ray_rows, now)
    assert [j.submission_id for j in listed] == ["raysubmit_abc"]


def test_a_node_failing_its_canary_degrades_a_running_cluster_until_a_round_passes() -> None:
    up: dict[str, Any] = {"state": NodeState.running, "join_sent": True, "reported": "running"}
    head = node(NodeRole.head, ray_address="h:1", verified=True, **up)
    # Listed ALIVE by the head, and failing its canary: not verified.
    w = node(canary_failed=True, **up)
    steps = next_steps(view(ClusterStatus.running, [head, w])).steps
    assert [(s.kind, s.status, s.reason) for s in steps] == [
        ("set_status", ClusterStatus.degraded, "canary_failed")
    ]
    assert str(w.id) in steps[0].detail
    assert (
        next_steps(view(ClusterStatus.degraded, [head, w], status_reason="canary_failed")).steps
        == []
    )
    back = node(verified=True, **up)
    again = view(ClusterStatus.degraded, [head, back], status_reason="canary_failed")
    assert [(s.kind, s.status, s.reason) for s in next_steps(again).steps] == [
        ("set_status", ClusterStatus.running, "canary_passed")
    ]


async def test_a_failed_canary_stops_billing_the_node_and_marks_its_device_until_it_passes(
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    add_device: AddDevice,
    grant: Grant,
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
    nodes = await bring_up(runtime, cid)
    assert (await cluster_row(runtime, cid)).status is ClusterStatus.running
    ctx = runtime.task_context
    target = await canary.load_target(ctx, cid)
    assert target is not None
    head = next(n for n in target.nodes if n.role is NodeRole.head)
    worker = next(n for n in target.nodes if n.role is NodeRole.worker)
    assert {n.node_id for n in target.nodes} == {n.id for n in nodes}
    await meter(runtime, 4)
    await reconcile(ctx)
    billed = {n.id: n.healthy_seconds for n in await node_rows(runtime, cid)}

    async def offences() -> list[DeviceEvent]:
        async with runtime.sessionmaker() as s:
            rows = await s.scalars(select(DeviceEvent).where(DeviceEvent.reason == "canary_failed"))
            return list(rows)

    # The worker did not answer: its evidence is withdrawn though Ray still lists it.
    await canary.apply_verdicts(
        ctx, target, {head.resource: "passed", worker.resource: "no_answer"}
    )
    seen = await evidence.read(runtime.cache, [head.node_id, worker.node_id])
    now = time.time()
    window = runtime.settings.ray_evidence_window_s
    assert seen.fresh(head.node_id, now, window)
    assert not seen.fresh(worker.node_id, now, window)
    await reconcile(ctx)
    c = await cluster_row(runtime, cid)
    assert (c.status, c.status_reason) == (ClusterStatus.degraded, "canary_failed")
    events = await offences()
    assert [e.device_id for e in events] == [worker.device_id]
    assert "no_answer" in events[0].message
    assert str(worker.node_id) in events[0].message
    # Still failing: still not billed, and no second offence for the same failure.
    await canary.apply_verdicts(
        ctx, target, {head.resource: "passed", worker.resource: "no_answer"}
    )
    await meter(runtime, 4)
    await reconcile(ctx)
    later = {n.id: n.healthy_seconds for n in await node_rows(runtime, cid)}
    assert later[worker.node_id] == billed[worker.node_id]
    assert later[head.node_id] >= billed[head.node_id] + 4
    assert len(await offences()) == 1

    # A round passes: running again, and the worker billed again from then on.
    await canary.apply_verdicts(ctx, target, {head.resource: "passed", worker.resource: "passed"})
    await bring_up(runtime, cid)
    c = await cluster_row(runtime, cid)
    assert (c.status, c.status_reason) == (ClusterStatus.running, "canary_passed")
    await meter(runtime, 4)
    await reconcile(ctx)
    again = {n.id: n.healthy_seconds for n in await node_rows(runtime, cid)}
    assert 3 <= again[worker.node_id] - later[worker.node_id] <= 5, (later, again)
    async with runtime.sessionmaker() as s:
        reasons = list(
            await s.scalars(
                select(ClusterEvent.reason)
                .where(ClusterEvent.cluster_id == cid)
                .order_by(ClusterEvent.id)
            )
        )
    assert reasons[-2:] == ["canary_failed", "canary_passed"]


async def test_a_due_round_is_leased_once_and_its_job_is_not_the_customers_to_stop(
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    add_device: AddDevice,
    grant: Grant,
) -> None:
    await add_device(gpu_model=None, gpus=0, price=3_600_000)
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    r = await client.post(
        "/api/v1/clusters", json={"request": {"nodes": 1, "duration_s": 3600}}, headers=headers
    )
    cid = uuid.UUID(r.json()["id"])
    await bring_up(runtime, cid)
    # The customer cannot stop or delete a round's job through the proxy (its unanswered
    # nodes would fail, and go unbilled); reading it is Ray's business.
    job = f"/api/v1/clusters/{cid}/ray/api/jobs/tesai-canary-0123456789abcdef"
    for method, path in (("POST", f"{job}/stop"), ("DELETE", job)):
        refused = await client.request(method, path, headers=headers)
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "canary_job_protected"
    assert (await client.get(job, headers=headers)).status_code != 403
    ctx = runtime.task_context
    first = await canary.schedule(ctx)
    assert first == {"clusters": 1, "started": 0}
    (due,) = await runtime.cache.zscores(canary.DUE, [str(cid)])
    assert due is not None
    assert due > time.time()
    # Due now: leased and started once, however many ticks run meanwhile.
    await runtime.cache.zadd(canary.DUE, {str(cid): time.time() - 1})
    await runtime.cache.set(canary.lease_key(str(cid)), "1", ttl_s=60)
    assert (await canary.schedule(ctx))["started"] == 0
    await runtime.cache.delete(canary.lease_key(str(cid)))
    assert (await canary.schedule(ctx))["started"] == 1
    # The round itself: the head's address on record is none the control plane will use
    # (no heartbeat peer): no verdict, the lease let go, the next round drawn.
    result = await canary.run_round(ctx, cid)
    assert result == {"asked": 0, "failed": 0}
    assert await runtime.cache.get(canary.lease_key(str(cid))) is None
    (due,) = await runtime.cache.zscores(canary.DUE, [str(cid)])
    assert due is not None
    assert due > time.time()
    async with runtime.sessionmaker() as s:
        assert not list(
            await s.scalars(select(DeviceEvent).where(DeviceEvent.reason == "canary_failed"))
        )
