"""The container of a Ray node: its image arguments, limits, labels and GPUs, as plain data.

Pure functions from a node's spec (``tesai.agent.node_spec``) and the device's resources to the
keyword arguments of docker-py's ``containers.create``, and from a container's state back to
a node's state; ``tesai.agent.container_node`` does the I/O. What the container is, and why,
is told there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from tesai.agent import node_image
from tesai.agent.node_spec import NodeSpec, ray_start_argv
from tesai.agent.ray_node import MARKER_ENV
from tesai.protocol.v1 import REASON_NODE_EXITED, REASON_OOM_KILLED, NodeStateName

LABEL_CLUSTER: Final = "tesai.cluster"
LABEL_NODE: Final = "tesai.node"
LABEL_DEVICE: Final = "tesai.device"
LABEL_ROLE: Final = "tesai.role"
LABEL_RAY_ADDRESS: Final = "tesai.ray-address"
"""The cluster's GCS address as the node knows it (read back by ``recover``)."""

CONTAINER_USER: Final = f"{node_image.USER_UID}:{node_image.USER_GID}"
SCRATCH_DIR: Final = node_image.HOME_DIR
"""The scratch volume is the node user's home: the image makes it, owned by that user, and
the engine copies it, ownership included, into the fresh volume."""
RAY_TEMP_DIR: Final = "/tmp/ray"  # noqa: S108  # inside the container: its own tmpfs
GCS_PORT: Final = 6379
DASHBOARD_PORT: Final = 8265
MiB: Final = 1024 * 1024
GiB: Final = 1024 * MiB
DEFAULT_PIDS_LIMIT: Final = 4096
"""Threads count against it: a Ray head with its dashboard runs several hundred."""


def container_name(cluster_id: str, node_index: int) -> str:
    return f"tesai-{cluster_id}-{node_index}"


def scratch_volume_name(cluster_id: str, node_index: int) -> str:
    return f"tesai-scratch-{cluster_id}-{node_index}"


def gpu_device_requests(uuids: Sequence[str]) -> list[Any]:
    """The engine's ``DeviceRequest`` for exactly these GPUs (NVML UUIDs); none for none.

    By UUID rather than index: indices differ between NVML and the container runtime when
    ``CUDA_DEVICE_ORDER`` or MIG are in play, a UUID never does.
    """
    if not uuids:
        return []
    import docker.types  # type: ignore[import-untyped]  # optional: container mode only

    return [
        docker.types.DeviceRequest(driver="nvidia", device_ids=list(uuids), capabilities=[["gpu"]])
    ]


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """What the engine enforces on one node's container."""

    nano_cpus: int
    mem_limit: int
    shm_size: int
    pids_limit: int
    tmp_size: int


def node_limits(
    spec: NodeSpec, *, host_cpus: int, host_memory: int, pids_limit: int = DEFAULT_PIDS_LIMIT
) -> NodeLimits:
    """Limits from the node's arguments, else the device's declared resources.

    ``/dev/shm`` holds Ray's object store: the node's ``object_store_memory`` plus headroom,
    else the 30% of memory Ray takes by default. ``/tmp`` (a tmpfs, so memory too) holds Ray's
    session logs; spilled objects go to the scratch volume.
    """
    cpus = spec.num_cpus or max(host_cpus, 1)
    memory = spec.memory or max(host_memory - GiB, GiB)
    if spec.object_store_memory:
        shm = spec.object_store_memory + 64 * MiB
    else:
        shm = int(memory * 0.3) + 64 * MiB
    return NodeLimits(
        nano_cpus=int(cpus * 1_000_000_000),
        mem_limit=memory,
        shm_size=min(shm, memory),
        pids_limit=pids_limit,
        tmp_size=max(256 * MiB, min(2 * GiB, memory // 4)),
    )


def node_labels(spec: NodeSpec, owner: str, ray_address: str) -> dict[str, str]:
    """The container's labels (the agent finds its nodes by them)."""
    return {
        LABEL_CLUSTER: spec.cluster_id,
        LABEL_NODE: str(spec.node_index),
        LABEL_DEVICE: owner,
        LABEL_ROLE: spec.role,
        LABEL_RAY_ADDRESS: ray_address,
    }


def node_environment(spec: NodeSpec) -> dict[str, str]:
    """The container's environment: the token lives here and nowhere else."""
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": spec.token,
        "RAY_USAGE_STATS_ENABLED": "0",
        MARKER_ENV: spec.marker,
    }


def container_spec(
    spec: NodeSpec,
    *,
    image: str,
    owner: str,
    network: str,
    address: str,
    limits: NodeLimits,
    gpu_uuids: Sequence[str] = (),
    publish_host: str = "0.0.0.0",
    host_ports: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """``docker.containers.create`` keyword arguments of a node's container (less the
    network endpoint, which needs the engine's API version: see ``ContainerRuntime``).

    ``host_ports`` (heads): the host ports the GCS and the dashboard are published on, at
    ``publish_host``.
    """
    ray_address = f"{address}:{GCS_PORT}" if spec.role == "head" else str(spec.head_address)
    command = ray_start_argv(
        spec,
        executable="ray",
        temp_dir=RAY_TEMP_DIR,
        node_ip=address,
        dashboard_host="0.0.0.0",
        block=True,
        extra=[f"--object-spilling-directory={SCRATCH_DIR}/spill"],
    )
    ports: dict[str, tuple[str, int]] = {}
    if spec.role == "head" and host_ports is not None:
        ports = {
            f"{GCS_PORT}/tcp": (publish_host, host_ports[0]),
            f"{DASHBOARD_PORT}/tcp": (publish_host, host_ports[1]),
        }
    return {
        "image": image,
        "command": command,
        "name": container_name(spec.cluster_id, spec.node_index),
        "hostname": f"node-{spec.node_index}",
        "environment": node_environment(spec),
        "user": CONTAINER_USER,
        "labels": node_labels(spec, owner, ray_address),
        "init": True,  # reaps Ray's orphaned workers (they would count against pids_limit)
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "privileged": False,
        # The container's own /tmp (its root is read-only), not the host's.
        "tmpfs": {"/tmp": f"rw,exec,nosuid,nodev,size={limits.tmp_size}"},  # noqa: S108
        "volumes": {
            scratch_volume_name(spec.cluster_id, spec.node_index): {
                "bind": SCRATCH_DIR,
                "mode": "rw",
            }
        },
        "mem_limit": limits.mem_limit,
        "memswap_limit": limits.mem_limit,  # no swap: a hog meets the OOM killer, not the disk
        "nano_cpus": limits.nano_cpus,
        "pids_limit": limits.pids_limit,
        "shm_size": limits.shm_size,
        "device_requests": gpu_device_requests(gpu_uuids),
        "network": network,
        "ports": ports,
        "detach": True,
    }


def state_of_container(
    status: str, exit_code: int | None, oom_killed: bool
) -> tuple[NodeStateName, str | None, str | None]:
    """(state, reason, message) of a node from its container's state."""
    if status == "running":
        return "running", None, None
    if status in ("created", "restarting"):
        return "starting", None, None
    if oom_killed:
        return "failed", REASON_OOM_KILLED, f"killed at its memory limit (exit code {exit_code})"
    return "failed", REASON_NODE_EXITED, f"container {status} with exit code {exit_code}"
