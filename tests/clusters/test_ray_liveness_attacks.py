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
    finally:
        liar.stop()
