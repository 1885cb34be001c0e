"""Nothing of a customer's cluster answers without its token: every port of a running head,
asked without one from another machine's point of view (the host's own non-loopback
address), gives nothing away.

Ray 2.x serves its Prometheus metrics (job ids included), the dashboard agent's health checks
and the dashboard's own pages without a token; the agent starts Ray with
``ray_site/sitecustomize.py`` on its path, which closes them (``tesai.agent.ray_node``).
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tesai.agent.ray_node import (
    RAY_SITE_DIR,
    PortAllocator,
    PortRange,
    RayNode,
    find_processes,
    node_status,
    ray_env,
    start_head,
    stop_node,
)

HTTP_PATHS = (
    "/",
    "/metrics",
    "/api/healthz",
    "/api/local_raylet_healthz",
    "/api/gcs_healthz",
    "/api/version",
    "/api/jobs/",
    "/api/v0/nodes",
    "/api/authentication_mode",
    "/static/index.html",
)
"""What an outsider would try on an HTTP port."""

SLEEPER = "import ray, time; ray.init(); time.sleep(120)"


def test_ray_start_gets_the_lock_down_first_on_its_python_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/opt/mine")
    env = ray_env("tok", "c/0")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(RAY_SITE_DIR), "/opt/mine"]
    assert (RAY_SITE_DIR / "sitecustomize.py").is_file()


def test_a_customers_process_is_left_alone_and_its_own_sitecustomize_still_runs(
    tmp_path: Path,
) -> None:
    (tmp_path / "sitecustomize.py").write_text("print('theirs ran')\n")
    env = {**os.environ, "PYTHONPATH": f"{RAY_SITE_DIR}{os.pathsep}{tmp_path}"}
    done = subprocess.run(
        [sys.executable, "-c", "import sys; print(sys.argv)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.splitlines() == ["theirs ran", "['-c']"]
    assert done.stderr == ""


def _own_address() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return str(a.address)
    return None


@pytest.fixture
def temp_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tl", dir="/tmp"))  # short: Ray's unix sockets
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _listening(node: RayNode) -> dict[int, str]:
    """Every TCP port the node's processes listen on where others can reach them."""
    ports: dict[int, str] = {}
    for proc in find_processes(node.marker):
        try:
            name = proc.name()
            for c in proc.net_connections(kind="tcp"):
                if (
                    c.status == psutil.CONN_LISTEN
                    and not ipaddress.ip_address(c.laddr.ip.split("%")[0]).is_loopback
                ):
                    ports[c.laddr.port] = name
        except psutil.Error:
            continue
    return ports


def _http_answers(host: str, port: int) -> tuple[bool, list[str]]:
    """Whether the port speaks HTTP/1, and the paths that answered something other than
    401/403 without a token."""
    speaks_http, leaks = False, []
    for path in HTTP_PATHS:
        try:
            r = httpx.get(f"http://{host}:{port}{path}", timeout=5)
        except httpx.HTTPError:
            continue  # no HTTP/1 answer (gRPC speaks HTTP/2 only)
        speaks_http = True
        if r.status_code not in (401, 403):
            leaks.append(f"{path} → {r.status_code} {r.text[:60]!r}")
    return speaks_http, leaks


def _grpc_code(host: str, port: int, method: str) -> str:
    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary(
            method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        try:
            call(b"", timeout=5)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return "OK"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_port_of_a_running_head_gives_nothing_without_the_token(temp_root: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    own = _own_address()
    if own is None:
        pytest.skip("this host has no address besides loopback")
    allocator = PortAllocator(PortRange.parse("36000-36999"))
    token = f"tok-{uuid.uuid4().hex}"
    head = start_head(
        str(uuid.uuid4()),
        token,
        allocator=allocator,
        node_ip=own,
        dashboard_host="0.0.0.0",
        temp_root=temp_root,
        num_cpus=2,
    )
    try:
        dashboard = f"http://{own}:{head.ports.dashboard}"
        # The control plane's way in still works: the dashboard with the token.
        deadline = time.monotonic() + 120
        while node_status(head).alive_nodes != 1:
            assert time.monotonic() < deadline, node_status(head)
            time.sleep(1)
        jobs = JobSubmissionClient(dashboard, headers=head.auth_headers())
        entrypoint = f"{shlex.quote(sys.executable)} -c {shlex.quote(SLEEPER)}"
        while True:  # the head's job agent may still be starting (500 "Server disconnected")
            try:
                job = jobs.submit_job(entrypoint=entrypoint)
                break
            except RuntimeError:
                assert time.monotonic() < deadline
                time.sleep(2)
        while jobs.get_job_status(job).value != "RUNNING":
            assert time.monotonic() < deadline, jobs.get_job_logs(job)
            time.sleep(1)
        time.sleep(5)  # metrics servers and workers are up by now

        ports = _listening(head)
        p = head.ports
        assert p.dashboard in ports
        assert p.gcs in ports
        grpc_method = {
            p.gcs: "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
            p.node_manager: "/ray.rpc.NodeManagerService/GetNodeStats",
            p.object_manager: "/ray.rpc.ObjectManagerService/Push",
            p.dashboard_agent_grpc: "/ray.rpc.ReporterService/HealthCheck",
            p.ray_client_server: "/ray.rpc.RayletDriver/ClusterInfo",
        }
        leaks: dict[str, list[str]] = {}
        for port, name in sorted(ports.items()):
            speaks_http, found = _http_answers(own, port)
            if not speaks_http:  # a gRPC server: a real call of its own, without the token
                method = grpc_method.get(port, "/ray.rpc.CoreWorkerService/GetCoreWorkerStats")
                code = _grpc_code(own, port, method)
                if code != "UNAUTHENTICATED":
                    found.append(f"gRPC {method} → {code}")
            if found:
                leaks[f"{port} ({name})"] = found
        assert leaks == {}
        assert p.metrics_export not in ports
        r = httpx.get(f"{dashboard}/api/version", headers=head.auth_headers(), timeout=10)
        assert r.status_code == 200, r.text
        jobs.stop_job(job)
    finally:
        stop_node(head, allocator=allocator)
