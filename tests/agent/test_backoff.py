"""Reconnect backoff: exponential ceiling, capped, with full jitter; the server's Retry-After."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tesai.agent.agent import Agent, AgentConfig
from tesai.agent.backoff import backoff_ceiling, backoff_delay, retry_after_s, retry_delay
from tesai.agent.state import Credential
from tesai.protocol.v1 import Heartbeat, Telemetry


def test_ceiling_doubles_then_caps_at_30_seconds() -> None:
    assert [backoff_ceiling(a) for a in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_ceiling(10_000) == 30


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    assert backoff_delay(3, rand=lambda: 0.0) == 0.0
    assert backoff_delay(3, rand=lambda: 0.999) == 0.999 * 4
    rng = random.Random(7)
    delays = [backoff_delay(20, rand=rng.random) for _ in range(2000)]
    assert all(0 <= d < 30 for d in delays)
    # Spread over the whole range, so a fleet of agents never retries in lockstep.
    assert min(delays) < 1.5
    assert max(delays) > 28.5
    assert 13 < sum(delays) / len(delays) < 17


def test_the_servers_retry_after_is_honoured_with_jitter_and_capped() -> None:
    """An overloaded server (or one that cannot reach its cache) says when to come back:
    the agent waits at least that long, spread so a fleet does not return in lockstep,
    instead of hammering it on a short exponential draw."""
    assert retry_after_s({"Retry-After": "3"}) == 3.0
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s({"retry-after": "Thu, 01 Jan 2026 12:00:07 GMT"}, now=now) == 7.0
    assert retry_after_s({}) is None
    assert retry_after_s({"Retry-After": "soon"}) is None
    assert retry_delay(0, 3.0, rand=lambda: 0.0) == 3.0
    assert retry_delay(0, 3.0, rand=lambda: 0.999) == pytest.approx(4.4985)
    assert retry_delay(9, 100.0, rand=lambda: 0.5) == 30.0
    # Without one, the exponential draw as before.
    assert retry_delay(3, None, rand=lambda: 0.5) == 2.0


async def test_agent_waits_as_told_by_a_503(tmp_path: Path) -> None:
    """The real heartbeat loop against a server answering 503 with Retry-After: 4."""
    calls: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return httpx.Response(
            503,
            json={"code": "cache_unavailable", "detail": "retry"},
            headers={"Retry-After": "4"},
        )

    agent = Agent(AgentConfig(server_url="http://cp", state_dir=tmp_path, metrics_port=0))
    agent.credential = Credential(
        server_url="http://cp",
        device_id=uuid.uuid4(),
        device_token="tesai_dev_x",
        token_expires_at=datetime.now(UTC) + timedelta(hours=5),
    )
    agent._client = httpx.AsyncClient(base_url="http://cp", transport=httpx.MockTransport(answer))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) >= 5:
            agent.request_stop()

    async def build() -> Any:
        return Heartbeat(
            seq=0,
            sent_at=datetime.now(UTC),
            status="ready",
            telemetry=Telemetry(cpu_percent=1.0, mem_used_bytes=1, mem_total_bytes=2),
        )

    agent._sleep = sleep  # type: ignore[method-assign]
    agent._build_heartbeat = build  # type: ignore[method-assign]
    await agent._heartbeat_loop()
    await agent._client.aclose()
    assert len(calls) == 5
    assert all(4.0 <= s <= 6.0 for s in slept), slept
