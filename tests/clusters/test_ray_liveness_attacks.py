"""A provider whose agent says its Ray node runs, and its whole cluster is alive, while it runs
no Ray at all: a real agent process (``tests.devices.adversary_agent ray-liar``) against a
real ``tesai server``. Its "dashboard" is the control plane's own API port.

The control plane believes only what it reads itself in the head's Ray state: the cluster
never becomes ``running``, nothing is billed, and at the provisioning deadline it fails and
the customer's hold comes back whole. (The honest path, real agents running real Ray, is
tests/e2e/test_cluster_lifecycle.py.)
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tesai.billing import ledger
from tesai.billing import service as billing
from tesai.billing.models import NodeMeter, UsageBucket
from tesai.clusters.evidence import node_resource_name
from tesai.clusters.models import ClusterNode
from tesai.clusters.service import hold_ref
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.devices.test_proof_attacks import Adversary
from tests.fixtures.auth import MakeUser
from tests.fixtures.processes import ServerProcess

pytestmark = pytest.mark.slow

CREDIT = 100_000_000
DEADLINE_S = 20


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"heartbeat_interval_s": 1.0, "proof_matrix_n_cpu": 128, "proof_iterations": 2}
    )


@pytest.fixture
def server(settings: Settings, runtime: Runtime, tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        settings,
        tmp_path / "server.log",
        TESAI_PROVISIONING_DEADLINE_S=str(DEADLINE_S),
        TESAI_RAY_EVIDENCE_WINDOW_S="3",
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


async def test_an_agent_reporting_its_nodes_alive_while_running_no_ray_is_never_running_or_paid(
    server: ServerProcess,
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    tmp_path: Path,
) -> None:
    _, provider = await make_user(roles=("provider",))
    liar = Adversary(client, provider, tmp_path, server.url)
    try:
        await liar.start("ray-liar", "--dashboard-port", str(server.port))
        await liar.until("online")
        customer, headers = await make_user()
        async with runtime.sessionmaker.begin() as s:
            await billing.admin_grant_credit(
                s,
                admin_user_id=None,
                user_id=customer.id,
                amount_micro=CREDIT,
                reason="liar test",
                idempotency_key=f"liar:{uuid.uuid4()}",
            )
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as api:
            r = await api.post(
                "/api/v1/clusters", json={"request": {"nodes": 1, "duration_s": 3600}}
            )
            assert r.status_code == 201, r.text
            cid = r.json()["id"]

            statuses: list[str] = []
            node_states: set[str] = set()
            detail: dict[str, Any] = {}
            deadline = time.monotonic() + DEADLINE_S + 40
            while time.monotonic() < deadline:
                detail = (await api.get(f"/api/v1/clusters/{cid}")).json()
                statuses.append(detail["status"])
                node_states |= {n["state"] for n in detail["nodes"]}
                if detail["status"] in ("failed", "terminated"):
                    break
                await asyncio.sleep(0.3)
            assert liar.proc is not None
            assert liar.proc.poll() is None, liar.log.read_text()[-3000:]
            explain = (detail, server.log.read_text()[-3000:])

        # The lie was heard (its node counted as running on its agent's word) and never
        # believed: the cluster did not run, and failed at its deadline.
        assert "running" in node_states, explain
        assert "running" not in statuses, explain
        assert detail["status"] == "failed", explain
        reasons = [e["reason"] for e in detail["events"]]
        assert "provisioning_deadline" in reasons, explain
        assert "all_nodes_alive" not in reasons, explain

        # Nothing billed: no meter, no usage, the hold back whole, the provider paid nothing.
        async with runtime.sessionmaker() as s:
            meters = await s.scalar(
                select(func.count()).where(NodeMeter.cluster_id == uuid.UUID(cid))
            )
            usage = await s.scalar(
                select(func.count()).where(UsageBucket.cluster_id == uuid.UUID(cid))
            )
            available = await ledger.balance_of(s, billing.available(customer.id))
            held = await ledger.balance_of(s, billing.held(customer.id, hold_ref(uuid.UUID(cid))))
        assert (meters, usage) == (0, 0), explain
        assert (available, held) == (CREDIT, 0), explain

        # The lie is on its device's record, once (not once per reading of the head), where
        # its provider reads it, and it cost reliability.
        events = await liar.events()
        caught = [e["reason"] for e in events if e["offence"]]
        assert caught == ["node_unverified"], events
        assert (await liar.device())["device"]["reliability"] <= 0.8
    finally:
        liar.stop()


SHARER_DEADLINE_S = 300
"""Room for a real ``ray start`` on a small, busy machine (a minute is common on two cores),
and the evidence window after it."""


@pytest.fixture
def sharer_server(settings: Settings, runtime: Runtime, tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        settings,
        tmp_path / "server.log",
        TESAI_PROVISIONING_DEADLINE_S=str(SHARER_DEADLINE_S),
        # Room for the real head's dashboard to answer once its agent says it runs: the
        # charge is then for what its answer shows, not for silence.
        TESAI_RAY_EVIDENCE_WINDOW_S="10",
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


async def test_one_ray_node_standing_in_for_two_verifies_neither_and_is_never_paid(
    sharer_server: ServerProcess,
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two colluding agents (``ray-sharer``): the head's runs one real Ray node that also
    claims the worker's node resource, the worker's runs nothing. Matched by resource name
    alone, both nodes were "seen" and the worker was paid for nothing; one Ray node claiming
    two nodes' resources verifies neither."""
    server = sharer_server
    _, provider = await make_user(roles=("provider",))
    share = tmp_path / "node-resources.json"
    agents: list[Adversary] = []
    temp_roots = []
    try:
        for i in range(2):
            home = tmp_path / f"agent{i}"
            home.mkdir()
            # Short: Ray's unix socket paths live below it (~107 bytes at most).
            temp_roots.append(Path(tempfile.mkdtemp(prefix=f"rs{i}-", dir="/tmp")))
            monkeypatch.setenv("TESAI_RAY_PORT_RANGE", f"{41000 + i * 1000}-{41999 + i * 1000}")
            monkeypatch.setenv("TESAI_RAY_NODE_IP", "127.0.0.1")
            monkeypatch.setenv("TESAI_RAY_TEMP_ROOT", str(temp_roots[-1]))
            agent = Adversary(client, provider, home, server.url)
            await agent.start("ray-sharer", "--share-file", str(share))
            agents.append(agent)
        for agent in agents:
            await agent.until("online")
        customer, headers = await make_user()
        async with runtime.sessionmaker.begin() as s:
            await billing.admin_grant_credit(
                s,
                admin_user_id=None,
                user_id=customer.id,
                amount_micro=CREDIT,
                reason="sharer test",
                idempotency_key=f"sharer:{uuid.uuid4()}",
            )
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as api:
            r = await api.post(
                "/api/v1/clusters", json={"request": {"nodes": 2, "duration_s": 3600}}
            )
            assert r.status_code == 201, r.text
            cid = uuid.UUID(r.json()["id"])
            async with runtime.sessionmaker() as s:
                nodes = list(
                    (
                        await s.scalars(select(ClusterNode).where(ClusterNode.cluster_id == cid))
                    ).all()
                )
            # What colluding agents would pass each other: every node's resource.
            share.write_text(json.dumps([node_resource_name(n.id) for n in nodes]))
            by_device = {str(n.device_id): n.role.value for n in nodes}

            async def caught() -> dict[str, list[str]]:
                return {
                    a.device_id: [e["reason"] for e in await a.events() if e["offence"]]
                    for a in agents
                }

            # Until the head's real Ray node has answered for the window and both devices are
            # charged (or the cluster ends): a `ray start` takes its time on a busy machine.
            statuses: list[str] = []
            detail: dict[str, Any] = {}
            charged: dict[str, list[str]] = {}
            deadline = time.monotonic() + SHARER_DEADLINE_S
            while time.monotonic() < deadline:
                detail = (await api.get(f"/api/v1/clusters/{cid}")).json()
                statuses.append(detail["status"])
                charged = await caught()
                if detail["status"] in ("failed", "terminated") or all(charged.values()):
                    break
                await asyncio.sleep(0.5)
            r = await api.post(f"/api/v1/clusters/{cid}/terminate")
            assert r.status_code in (200, 202, 409), r.text
            while time.monotonic() < deadline + 60 and detail["status"] not in (
                "failed",
                "terminated",
            ):
                await asyncio.sleep(0.5)
                detail = (await api.get(f"/api/v1/clusters/{cid}")).json()
                statuses.append(detail["status"])
            logs = [a.log.read_text()[-2000:] for a in agents]
            explain = (detail, server.log.read_text()[-3000:], logs)

        # One Ray node answered for both: neither counted, the cluster never ran, and each
        # device is charged with it, once.
        assert "running" not in statuses, explain
        assert detail["status"] in ("failed", "terminated"), explain
        assert set(by_device) == set(charged), explain
        assert all(c == ["node_resource_shared"] for c in charged.values()), (charged, explain)
        assert await caught() == charged, explain

        async with runtime.sessionmaker() as s:
            meters = await s.scalar(select(func.count()).where(NodeMeter.cluster_id == cid))
            usage = await s.scalar(select(func.count()).where(UsageBucket.cluster_id == cid))
            available = await ledger.balance_of(s, billing.available(customer.id))
            held = await ledger.balance_of(s, billing.held(customer.id, hold_ref(cid)))
        assert (meters, usage) == (0, 0), explain
        assert (available, held) == (CREDIT, 0), explain
    finally:
        for agent in agents:
            agent.stop()
        for root in temp_roots:
            shutil.rmtree(root, ignore_errors=True)
