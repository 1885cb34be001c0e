"""This machine's agent in embedded mode, so one machine is a working pool of one.

The device belongs to the local administrator (also a provider). The first start creates
the device and hands the agent a one-time join token; later starts find the credential the
agent keeps in ``TESAI_HOME/agent`` and need none. The agent runs as a subprocess
(``tesai.agent.local``), logging to ``TESAI_HOME/agent.log``.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tesai.devices.models import Device
from tesai.devices.service import create_device, issue_join_token
from tesai.runtime import Runtime

AGENT_DIR = "agent"
AGENT_LOG = "agent.log"


def local_device_name() -> str:
    return f"{socket.gethostname()} (this machine)"


async def _join_token(runtime: Runtime, owner_id: uuid.UUID) -> str:
    """A join token for this machine's device, created on first use."""
    name = local_device_name()
    async with runtime.sessionmaker() as session:
        device = await session.scalar(
            select(Device).where(Device.provider_id == owner_id, Device.name == name).limit(1)
        )
        if device is None:
            _, token, _ = await create_device(
                session,
                runtime.settings,
                provider_id=owner_id,
                name=name,
                price_micro=None,
                region="local",
                country=None,
            )
        else:
            token, _ = await issue_join_token(session, runtime.settings, device)
        await session.commit()
    return token


async def start_local_agent(
    runtime: Runtime, owner_id: uuid.UUID, server_url: str, home: Path
) -> Any:
    """Start the agent subprocess; returns it (``stop()`` ends it, leaving the pool)."""
    from tesai.agent.local import start_local_agent as start_process
    from tesai.agent.state import AgentState

    state_dir = home / AGENT_DIR
    token = None
    if AgentState(state_dir).load_credential() is None:
        token = await _join_token(runtime, owner_id)
    return start_process(server_url, state_dir, token, log_file=home / AGENT_LOG)
