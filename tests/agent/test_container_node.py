"""Cluster nodes in containers: the container a node gets, and a real cluster on a real engine.

The pure half (``container_spec``, ``node_limits``, the network's addresses, the node-runtime
choice) runs everywhere. The ``containers`` test needs a Docker Engine and the node image:
``make test-containers`` provides both (``scripts/docker_engine.sh``, ``make node-image``) and
runs it; without them it fails and says which is missing.
"""

from __future__ import annotations

import random
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tesai.agent import node_image
from tesai.agent.commands import CommandHandlers
from tesai.agent.container_node import ContainerRuntime, ContainerRuntimeUnavailable
from tesai.agent.container_spec import (
    CONTAINER_USER,
    LABEL_CLUSTER,
    LABEL_DEVICE,
    LABEL_NODE,
    LABEL_ROLE,
    container_spec,
    gpu_device_requests,
    node_limits,
    state_of_container,
)
from tesai.agent.network import network_name
from tesai.agent.network.bridge import address_in, pick_subnet
from tesai.agent.node_runtime import ProcessRuntime, runtime_for
from tesai.agent.node_spec import BadNodeArgs, NodeSpec, ray_start_argv
from tesai.agent.ray_node import PortAllocator, PortRange
from tesai.protocol.v1 import Command

GiB = 1024**3
MiB = 1024**2
TOKEN = "tok-" + "s" * 28


def _spec(**over: Any) -> NodeSpec:
    args: dict[str, Any] = {
        "cluster_id": str(uuid.uuid4()),
        "role": "head",
        "node_index": 0,
        "token": TOKEN,
        "ray_version": node_image.RAY_VERSION,
        "resources": {"tesai_node_x": 1},
        "labels": {"tesai.gpu_model": "cpu"},
    }
    args.update(over)
    return NodeSpec.from_args(args)


def _kwargs(spec: NodeSpec, gpus: tuple[str, ...] = ()) -> dict[str, Any]:
    return container_spec(
        spec,
        image=node_image.IMAGE,
        owner="agent-1",
        network=network_name(spec.cluster_id),
        address="172.30.0.2",
        limits=node_limits(spec, host_cpus=8, host_memory=32 * GiB),
        gpu_uuids=gpus,
        publish_host="127.0.0.1",
        host_ports=(20001, 20002),
    )


# --- the container of a node ---------------------------------------------------------------------


def test_a_node_container_is_locked_down_and_never_sees_the_host() -> None:
    kw = _kwargs(_spec())
    assert kw["user"] == CONTAINER_USER
    assert not CONTAINER_USER.startswith("0")
    assert kw["read_only"] is True
    assert kw["cap_drop"] == ["ALL"]
    assert kw["security_opt"] == ["no-new-privileges"]
    assert kw["privileged"] is False
    assert "/tmp" in kw["tmpfs"]
    # One named volume, no host path, no Docker socket, no host namespaces.
    (volume, mount), *others = kw["volumes"].items()
    assert not others
    assert volume.startswith("tesai-scratch-")  # a named volume, not a host path
    assert mount["bind"] == node_image.HOME_DIR
    for key in ("mounts", "devices", "network_mode", "pid_mode", "ipc_mode", "userns_mode"):
        assert key not in kw
    assert kw["network"].startswith("tesai-")


def test_the_token_travels_in_the_environment_never_on_the_command_line() -> None:
    for role, extra in (("head", {}), ("worker", {"head_address": "172.30.0.2:6379"})):
        kw = _kwargs(_spec(role=role, node_index=1, **extra))
        assert kw["environment"]["RAY_AUTH_TOKEN"] == TOKEN
        assert kw["environment"]["RAY_AUTH_MODE"] == "token"
        assert not any(TOKEN in part for part in kw["command"])
        assert not any(TOKEN in value for value in kw["labels"].values())
        assert TOKEN not in repr(_spec())


def test_head_and_worker_run_the_same_ray_start_as_the_process_mode_plus_block() -> None:
    head = _spec()
    kw = _kwargs(head)
    command = kw["command"]
    assert command[:3] == ["ray", "start", "--head"]
    assert "--block" in command
    assert "--node-ip-address=172.30.0.2" in command
    assert "--dashboard-host=0.0.0.0" in command
    assert "--temp-dir=/tmp/ray" in command
    process = ray_start_argv(
        head, executable="ray", temp_dir="/tmp/ray", node_ip="172.30.0.2", dashboard_host="0.0.0.0"
    )
    # The process mode's argv, with --block and the spill directory added.
    assert [c for c in command if c != "--block" and "spilling" not in c] == process
    worker = _kwargs(_spec(role="worker", node_index=3, head_address="172.30.0.2:6379"))
    assert "--address=172.30.0.2:6379" in worker["command"]
    assert worker["ports"] == {}  # only a head publishes ports
    assert kw["ports"] == {"6379/tcp": ("127.0.0.1", 20001), "8265/tcp": ("127.0.0.1", 20002)}


def test_labels_name_the_cluster_node_device_and_role() -> None:
    spec = _spec(node_index=4)
    labels = _kwargs(spec)["labels"]
    assert labels[LABEL_CLUSTER] == spec.cluster_id
    assert labels[LABEL_NODE] == "4"
    assert labels[LABEL_DEVICE] == "agent-1"
    assert labels[LABEL_ROLE] == "head"


def test_limits_come_from_the_node_arguments_else_the_device() -> None:
    declared = node_limits(
        _spec(num_cpus=2, memory=8 * GiB, object_store_memory=2 * GiB),
        host_cpus=16,
        host_memory=64 * GiB,
    )
    assert declared.nano_cpus == 2_000_000_000
    assert declared.mem_limit == 8 * GiB
    assert 2 * GiB < declared.shm_size <= 2 * GiB + 128 * MiB  # the object store fits in shm
    device = node_limits(_spec(), host_cpus=16, host_memory=64 * GiB, pids_limit=1000)
    assert device.nano_cpus == 16_000_000_000
    assert 60 * GiB < device.mem_limit < 64 * GiB
    assert device.pids_limit == 1000
    assert device.shm_size < device.mem_limit
    kw = _kwargs(_spec(num_cpus=2, memory=8 * GiB))
    assert (kw["nano_cpus"], kw["mem_limit"], kw["memswap_limit"]) == (2e9, 8 * GiB, 8 * GiB)
    assert kw["pids_limit"] > 0
    assert kw["shm_size"] > 0


def test_gpus_are_requested_by_nvml_uuid_and_none_without_gpus() -> None:
    uuids = ["GPU-6c2b1f0e-aaaa-bbbb-cccc-000000000001", "GPU-6c2b1f0e-aaaa-bbbb-cccc-000000000002"]
    (request,) = gpu_device_requests(uuids)
    assert request["Driver"] == "nvidia"
    assert request["DeviceIDs"] == uuids
    assert request["Capabilities"] == [["gpu"]]
    assert not request.get("Count")  # exactly these, never "all"
    assert gpu_device_requests([]) == []
    assert _kwargs(_spec(), gpus=tuple(uuids))["device_requests"][0]["DeviceIDs"] == uuids
    assert _kwargs(_spec())["device_requests"] == []


def test_a_container_state_becomes_a_node_state_with_a_reason() -> None:
    assert state_of_container("running", 0, False) == ("running", None, None)
    assert state_of_container("created", 0, False)[0] == "starting"
    state, reason, message = state_of_container("exited", 137, True)
    assert (state, reason) == ("failed", "oom_killed")
    state, reason, message = state_of_container("exited", 1, False)
    assert (state, reason) == ("failed", "node_exited")
    assert message is not None
    assert "exit code 1" in message


def test_join_args_without_a_token_or_a_head_address_are_refused() -> None:
    with pytest.raises(BadNodeArgs):
        _spec(token="")
    with pytest.raises(BadNodeArgs):
        _spec(role="worker", node_index=1)
    with pytest.raises(BadNodeArgs):
        _spec(cluster_id="not-a-uuid")


# --- network -------------------------------------------------------------------------------------


def test_a_cluster_subnet_avoids_every_subnet_in_use() -> None:
    used = ["172.30.0.0/24", "172.30.1.0/25", "172.17.0.0/16", "garbage"]
    assert str(pick_subnet("172.30.0.0/16", used)) == "172.30.2.0/24"
    assert pick_subnet("172.30.0.0/23", ["172.30.0.0/23"]) is None


def test_node_addresses_follow_the_index_and_skip_taken_ones() -> None:
    assert address_in("172.30.5.0/24", 0) == "172.30.5.2"  # .1 is the bridge gateway
    assert address_in("172.30.5.0/24", 3) == "172.30.5.5"
    assert address_in("172.30.5.0/24", 0, ["172.30.5.2/24"]) == "172.30.5.3"


# --- choosing the runtime ------------------------------------------------------------------------


def test_the_runtime_setting_picks_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESAI_NODE_RUNTIME", raising=False)
    assert isinstance(runtime_for(owner="a"), ProcessRuntime)  # today's default
    container = runtime_for("container", owner="a")
    assert container.isolation == "container"
    monkeypatch.setenv("TESAI_NODE_RUNTIME", "process")
    assert runtime_for(owner="a").isolation == "process"
    with pytest.raises(ValueError, match="TESAI_NODE_RUNTIME"):
        runtime_for("vm", owner="a")


async def test_a_container_join_without_an_engine_fails_with_a_reason() -> None:
    def no_engine() -> Any:
        raise ContainerRuntimeUnavailable("no Docker Engine answers")

    handlers = CommandHandlers(_never_verify, ContainerRuntime("agent-1", client=no_engine))
    spec = _spec()
    args = {"cluster_id": spec.cluster_id, "role": "head", "token": TOKEN}
    result = await handlers.handle(Command(id=uuid.uuid4(), kind="join_cluster", args=args))
    assert not result.ok
    assert result.detail == "container_runtime_unavailable"
    assert await handlers.node_states() == []


async def _never_verify(_: Any) -> Any:
    raise AssertionError("not called")


# --- a real cluster in containers ----------------------------------------------------------------


def _engine_and_image() -> str | None:
    """Why the slow test cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        import docker  # noqa: F401
    except ImportError:
        return "no docker package"
    info = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    if info.returncode != 0:
        return "no Docker Engine answers (scripts/docker_engine.sh)"
    image = subprocess.run(
        ["docker", "image", "inspect", node_image.IMAGE],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if image.returncode != 0:
        return f"no {node_image.IMAGE} (make node-image)"
    return None


@pytest.fixture
def engine() -> Iterator[Any]:
    missing = _engine_and_image()
    if missing:
        pytest.fail(f"{missing}: run it with make test-containers")
    import docker

    client = docker.from_env(version="auto")
    yield client
    client.close()


def _purge(client: Any, cluster_id: str) -> None:
    for c in client.containers.list(all=True, filters={"label": f"{LABEL_CLUSTER}={cluster_id}"}):
        c.remove(force=True)
    for v in client.volumes.list(filters={"label": f"{LABEL_CLUSTER}={cluster_id}"}):
        v.remove(force=True)
    for n in client.networks.list(names=[network_name(cluster_id)]):
        n.remove()


def _wait_alive(runtime: ContainerRuntime, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        heads = [s for s in runtime.node_states() if s.role == "head"]
        if heads and heads[0].alive_nodes == count:
            return
        assert time.monotonic() < deadline, f"head never saw {count} nodes: {heads}"
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.containers
@pytest.mark.timeout(600)
def test_a_cluster_in_containers_is_sandboxed_survives_an_agent_restart_and_leaves_nothing(
    engine: Any,
) -> None:
    cluster_id = str(uuid.uuid4())
    token = secrets.token_urlsafe(32)
    owner = f"test-{secrets.token_hex(6)}"
    first = random.randrange(30_000, 58_000, 500)
    ports = PortAllocator(PortRange(first, first + 499))
    runtime = ContainerRuntime(owner, allocator=ports)
    common = {
        "cluster_id": cluster_id,
        "token": token,
        "ray_version": node_image.RAY_VERSION,
        "num_cpus": 1,
        "memory": 3 * GiB,
        "object_store_memory": 100 * MiB,
        "node_ip": "127.0.0.1",  # publish the head's ports on loopback only
    }
    try:
        started = time.monotonic()
        head = runtime.join_cluster(common | {"role": "head", "node_index": 0})
        assert head.state == "running", head
        assert head.ray_address
        assert head.dashboard_port
        worker = runtime.join_cluster(
            common | {"role": "worker", "node_index": 1, "head_address": head.ray_address}
        )
        assert worker.state == "running", worker
        _wait_alive(runtime, 2, 90)
        print(f"head and worker up in {time.monotonic() - started:.1f} s")

        # The head's state API: 2 alive nodes with the token, 401 without it.
        url = f"http://127.0.0.1:{head.dashboard_port}/api/v0/nodes"
        assert httpx.get(url, timeout=10).status_code == 401
        rows = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
        alive = [r for r in rows["data"]["result"]["result"] if r["state"] == "ALIVE"]
        assert len(alive) == 2

        # What the engine runs: read-only, non-root, no capabilities, no host path.
        containers = engine.containers.list(filters={"label": f"{LABEL_CLUSTER}={cluster_id}"})
        assert len(containers) == 2
        ids = sorted(c.id for c in containers)
        for c in containers:
            host = c.attrs["HostConfig"]
            assert host["ReadonlyRootfs"] is True
            assert host["CapDrop"] == ["ALL"]
            assert "no-new-privileges" in host["SecurityOpt"]
            assert host["Privileged"] is False
            # Named volumes only: a bind's source is never a host path (nor the Docker socket).
            assert not [b for b in host.get("Binds") or [] if b.startswith("/")]
            assert {m["Type"] for m in c.attrs["Mounts"]} <= {"volume", "tmpfs"}
            assert c.attrs["Config"]["User"] == CONTAINER_USER
            assert not any(token in part for part in c.attrs["Config"]["Cmd"])
            probe = c.exec_run(
                [
                    "sh",
                    "-c",
                    "id -u; grep CapEff /proc/self/status; grep ' / ' /proc/self/mounts;"
                    " touch ~/scratch-ok && echo scratch-writable",
                ]
            )
            out = probe.output.decode()
            assert out.splitlines()[0] == "1000", out
            assert "CapEff:\t0000000000000000" in out, out
            root = next(ln for ln in out.splitlines() if " / " in ln)
            assert root.split()[3].split(",")[0] == "ro", out  # the root file system is read-only
            assert "scratch-writable" in out, out

        # A fresh agent (a restart) finds both nodes running, starts nothing new.
        restarted = ContainerRuntime(owner, allocator=ports)
        recovered = restarted.recover()
        assert sorted((s.role, s.state) for s in recovered) == [
            ("head", "running"),
            ("worker", "running"),
        ]
        again = engine.containers.list(filters={"label": f"{LABEL_CLUSTER}={cluster_id}"})
        assert sorted(c.id for c in again) == ids
        _wait_alive(restarted, 2, 30)

        # A node whose container ends is reported failed with the reason and its exit code.
        worker_container = next(c for c in again if c.labels[LABEL_ROLE] == "worker")
        worker_container.kill()
        worker_container.wait(timeout=30)
        states = {s.role: s for s in restarted.node_states()}
        assert (states["worker"].state, states["worker"].reason) == ("failed", "node_exited")
        assert "exit code 137" in (states["worker"].message or "")
        assert states["head"].state == "running"

        # Leaving removes the containers, their volumes and the cluster's network.
        left = restarted.leave_cluster({"cluster_id": cluster_id})
        assert left.state == "stopped"
        label = {"label": f"{LABEL_CLUSTER}={cluster_id}"}
        assert engine.containers.list(all=True, filters=label) == []
        assert engine.volumes.list(filters=label) == []
        assert engine.networks.list(names=[network_name(cluster_id)]) == []
        assert restarted.node_states() == []
    finally:
        _purge(engine, cluster_id)
