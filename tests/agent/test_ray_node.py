"""Ray nodes on one host with token auth: a 3-node cluster, a real job, 401s, exact stops."""

from __future__ import annotations

import json
import random
import secrets
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

from tesai.agent import ray_node
from tesai.agent.port_locks import HostPortClaims
from tesai.agent.ray_node import (
    REASON_RAY_AUTH_FAILED,
    REASON_RAY_PORT_IN_USE,
    REASON_RAY_VERSION_MISMATCH,
    NodePorts,
    PortAllocator,
    PortRange,
    RayNode,
    RayNodeError,
    find_processes,
    installed_ray_version,
    join_cluster,
    node_states,
    node_status,
    ports_needed,
    ray_env,
    start_head,
    start_worker,
    stop_node,
)

MB = 1024 * 1024

# The job: one task pinned to each node by its tesai_node_<n> resource; prints their node ids.
JOB = """
import json, ray
ray.init()
@ray.remote(num_cpus=0)
def where():
    return ray.get_runtime_context().get_node_id()
refs = [where.options(resources={f"tesai_node_{i}": 0.5}).remote() for i in range(3)]
print("NODE_IDS=" + json.dumps(ray.get(refs)))
"""

# A job whose task can never be scheduled: the head must report it as pending demand.
PENDING_JOB = """
import ray, time
ray.init()
@ray.remote(num_cpus=0, resources={"tesai_wanted": 1})
def never():
    return 1
ref = never.remote()
time.sleep(600)
"""


def _range() -> PortRange:
    # Random, so that concurrent test runs rarely look in the same place (the allocator still
    # checks every port).
    first = random.randrange(30_000, 58_000, 500)
    return PortRange(first, first + 1_999)


def test_port_allocator_skips_busy_ports_and_lays_out_blocks() -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        port = busy.getsockname()[1]
        alloc = PortAllocator(PortRange(port - 2, port + 60))
        block = alloc.allocate(ports_needed("worker", worker_ports=4))
        assert port not in block
        assert block == list(range(block[0], block[0] + 10))
        again = alloc.allocate(3)  # reserved ports are not handed out twice
        assert not set(again) & set(block)
        alloc.release(block)
        assert alloc.allocate(10) == block

    head = NodePorts.from_block("head", list(range(100, 100 + ports_needed("head", 8))))
    args = head.args()
    assert "--port=106" in args
    assert "--dashboard-port=107" in args
    assert "--min-worker-port=109" in args
    assert "--max-worker-port=116" in args
    assert sorted(head.all()) == list(range(100, 117))
    with pytest.raises(RayNodeError, match="no_free_ports"):
        PortAllocator(PortRange(40_000, 40_003)).allocate(5)


# Another agent on the host: allocates a head's block from a range and holds it until killed.
OTHER_AGENT = """
import json, sys
from pathlib import Path
from tesai.agent.port_locks import HostPortClaims
from tesai.agent.ray_node import PortAllocator, PortRange, ports_needed
claims = HostPortClaims(Path(sys.argv[1]))
alloc = PortAllocator(PortRange(int(sys.argv[2]), int(sys.argv[3])), claims)
print(json.dumps(alloc.allocate(ports_needed("head"))), flush=True)
sys.stdin.read()
"""


def test_agents_with_overlapping_port_ranges_never_hand_out_the_same_ports(
    tmp_path: Path,
) -> None:
    """Two agents on one host allocate from the same range before any Ray binds: before,
    both got the first block, and one head's ``ray start`` met the other cluster's GCS on
    its port (``InvalidAuthToken``). The other agent's ports come free when it exits."""
    lock = tmp_path / "ports.lock"
    rng = _range()
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_AGENT, str(lock), str(rng.first), str(rng.last)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        theirs = json.loads(other.stdout.readline())
        mine = PortAllocator(rng, HostPortClaims(lock)).allocate(ports_needed("head"))
        assert not set(mine) & set(theirs)
    finally:
        other.kill()
        other.wait()
    later = PortAllocator(rng, HostPortClaims(lock)).allocate(ports_needed("head"))
    assert later == theirs  # the kernel dropped a dead agent's claims


def test_version_mismatch_is_refused_before_anything_starts() -> None:
    alloc = PortAllocator(_range())
    with pytest.raises(RayNodeError) as err:
        start_head(str(uuid.uuid4()), "x" * 32, allocator=alloc, required_ray_version="1.0.0")
    assert err.value.reason == REASON_RAY_VERSION_MISMATCH
    assert installed_ray_version() in err.value.message


def test_agent_join_command_reports_a_version_mismatch_as_a_reason() -> None:
    cluster_id = str(uuid.uuid4())
    state = join_cluster(
        {"cluster_id": cluster_id, "role": "worker", "token": "t", "ray_version": "1.0.0"}
    )
    assert state.state == "failed"
    assert state.reason == REASON_RAY_VERSION_MISMATCH
    no_head = join_cluster({"cluster_id": cluster_id, "role": "worker", "token": "t"})
    assert no_head.state == "failed"
    assert no_head.reason == "bad_args"
    assert node_states() == []


def test_ray_env_carries_the_token_and_drops_other_ray_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/somewhere")
    env = ray_env("tok", "c/1")
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN"] == "tok"
    assert env["TESAI_RAY_NODE"] == "c/1"
    assert "RAY_ADDRESS" not in env
    assert "RAY_AUTH_TOKEN_PATH" not in env


@pytest.fixture
def temp_root() -> Iterator[Path]:
    # Short on purpose: Ray's unix sockets live below it.
    root = Path(tempfile.mkdtemp(prefix="tr", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _wait_alive(head: RayNode, count: int, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if node_status(head).alive_nodes == count:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"head never reported {count} alive nodes: {node_status(head)}")


def _run_job(head: RayNode) -> list[str]:
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert head.dashboard_url is not None
    client = JobSubmissionClient(head.dashboard_url, headers=head.auth_headers())
    entrypoint = f"{shlex.quote(sys.executable)} -c {shlex.quote(JOB)}"
    job_id = client.submit_job(entrypoint=entrypoint)
    deadline = time.monotonic() + 180
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, f"job still {status}"
        time.sleep(1)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    line = next(ln for ln in logs.splitlines() if ln.startswith("NODE_IDS="))
    return list(json.loads(line.removeprefix("NODE_IDS=")))


def _assert_pending_demand_reported(head: RayNode) -> None:
    from ray.job_submission import JobSubmissionClient

    assert head.dashboard_url is not None
    client = JobSubmissionClient(head.dashboard_url, headers=head.auth_headers())
    job_id = client.submit_job(
        entrypoint=f"{shlex.quote(sys.executable)} -c {shlex.quote(PENDING_JOB)}"
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            demand = node_status(head).pending_demand or []
            if any("tesai_wanted" in d["shape"] for d in demand):
                break
            assert time.monotonic() < deadline, f"no pending demand reported: {demand}"
            time.sleep(1)
    finally:
        client.stop_job(job_id)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_node_cluster_with_token_auth(temp_root: Path) -> None:
    alloc = PortAllocator(_range())
    cluster_id = str(uuid.uuid4())
    token = secrets.token_urlsafe(32)
    opts = {"allocator": alloc, "num_cpus": 1, "object_store_memory": 100 * MB}
    opts["temp_root"] = temp_root
    nodes: list[RayNode] = []
    try:
        t0 = time.monotonic()
        head = start_head(cluster_id, token, required_ray_version=installed_ray_version(), **opts)
        nodes.append(head)
        # One after the other: on a loaded 2-core host two joins at once can push Ray past
        # its fixed 30 s wait for the raylet's Python agents.
        workers = [
            start_worker(cluster_id, token, head.gcs_address, node_index=i, **opts) for i in (1, 2)
        ]
        nodes += workers
        ready = _wait_alive(head, 3, timeout_s=90)
        total = time.monotonic() - t0
        print(
            f"\nray timings: head start {head.start_seconds:.1f} s; joins "
            + ", ".join(f"{w.start_seconds:.1f} s" for w in workers)
            + f" (attempts: head {head.attempts}, workers {[w.attempts for w in workers]});"
            + f" 3 alive {ready:.1f} s later; total {total:.1f} s"
        )
        print("head command:", " ".join(head.command))
        print("worker command:", " ".join(workers[0].command))

        # A real job through the Job Submission API with the bearer token: one task per node.
        node_ids = _run_job(head)
        assert len(set(node_ids)) == 3

        # Pending demand shows up in the head's status (what the autoscaler acts on).
        _assert_pending_demand_reported(head)

        # Without the token the same API refuses; with a wrong one too.
        assert head.dashboard_url is not None
        jobs = f"{head.dashboard_url}/api/jobs/"
        assert httpx.get(jobs).status_code == 401
        assert httpx.post(jobs, json={"entrypoint": "echo hi"}).status_code == 401
        wrong = {"Authorization": "Bearer " + secrets.token_urlsafe(32)}
        assert httpx.get(jobs, headers=wrong).status_code == 403
        assert httpx.get(jobs, headers=head.auth_headers()).status_code == 200

        # A node with another token cannot join.
        with pytest.raises(RayNodeError) as err:
            start_worker(cluster_id, "not-the-token", head.gcs_address, node_index=3, **opts)
        assert err.value.reason == REASON_RAY_AUTH_FAILED
        assert not find_processes(f"{cluster_id}/3")
        assert node_status(head).alive_nodes == 3

        # Stopping one node leaves the others running.
        worker_pids = {p.pid for p in find_processes(workers[0].marker)}
        assert worker_pids
        assert stop_node(workers[0], allocator=alloc) >= len(worker_pids)
        assert not any(psutil.pid_exists(pid) for pid in worker_pids)
        assert node_status(head).up
        assert node_status(workers[1]).raylet_alive

        every_pid = {p.pid for n in (head, workers[1]) for p in find_processes(n.marker)}
        for node in (workers[1], head):
            stop_node(node, allocator=alloc)
        nodes.clear()
        assert not find_processes(f"{cluster_id}/")
        assert not any(psutil.pid_exists(pid) for pid in every_pid)
        leftovers = []
        for proc in psutil.process_iter(["cmdline"]):
            if str(temp_root) in " ".join(proc.info["cmdline"] or []):
                leftovers.append(proc)
        assert not leftovers
    finally:
        stop_node(marker=f"{cluster_id}/")


class _GcsPortTaken(PortAllocator):
    """Another process binds the GCS port of the blocks this allocator hands out (the first
    ``times``) right after it checked them: the race between our check and Ray's bind."""

    def __init__(self, ports: PortRange, times: int) -> None:
        super().__init__(ports)
        self.times = times
        self.taken: list[socket.socket] = []

    def allocate(self, count: int) -> list[int]:
        block = super().allocate(count)
        if count == ports_needed("head") and len(self.taken) < self.times:
            holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            holder.bind(("0.0.0.0", NodePorts.from_block("head", block).gcs or 0))
            self.taken.append(holder)
        return block

    def close(self) -> None:
        for s in self.taken:
            s.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_head_whose_gcs_port_was_taken_starts_on_the_same_device_on_its_second_try(
    temp_root: Path,
) -> None:
    """Not the device's fault: the agent tries once more on fresh ports instead of
    reporting a failure that costs the device (``head_lost``)."""
    alloc = _GcsPortTaken(_range(), times=1)
    cluster_id = str(uuid.uuid4())
    try:
        head = start_head(
            cluster_id, secrets.token_urlsafe(32), allocator=alloc, temp_root=temp_root
        )
        taken = alloc.taken[0].getsockname()[1]
        assert head.attempts == 2
        assert head.ports.gcs != taken
        assert node_status(head).up
        print(f"\nhead up on its second try in {head.start_seconds:.1f} s")
    finally:
        stop_node(marker=f"{cluster_id}/")
        alloc.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_head_that_cannot_start_reports_rays_own_lines_without_the_token(
    temp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the agent's join command: a port clash on both tries is reported as such
    (not ``ray_auth_failed``), with Ray's words naming the port, and nothing left running."""
    alloc = _GcsPortTaken(_range(), times=2)
    monkeypatch.setattr(ray_node, "_allocator", alloc)
    monkeypatch.setenv("TESAI_RAY_TEMP_ROOT", str(temp_root))
    cluster_id = str(uuid.uuid4())
    token = secrets.token_urlsafe(32)
    try:
        state = join_cluster({"cluster_id": cluster_id, "role": "head", "token": token})
        assert state.state == "failed"
        assert state.reason == REASON_RAY_PORT_IN_USE
        assert state.message is not None
        last = alloc.taken[-1].getsockname()[1]
        assert f"The specified port is {last}" in state.message
        assert state.message.startswith("ray start: RuntimeError: Failed to start GCS")
        assert token not in state.message
        assert len(alloc.taken) == 2
        assert not find_processes(f"{cluster_id}/")
        assert not list(temp_root.iterdir())
    finally:
        stop_node(marker=f"{cluster_id}/")
        alloc.close()
