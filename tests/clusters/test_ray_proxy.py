"""What Ray's own tooling does through the Ray proxy: WebSockets (the log tail of ``ray job
submit`` and ``ray job logs -f``), package uploads larger than the API's body limit, streamed,
and the job list that includes what Ray knows.

The head is a stand-in served on a real socket (``FakeHead``: the endpoints Ray's dashboard
offers for these, checking the cluster's token like Ray does); the API runs in-process, or
on a real socket where a WebSocket needs one. Real Ray through the proxy:
tests/e2e/test_ray_tooling.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tesai.clusters.models import Cluster, ClusterNode, ClusterStatus, Job, NodeRole, NodeState
from tesai.clusters.service import secret_box
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.auth.oidc_provider import free_socket, serve_asgi
from tests.clusters.conftest import AddDevice, Grant
from tests.fixtures.auth import MakeUser
from tests.fixtures.cli import serve_api

MiB = 1 << 20
TAIL = ["line one\n", "line two\n", "done\n"]


@dataclass
class FakeHead:
    """A head's dashboard: what reached it, and the token it takes."""

    token: str = ""
    url: str = ""
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    """(method, path, Authorization) of every HTTP request and WebSocket."""
    socket_extensions: list[str | None] = field(default_factory=list)
    """``Sec-WebSocket-Extensions`` of each WebSocket handshake."""
    uploaded: int = 0
    first_megabyte: threading.Event = field(default_factory=threading.Event)
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def authorized(self, headers: Any) -> bool:
        return bool(headers.get("authorization") == f"Bearer {self.token}")

    def app(self) -> Starlette:
        async def version(request: Request) -> Response:
            self.requests.append(("GET", "/api/version", request.headers.get("authorization")))
            if not self.authorized(request.headers):
                return PlainTextResponse("Unauthorized", status_code=401)
            return JSONResponse({"version": "4", "ray_version": "2.60.0", "ray_commit": "x"})

        async def jobs(request: Request) -> Response:
            self.requests.append(("GET", "/api/jobs/", request.headers.get("authorization")))
            if not self.authorized(request.headers):
                return PlainTextResponse("Unauthorized", status_code=401)
            return JSONResponse(self.jobs)

        async def upload(request: Request) -> Response:
            self.requests.append(("PUT", request.url.path, request.headers.get("authorization")))
            if not self.authorized(request.headers):
                return PlainTextResponse("Unauthorized", status_code=401)
            async for chunk in request.stream():
                self.uploaded += len(chunk)
                if self.uploaded >= MiB:
                    self.first_megabyte.set()
            return PlainTextResponse("ok")

        async def authenticate(request: Request) -> Response:
            # Ray's answer: a cookie holding the token the request carried.
            response = PlainTextResponse("ok")
            response.set_cookie("ray-authentication-token", self.token, httponly=True)
            return response

        async def tail(websocket: WebSocket) -> None:
            self.requests.append(("WS", websocket.url.path, websocket.headers.get("authorization")))
            self.socket_extensions.append(websocket.headers.get("sec-websocket-extensions"))
            if not self.authorized(websocket.headers):
                await websocket.close(code=1008)
                return
            await websocket.accept()
            for line in TAIL:
                await websocket.send_text(line)
            await websocket.close(code=1000)

        return Starlette(
            routes=[
                Route("/api/version", version),
                Route("/api/jobs/", jobs),
                Route("/api/packages/{protocol}/{name}", upload, methods=["PUT", "GET"]),
                Route("/api/authenticate", authenticate, methods=["POST"]),
                WebSocketRoute("/api/jobs/{job_id}/logs/tail", tail),
            ]
        )


@pytest.fixture
def head() -> Iterator[FakeHead]:
    h = FakeHead()
    with serve_asgi(h.app(), free_socket()) as url:
        h.url = url
        yield h


@pytest.fixture
async def customer(make_user: MakeUser, grant: Grant) -> dict[str, str]:
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    return headers


async def running_cluster(
    client: httpx.AsyncClient,
    runtime: Runtime,
    headers: dict[str, str],
    add_device: AddDevice,
    head: FakeHead,
) -> uuid.UUID:
    """A running cluster of the customer whose head is ``head`` (its token given to it)."""
    await add_device(gpu_model=None, gpus=0)
    r = await client.post(
        "/api/v1/clusters", json={"request": {"nodes": 1, "duration_s": 3600}}, headers=headers
    )
    assert r.status_code == 201, r.text
    cid = uuid.UUID(r.json()["id"])
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(Cluster).where(Cluster.id == cid).values(status=ClusterStatus.running)
        )
        await s.execute(
            update(ClusterNode)
            .where(ClusterNode.cluster_id == cid, ClusterNode.role == NodeRole.head)
            .values(state=NodeState.running, dashboard_url=head.url)
        )
        sealed = await s.scalar(select(Cluster.ray_token_sealed).where(Cluster.id == cid))
    head.token = secret_box(runtime.settings).open(sealed)
    return cid


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    with serve_api(settings) as url:
        yield url


def socket_url(api_url: str, cid: uuid.UUID, job: str = "raysubmit_1") -> str:
    return f"ws{api_url.removeprefix('http')}/api/v1/clusters/{cid}/ray/api/jobs/{job}/logs/tail"


# --- WebSockets ----------------------------------------------------------------------------------


async def test_job_log_tail_is_carried_over_a_websocket_with_the_clusters_token(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
    head: FakeHead,
    api_url: str,
) -> None:
    """``ray job submit`` (without --no-wait) and ``ray job logs -f`` tail over a WebSocket."""
    cid = await running_cluster(client, runtime, customer, add_device, head)
    received: list[str] = []
    async with connect(socket_url(api_url, cid), additional_headers=customer) as ws:
        async for message in ws:
            received.append(str(message))
    assert received == TAIL
    assert ws.close_code == 1000
    [(_, path, authorization)] = [r for r in head.requests if r[0] == "WS"]
    assert path == "/api/jobs/raysubmit_1/logs/tail"
    assert authorization == f"Bearer {head.token}"  # the cluster's, never the customer's
    # Uncompressed, like Ray's own client: Ray's head closes a compressed log tail unsent.
    assert head.socket_extensions == [None]


async def test_rays_own_job_client_tails_logs_through_the_proxy(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
    head: FakeHead,
    api_url: str,
) -> None:
    from ray.job_submission import JobSubmissionClient

    cid = await running_cluster(client, runtime, customer, add_device, head)

    def tail() -> list[str]:
        ray_client = JobSubmissionClient(
            f"{api_url}/api/v1/clusters/{cid}/ray", headers=dict(customer)
        )

        async def lines() -> list[str]:
            return [chunk async for chunk in ray_client.tail_job_logs("raysubmit_1")]

        return asyncio.run(lines())

    assert await asyncio.to_thread(tail) == TAIL


@pytest.mark.parametrize("credential", [None, "Bearer not-a-token"])
async def test_websocket_without_valid_credentials_is_refused_and_the_head_hears_nothing(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
    head: FakeHead,
    api_url: str,
    credential: str | None,
) -> None:
    cid = await running_cluster(client, runtime, customer, add_device, head)
    headers = {"Authorization": credential} if credential else {}
    with pytest.raises(InvalidStatus) as refused:
        async with connect(socket_url(api_url, cid), additional_headers=headers):
            pass
    assert refused.value.response.status_code == 401
    assert b"unauthorized" in refused.value.response.body or b"token" in (
        refused.value.response.body
    )
    assert head.requests == []


async def test_websocket_to_another_customers_cluster_is_not_found(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    make_user: MakeUser,
    add_device: AddDevice,
    head: FakeHead,
    api_url: str,
) -> None:
    cid = await running_cluster(client, runtime, customer, add_device, head)
    _, other = await make_user()
    with pytest.raises(InvalidStatus) as refused:
        async with connect(socket_url(api_url, cid), additional_headers=other):
            pass
    assert refused.value.response.status_code == 404
    assert head.requests == []


# --- uploads -------------------------------------------------------------------------------------


async def test_working_dir_package_over_the_api_body_limit_streams_to_the_head(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
    head: FakeHead,
) -> None:
    """5 MiB, five times the API's body limit: the head hears the first megabyte before the
    customer has sent the rest (a proxy holding the body whole would wait forever)."""
    cid = await running_cluster(client, runtime, customer, add_device, head)
    size = 5 * MiB
    assert size > runtime.settings.max_body_bytes

    async def body() -> AsyncIterator[bytes]:
        for i in range(5):
            if i == 2:
                deadline = time.monotonic() + 20
                while not head.first_megabyte.is_set():
                    assert time.monotonic() < deadline, "the head got nothing before the end"
                    await asyncio.sleep(0.05)
            yield b"\x00PK" * (MiB // 3) + b"\x00" * (MiB % 3)

    r = await client.put(
        f"/api/v1/clusters/{cid}/ray/api/packages/gcs/_ray_pkg_0123456789abcdef.zip",
        content=body(),
        headers=customer | {"Content-Length": str(size)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert head.uploaded == size


async def test_package_over_the_upload_limit_is_refused_before_the_head_hears_of_it(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
    head: FakeHead,
) -> None:
    cid = await running_cluster(client, runtime, customer, add_device, head)
    too_big = runtime.settings.ray_upload_max_bytes + 1

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 1024  # the declared length is refused before any of it is read

    r = await client.put(
        f"/api/v1/clusters/{cid}/ray/api/packages/gcs/_ray_pkg_big.zip",
        content=body(),
        headers=customer | {"Content-Length": str(too_big)},
    )
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "payload_too_large"
    assert str(runtime.settings.ray_upload_max_bytes) in r.json()["detail"]
    assert head.requests == []


async def test_other_requests_through_the_proxy_keep_the_api_body_limit(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
    head: FakeHead,
) -> None:
    cid = await running_cluster(client, runtime, customer, add_device, head)
    r = await client.post(
        f"/api/v1/clusters/{cid}/ray/api/jobs/",
        content=b"{" + b" " * (2 * MiB) + b"}",
        headers=customer | {"Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text
    assert head.requests == []


async def test_rays_sign_in_through_the_proxy_does_not_hand_out_the_clusters_token(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
    head: FakeHead,
) -> None:
    cid = await running_cluster(client, runtime, customer, add_device, head)
    r = await client.post(f"/api/v1/clusters/{cid}/ray/api/authenticate", headers=customer)
    assert r.status_code == 200, r.text
    assert "set-cookie" not in r.headers
    assert head.token not in r.text


# --- the job list --------------------------------------------------------------------------------


async def test_jobs_submitted_with_plain_ray_are_listed_and_marked(
    client: httpx.AsyncClient,
    runtime: Runtime,
    customer: dict[str, str],
    add_device: AddDevice,
    head: FakeHead,
) -> None:
    cid = await running_cluster(client, runtime, customer, add_device, head)
    ours = Job(
        id=uuid.uuid4(),
        cluster_id=cid,
        submission_id="tesai-0000000000000001",
        entrypoint="python ours.py",
        status="RUNNING",
        max_retries=0,
        attempts=1,
    )
    async with runtime.sessionmaker.begin() as s:
        s.add(ours)
    now_ms = int(time.time() * 1000)
    head.jobs = [
        {
            "type": "SUBMISSION",
            "job_id": "02000000",
            "submission_id": "tesai-0000000000000001",
            "status": "SUCCEEDED",
            "entrypoint": "python ours.py",
            "message": "Job finished successfully.",
            "start_time": now_ms - 5000,
            "end_time": now_ms - 1000,
        },
        {
            "type": "SUBMISSION",
            "job_id": "03000000",
            "submission_id": "raysubmit_AbCdEf",
            "status": "RUNNING",
            "entrypoint": "python train.py",
            "message": None,
            "start_time": now_ms,
            "end_time": None,
        },
    ]
    r = await client.get(f"/api/v1/clusters/{cid}/jobs", headers=customer)
    assert r.status_code == 200, r.text
    rows = {j["submission_id"]: j for j in r.json()}
    assert set(rows) == {"tesai-0000000000000001", "raysubmit_AbCdEf"}
    mine, theirs = rows["tesai-0000000000000001"], rows["raysubmit_AbCdEf"]
    assert mine["id"] == str(ours.id)
    assert mine["submitted_via"] == "tesai"
    assert mine["status"] == "SUCCEEDED"  # what Ray says now
    assert theirs["id"] is None
    assert theirs["submitted_via"] == "ray"
    assert theirs["entrypoint"] == "python train.py"
    assert theirs["status"] == "RUNNING"
    assert r.json()[0]["submission_id"] == "raysubmit_AbCdEf"  # newest first

    # The head stops answering: our own jobs are still listed.
    with free_socket() as closed:  # bound, never listening: connections are refused
        async with runtime.sessionmaker.begin() as s:
            await s.execute(
                update(ClusterNode)
                .where(ClusterNode.cluster_id == cid)
                .values(dashboard_url=f"http://127.0.0.1:{closed.getsockname()[1]}")
            )
        r = await client.get(f"/api/v1/clusters/{cid}/jobs", headers=customer)
    assert r.status_code == 200, r.text
    assert [j["submission_id"] for j in r.json()] == ["tesai-0000000000000001"]
