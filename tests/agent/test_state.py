"""The state dir: a private credential, and commands applied at most once across restarts."""

from __future__ import annotations

import asyncio
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tesai.agent.agent import Agent, AgentConfig
from tesai.agent.state import AgentState, Credential
from tesai.protocol.v1 import Command


def _credential() -> Credential:
    return Credential(
        server_url="http://127.0.0.1:1",
        device_id=uuid.uuid4(),
        device_token="tesai_dev_" + "x" * 43,
        token_expires_at=datetime.now(UTC) + timedelta(hours=24),
    )


def test_credential_file_is_0600_and_survives_a_reload(tmp_path: Path) -> None:
    state = AgentState(tmp_path / "state")
    cred = _credential()
    state.save_credential(cred)
    path = tmp_path / "state" / "credential.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) & 0o077 == 0
    assert AgentState(tmp_path / "state").load_credential() == cred
    # Rotation rewrites it atomically, still private.
    state.save_credential(cred.model_copy(update={"device_token": "tesai_dev_new"}))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert AgentState(tmp_path / "state").load_credential().device_token == "tesai_dev_new"  # type: ignore[union-attr]
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.startswith(".")]


def _agent(state_dir: Path) -> Agent:
    return Agent(AgentConfig(server_url="http://127.0.0.1:1", state_dir=state_dir, metrics_port=0))


async def _settle(agent: Agent) -> None:
    while agent._running:
        await asyncio.gather(*agent._running.values())


async def test_a_command_delivered_twice_is_applied_once_even_across_a_restart(
    tmp_path: Path,
) -> None:
    drain = Command(id=uuid.uuid4(), kind="drain", args={})
    undrain = Command(id=uuid.uuid4(), kind="undrain", args={})

    agent = _agent(tmp_path)
    agent._accept_commands([drain, drain])
    await _settle(agent)
    assert agent.handlers.status == "draining"
    agent._accept_commands([undrain])
    await _settle(agent)
    assert agent.handlers.status == "ready"
    # The drain arrives again (the server never saw our ack): acknowledged, not applied.
    agent._accept_commands([drain])
    await _settle(agent)
    assert agent.handlers.status == "ready"
    assert drain.id in agent._pending_acks
    assert agent._pending_results[drain.id].ok

    # A new agent process on the same state dir.
    restarted = _agent(tmp_path)
    restarted._requeue_unreported()
    # Results never delivered before the restart go out with the first heartbeat.
    assert set(restarted._pending_results) == {drain.id, undrain.id}
    restarted._accept_commands([drain])
    await _settle(restarted)
    assert restarted.handlers.status == "ready"
    assert restarted._pending_results[drain.id].detail == "draining"


async def test_cluster_commands_without_ray_support_fail_with_a_reason(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    agent.handlers.runtime = None
    join = Command(id=uuid.uuid4(), kind="join_cluster", args={"cluster_id": str(uuid.uuid4())})
    result = await agent.handlers.handle(join)
    assert not result.ok
    assert result.detail is not None
    assert result.detail.startswith("ray_node_unavailable")


async def test_a_verify_command_with_bad_args_fails_without_running(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    bad = Command(id=uuid.uuid4(), kind="verify", args={"seed": "nope"})
    result = await agent.handlers.handle(bad)
    assert not result.ok
    assert result.detail is not None
    assert result.detail.startswith("bad_args")


async def test_cluster_commands_reach_the_hosts_ray_node_module(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    assert agent.handlers.runtime is not None  # the process runtime by default
    cluster = str(uuid.uuid4())
    leave = Command(id=uuid.uuid4(), kind="leave_cluster", args={"cluster_id": cluster})
    result = await agent.handlers.handle(leave)
    assert result.ok, result.detail
    assert result.data is not None
    assert (result.data["cluster_id"], result.data["state"]) == (cluster, "stopped")
    assert await agent.handlers.node_states() == []
