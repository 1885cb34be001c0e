"""The Ray proxy connects only where the control plane decided (production settings: no
development allowance for internal addresses).

A provider's agent heartbeats through the real agent API and reports its head node running
with whatever addresses it likes; the reconciler records the head; a customer then calls the
proxy. The head's host is the address the agent's connection came from, checked before any
connection: an agent whose connection comes from loopback, a private network, the metadata
address or the control plane's own network gets its head refused with a reason code, and a
listener there hears nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest
from sqlalchemy import select

from tesai.clusters import evidence, head_address
from tesai.clusters.models import ClusterNode, ClusterStatus, NodeRole
from tesai.clusters.reconcile import reconcile
from tesai.devices import agents, keys
from tesai.devices.deps import DeviceAuth
from tesai.devices.models import Device, DeviceEvent
from tesai.devices.reputation import OFFENCES
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.clusters.conftest import AddDevice, Grant
from tests.fixtures.auth import MakeUser
from tests.fixtures.processes import ServerProcess


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Production-shaped: the development allowance for internal heads is off."""
    return settings.model_copy(update={"ray_proxy_allow_internal_heads": False})


class Listener:
    """A TCP listener standing where an agent points the proxy; counts who connects."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def start(self, host: str) -> int:
        self.server = await asyncio.start_server(self._accepted, host, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    lst = Listener()
    yield lst
    await lst.stop()


def recording_head(runtime: Runtime) -> list[httpx.Request]:
    """Whatever the proxy sends anywhere (in place of its pooled client's network)."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"version": "4", "ray_version": "2.60.0"})

    runtime.state["ray_http"] = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return seen


def agent_client(client: httpx.AsyncClient, peer: str) -> httpx.AsyncClient:
    """The same app, reached from ``peer`` (the address the API sees the agent connect from)."""
    app = client._transport.app  # type: ignore[attr-defined]
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(peer, 40000)), base_url="http://testserver"
    )


async def device_headers(runtime: Runtime, device: Device) -> dict[str, str]:
    """A credential of the device, as its agent holds one after joining."""
    auth = DeviceAuth(device.id, device.provider_id, uuid.uuid4(), time.time() + 3600, "-")
    async with runtime.sessionmaker.begin() as s:
        rotation = await agents.rotate_credential(s, runtime.cache, runtime.settings, auth)
    return {"Authorization": f"Bearer {rotation.device_token}"}


async def head_running(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
    *,
    peer: str,
    reported: dict[str, Any],
) -> uuid.UUID:
    """A one-node cluster whose head's agent heartbeats from ``peer``, reporting ``reported``
    for its node, until the reconciler has it running."""
    device = await add_device(gpu_model=None, gpus=0)
    r = await client.post(
        "/api/v1/clusters", json={"request": {"nodes": 1, "duration_s": 3600}}, headers=customer
    )
    assert r.status_code == 201, r.text
    cid = uuid.UUID(r.json()["id"])
    headers = await device_headers(runtime, device)
    node = {"cluster_id": str(cid), "role": "head", "state": "running", "alive_nodes": 1}
    async with agent_client(client, peer) as agent:
        for seq in range(1, 5):
            await reconcile(runtime.task_context)
            beat = {
                "seq": seq,
                "sent_at": datetime.now(UTC).isoformat(),
                "telemetry": {"cpu_percent": 1.0, "mem_used_bytes": 1, "mem_total_bytes": 2},
                "nodes": [node | reported],
            }
            hb = await agent.post("/api/v1/agent/heartbeat", json=beat, headers=headers)
            assert hb.status_code == 200, hb.text
    # As if the control plane had seen the node in its head's Ray state (it would not read
    # a refused head: the evidence task checks the address as the proxy does).
    async with runtime.sessionmaker() as s:
        node_ids = list(
            (await s.scalars(select(ClusterNode.id).where(ClusterNode.cluster_id == cid))).all()
        )
    await evidence.record(runtime.cache, node_ids, now=time.time(), window_s=60)
    await reconcile(runtime.task_context)
    r = await client.get(f"/api/v1/clusters/{cid}", headers=customer)
    assert r.json()["status"] == ClusterStatus.running.value, r.text
    return cid


async def recorded_dashboard(runtime: Runtime, cid: uuid.UUID) -> str | None:
    async with runtime.sessionmaker() as s:
        return await s.scalar(
            select(ClusterNode.dashboard_url).where(
                ClusterNode.cluster_id == cid, ClusterNode.role == NodeRole.head
            )
        )


def refused(r: httpx.Response) -> str:
    assert r.status_code == 409, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "head_address_refused", body
    return str(body["reason"])


@pytest.fixture
async def customer(make_user: MakeUser, grant: Grant) -> dict[str, str]:
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    return headers


async def test_agent_reporting_loopback_head_address_is_refused(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
    listener: Listener,
) -> None:
    """The attack: an agent on the control plane's host (or one whose connection appears to
    come from its loopback) points the head at a service there."""
    port = await listener.start("127.0.0.1")
    cid = await head_running(
        client,
        runtime,
        customer,
        add_device,
        peer="127.0.0.1",
        reported={"ray_address": f"127.0.0.1:{port}", "dashboard_port": port},
    )
    for path in ("api/version", "api/jobs/"):
        r = await client.get(f"/api/v1/clusters/{cid}/ray/{path}", headers=customer)
        assert refused(r) == head_address.HEAD_ADDRESS_LOOPBACK
    r = await client.post(
        f"/api/v1/clusters/{cid}/jobs", json={"entrypoint": "echo hi"}, headers=customer
    )
    assert refused(r) == head_address.HEAD_ADDRESS_LOOPBACK
    # The control plane's own reading of the head's Ray state refuses it too.
    assert await evidence.gather(runtime.task_context) == {"heads": 1, "seen": 0}
    await asyncio.sleep(0.2)
    assert listener.connections == 0

    # Unseen for the window while its agent says it runs: the refused address is on its
    # device's record, once however many readings refuse it.
    long_ago = time.time() - runtime.settings.ray_evidence_window_s - 1
    async with runtime.sessionmaker.begin() as s:
        head = await s.scalar(select(ClusterNode).where(ClusterNode.cluster_id == cid))
        assert head is not None
        head.running_at = datetime.fromtimestamp(long_ago, UTC)
    await runtime.cache.zadd(evidence.RAY_SEEN, {str(head.id): long_ago})
    await runtime.cache.set(evidence.WATCHED_SINCE, repr(long_ago))
    for _ in range(3):
        assert await evidence.gather(runtime.task_context) == {"heads": 1, "seen": 0}
    async with runtime.sessionmaker() as s:
        caught = (
            await s.execute(
                select(DeviceEvent.reason, DeviceEvent.message).where(
                    DeviceEvent.device_id == head.device_id, DeviceEvent.reason.in_(OFFENCES)
                )
            )
        ).all()
    assert [reason for reason, _ in caught] == ["head_address_refused"]
    assert caught[0][1].endswith(f"{cid}: head_address_loopback.")
    assert listener.connections == 0


def _own_address() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return str(a.address)
    return None


async def test_agent_connecting_from_the_control_planes_own_network_is_refused(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
    listener: Listener,
) -> None:
    own = _own_address()
    if own is None:
        pytest.skip("this host has no address besides loopback")
    port = await listener.start(own)
    cid = await head_running(
        client,
        runtime,
        customer,
        add_device,
        peer=own,
        reported={"ray_address": f"{own}:{port}", "dashboard_port": port},
    )
    r = await client.get(f"/api/v1/clusters/{cid}/ray/api/version", headers=customer)
    assert refused(r) == head_address.HEAD_ADDRESS_CONTROL_PLANE
    await asyncio.sleep(0.2)
    assert listener.connections == 0


@pytest.mark.parametrize(
    ("peer", "reason"),
    [
        ("10.20.30.40", head_address.HEAD_ADDRESS_PRIVATE),
        ("192.168.1.7", head_address.HEAD_ADDRESS_PRIVATE),
        ("169.254.169.254", head_address.HEAD_ADDRESS_METADATA),
        ("169.254.3.4", head_address.HEAD_ADDRESS_LINK_LOCAL),
    ],
)
async def test_agent_connecting_from_a_private_or_metadata_address_is_refused(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
    peer: str,
    reason: str,
) -> None:
    seen = recording_head(runtime)
    cid = await head_running(
        client,
        runtime,
        customer,
        add_device,
        peer=peer,
        reported={"ray_address": f"{peer}:6379", "dashboard_port": 80},
    )
    r = await client.get(f"/api/v1/clusters/{cid}/ray/api/version", headers=customer)
    assert refused(r) == reason
    r = await client.get(f"/api/v1/clusters/{cid}/jobs", headers=customer)
    assert r.status_code == 200, r.text  # our own jobs still list; the head is not asked
    assert seen == []


async def test_head_address_is_where_the_agent_connects_from_not_the_host_it_names(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
) -> None:
    seen = recording_head(runtime)
    cid = await head_running(
        client,
        runtime,
        customer,
        add_device,
        peer="1.2.3.4",
        reported={"ray_address": "127.0.0.1:6379", "dashboard_port": 8265},
    )
    assert await recorded_dashboard(runtime, cid) == "http://1.2.3.4:8265"
    r = await client.get(f"/api/v1/clusters/{cid}/ray/api/version", headers=customer)
    assert r.status_code == 200, r.text
    [request] = seen
    assert str(request.url) == "http://1.2.3.4:8265/api/version"
    assert request.headers["authorization"] != customer["Authorization"]


async def test_head_redirecting_the_proxy_elsewhere_is_not_followed(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/"})

    runtime.state["ray_http"] = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    cid = await head_running(
        client,
        runtime,
        customer,
        add_device,
        peer="1.2.3.4",
        reported={"ray_address": "1.2.3.4:6379", "dashboard_port": 8265},
    )
    r = await client.get(f"/api/v1/clusters/{cid}/ray/api/version", headers=customer)
    assert r.status_code == 302
    assert [str(q.url) for q in seen] == ["http://1.2.3.4:8265/api/version"]


@pytest.mark.parametrize(
    ("address", "allow_internal", "reason"),
    [
        ("127.0.0.1", False, head_address.HEAD_ADDRESS_LOOPBACK),
        ("::1", False, head_address.HEAD_ADDRESS_LOOPBACK),
        ("::ffff:127.0.0.1", False, head_address.HEAD_ADDRESS_LOOPBACK),
        ("10.0.0.5", False, head_address.HEAD_ADDRESS_PRIVATE),
        ("172.16.0.1", False, head_address.HEAD_ADDRESS_PRIVATE),
        ("100.64.0.1", False, head_address.HEAD_ADDRESS_PRIVATE),
        ("fd12:3456::1", False, head_address.HEAD_ADDRESS_PRIVATE),
        ("fe80::1", False, head_address.HEAD_ADDRESS_LINK_LOCAL),
        ("169.254.169.254", True, head_address.HEAD_ADDRESS_METADATA),
        ("fd00:ec2::254", True, head_address.HEAD_ADDRESS_METADATA),
        ("0.0.0.0", True, head_address.HEAD_ADDRESS_RESERVED),
        ("224.0.0.1", True, head_address.HEAD_ADDRESS_RESERVED),
        ("127.0.0.1", True, None),
        ("10.0.0.5", True, None),
        ("1.2.3.4", False, None),
        ("2606:4700::1111", False, None),
    ],
)
def test_which_addresses_the_proxy_refuses(
    address: str, allow_internal: bool, reason: str | None
) -> None:
    ip = ipaddress.ip_address(address)
    assert head_address.refusal(ip, allow_internal=allow_internal, own_networks=()) == reason


def test_the_control_planes_own_networks_are_refused() -> None:
    own = [ipaddress.ip_network("203.0.113.0/24")]
    ip = ipaddress.ip_address("203.0.113.9")
    got = head_address.refusal(ip, allow_internal=False, own_networks=own)
    assert got == head_address.HEAD_ADDRESS_CONTROL_PLANE


def test_a_recorded_head_named_by_host_name_is_refused() -> None:
    settings = Settings(ray_proxy_allow_internal_heads=True)
    with pytest.raises(head_address.HeadAddressRefused) as caught:
        head_address.check_dashboard_url(settings, "http://metadata.google.internal:80")
    assert caught.value.extra["reason"] == head_address.HEAD_ADDRESS_UNKNOWN


@pytest.mark.parametrize(("trusted", "recorded"), [(None, "127.0.0.1"), ("127.0.0.1", "10.9.8.7")])
async def test_agent_forging_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
    settings: Settings,
    runtime: Runtime,
    add_device: AddDevice,
    tmp_path: Path,
    trusted: str | None,
    recorded: str,
) -> None:
    """The real server (uvicorn), an agent on its loopback naming another address in
    ``X-Forwarded-For``: recorded as the head's host only when ``TESAI_FORWARDED_ALLOW_IPS``
    says a proxy at the agent's address is trusted."""
    device = await add_device(gpu_model=None, gpus=0)
    headers = await device_headers(runtime, device)
    env = {"TESAI_FORWARDED_ALLOW_IPS": trusted} if trusted else {}
    server = ServerProcess(settings, tmp_path / "server.log", **env)
    server.start()
    try:
        beat = {
            "seq": 1,
            "sent_at": datetime.now(UTC).isoformat(),
            "telemetry": {"cpu_percent": 1.0, "mem_used_bytes": 1, "mem_total_bytes": 2},
        }
        async with httpx.AsyncClient(base_url=server.url) as agent:
            r = await agent.post(
                "/api/v1/agent/heartbeat",
                json=beat,
                headers=headers | {"X-Forwarded-For": "10.9.8.7"},
            )
            assert r.status_code == 200, r.text
    finally:
        server.stop()
    raw = await runtime.cache.get(keys.telemetry(str(device.id)))
    assert raw is not None
    assert orjson.loads(raw)["peer"] == recorded
