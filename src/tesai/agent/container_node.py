"""The ``container`` node runtime: each Ray node of a cluster in its own locked-down container.

Customer code runs in Ray's workers, so a node started as the agent's own user could read the
agent's credential and state directory, reach the provider's loopback services and other
clusters' processes. Here every node is a container of the node image
(``tesai.agent.node_image``) driven through the Docker Engine API (docker-py, which also
drives Podman through its Docker-compatible socket), running the same ``ray start`` the
process mode runs (``tesai.agent.node_spec.ray_start_argv``), with ``--block`` as the
container's command. The container:

- runs as uid 1000 with ``cap_drop=ALL``, ``no-new-privileges``, a read-only root file system,
  a tmpfs ``/tmp`` (Ray's ``--temp-dir`` ``/tmp/ray``) and one named scratch volume
  (``tesai-scratch-<cluster>-<index>``, the user's home: Ray spills objects there)
  that is removed when the node leaves; never a host path, the Docker socket or privileged;
- gets the cluster token in its environment only (``RAY_AUTH_MODE=token``,
  ``RAY_AUTH_TOKEN``), never on its command line. (The engine keeps a container's
  environment in its root-only state directory, as it does for any container.)
- is limited in CPU (``nano_cpus``), memory, pids and ``/dev/shm`` (Ray's object store) by
  the node's arguments, else by the device's declared resources (``set_hardware``);
- sees its GPUs by NVML UUID through a ``DeviceRequest`` (``gpu_device_requests``);
- carries labels ``tesai.cluster``, ``tesai.node`` (index), ``tesai.device`` (this agent's
  instance id: several agents may share a host), ``tesai.role``, by which ``recover`` finds
  this agent's nodes after a restart and keeps them running (no restart, no rejoin).

Networking (``tesai.agent.network``): a bridge network per cluster on this host, the
node's Ray address its fixed address there; a head publishes its dashboard and GCS ports on
the host address the agent advertises (``TESAI_RAY_NODE_IP``, else all addresses) at ports
from the agent's range (``TESAI_RAY_PORT_RANGE``), so the control plane's proxy reaches the
dashboard as it does a process node's. Not yet here: firewall rules that keep nodes from the
provider's private ranges and from host services bound to the bridge gateway (a later step),
and the overlay for clusters across hosts (issue 18, behind ``NodeNetwork``).

Status: the container's state (running; exited → ``node_exited`` with its exit code;
OOM-killed → ``oom_killed``) and, for a running head, Ray's state API on the published
dashboard with the token, as in the process mode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from uuid import UUID

import httpx
import psutil

from tesai.agent import ray_failures
from tesai.agent.container_spec import (
    DASHBOARD_PORT,
    DEFAULT_PIDS_LIMIT,
    LABEL_CLUSTER,
    LABEL_DEVICE,
    LABEL_NODE,
    LABEL_RAY_ADDRESS,
    LABEL_ROLE,
    container_name,
    container_spec,
    node_limits,
    scratch_volume_name,
    state_of_container,
)
from tesai.agent.network import NetworkUnavailable, NodeNetwork
from tesai.agent.network.bridge import BridgeNetwork
from tesai.agent.node_image import RAY_VERSION, image_ray_version, image_tag
from tesai.agent.node_spec import BadNodeArgs, NodeSpec, Role, node_marker
from tesai.agent.ray_node import (
    NODE_IP_ENV,
    REASON_RAY_STATE_UNAVAILABLE,
    REASON_RAY_STOP_FAILED,
    PortAllocator,
    RayNodeError,
    alive_node_count,
    autoscaler_view,
    default_allocator,
    installed_ray_version,
)
from tesai.protocol.v1 import (
    MAX_NODE_MESSAGE,
    REASON_BAD_ARGS,
    REASON_CONTAINER_RUNTIME_UNAVAILABLE,
    REASON_CONTAINER_START_FAILED,
    REASON_IMAGE_NOT_FOUND,
    REASON_IMAGE_RAY_MISMATCH,
    REASON_NODE_EXITED,
    REASON_OOM_KILLED,
    HardwareSpec,
    NodeState,
)

log = logging.getLogger(__name__)

PIDS_LIMIT_ENV: Final = "TESAI_NODE_PIDS_LIMIT"
START_TIMEOUT_S: Final = 180.0
_STARTED = "Ray runtime started"


class ContainerRuntimeUnavailable(Exception):
    """No Docker Engine answers (or the ``docker`` package is missing)."""


# --- the runtime ---------------------------------------------------------------------------------


@dataclass(slots=True)
class ContainerNode:
    """A node of a cluster this agent runs in a container."""

    cluster_id: str
    node_index: int
    role: Role
    container_id: str
    ray_address: str
    token: str = field(repr=False)
    dashboard_port: int | None = None
    """Host port of the head's dashboard."""
    dashboard_url: str | None = None
    host_ports: list[int] = field(default_factory=list)

    @property
    def marker(self) -> str:
        return node_marker(self.cluster_id, self.node_index)


def docker_client() -> Any:
    """A docker-py client for the engine the environment names (``DOCKER_HOST``, else the
    local socket). Raises ContainerRuntimeUnavailable."""
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ContainerRuntimeUnavailable("the docker package is not installed") from exc
    try:
        return docker.from_env(version="auto", timeout=30)
    except docker.errors.DockerException as exc:
        raise ContainerRuntimeUnavailable(f"no Docker Engine answers: {exc}") from exc


def _dashboard_host(publish_host: str) -> str:
    return "127.0.0.1" if publish_host in ("0.0.0.0", "") else publish_host


class ContainerRuntime:
    """Runs this agent's Ray nodes in containers (see the module docstring). Thread-safe."""

    isolation: Literal["container"] = "container"

    def __init__(
        self,
        owner: str,
        *,
        client: Callable[[], Any] | None = None,
        network: NodeNetwork | None = None,
        allocator: PortAllocator | None = None,
        image_for: Callable[[str], str] = image_tag,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.owner = owner
        self._make_client = client or docker_client
        self._client: Any | None = None
        self.network: NodeNetwork = network or BridgeNetwork(self.client)
        self._allocator = allocator
        self.image_for = image_for
        self.start_timeout_s = start_timeout_s
        self.host_cpus = os.cpu_count() or 1
        self.host_memory = int(psutil.virtual_memory().total)
        self.gpu_uuids: list[str] = []
        self.pids_limit = int(os.environ.get(PIDS_LIMIT_ENV) or DEFAULT_PIDS_LIMIT)
        self._nodes: dict[str, ContainerNode] = {}
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The engine's client (made on first use). Raises ContainerRuntimeUnavailable."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    @property
    def allocator(self) -> PortAllocator:
        return self._allocator or default_allocator()

    def set_hardware(self, hardware: HardwareSpec) -> None:
        """The device's declared resources: default limits and the GPUs nodes get."""
        self.host_cpus = hardware.cpu_threads or hardware.cpu_cores or self.host_cpus
        self.host_memory = hardware.ram_bytes or self.host_memory
        self.gpu_uuids = [g.uuid for g in hardware.gpus]

    # --- join ---

    def join_cluster(self, args: Mapping[str, Any]) -> NodeState:
        """Start this device's node of a cluster in a container; never raises."""
        try:
            spec = NodeSpec.from_args(args, default_node_ip=os.environ.get(NODE_IP_ENV))
        except BadNodeArgs as exc:
            return _failed_state(args, REASON_BAD_ARGS, str(exc))
        try:
            node = self._start(spec)
        except _NodeFailed as exc:
            return NodeState(
                cluster_id=UUID(spec.cluster_id),
                role=spec.role,
                state="failed",
                reason=exc.reason,
                message=exc.message[:MAX_NODE_MESSAGE],
            )
        with self._lock:
            self._nodes[node.marker] = node
        return self._state(node)

    def _image(self, spec: NodeSpec) -> str:
        import docker.errors  # type: ignore[import-untyped]

        version = spec.ray_version or installed_ray_version() or RAY_VERSION
        try:
            tag = self.image_for(version)
        except ValueError as exc:
            raise _NodeFailed(REASON_BAD_ARGS, str(exc)) from exc
        try:
            image = self.client().images.get(tag)
        except docker.errors.ImageNotFound as exc:
            raise _NodeFailed(REASON_IMAGE_NOT_FOUND, f"no image {tag} on this host") from exc
        has = image_ray_version(image.labels)
        if has is not None and has != version:
            raise _NodeFailed(
                REASON_IMAGE_RAY_MISMATCH, f"image {tag} has ray {has}, the cluster ray {version}"
            )
        return tag

    def _start(self, spec: NodeSpec) -> ContainerNode:
        import docker.errors  # type: ignore[import-untyped]

        try:
            client = self.client()
            image = self._image(spec)
            name = container_name(spec.cluster_id, spec.node_index)
            existing = self._container(name)
            if existing is not None:
                if existing.status == "running" and existing.labels.get(LABEL_DEVICE) == self.owner:
                    # The same join delivered again (or after a restart): it is this node.
                    return self._node_from(existing)
                existing.remove(force=True)
            network = self.network.ensure(spec.cluster_id)
            address = self.network.node_address(network, spec.node_index)
        except ContainerRuntimeUnavailable as exc:
            raise _NodeFailed(REASON_CONTAINER_RUNTIME_UNAVAILABLE, str(exc)) from exc
        except NetworkUnavailable as exc:
            raise _NodeFailed(REASON_CONTAINER_START_FAILED, str(exc)) from exc
        except docker.errors.DockerException as exc:
            raise _NodeFailed(REASON_CONTAINER_START_FAILED, str(exc)) from exc
        host_ports: list[int] = []
        if spec.role == "head":
            try:
                host_ports = self.allocator.allocate(2)
            except RayNodeError as exc:
                raise _NodeFailed(exc.reason, exc.message) from exc
        publish_host = spec.node_ip or spec.dashboard_host or "0.0.0.0"
        kwargs = container_spec(
            spec,
            image=image,
            owner=self.owner,
            network=network.name,
            address=address,
            limits=node_limits(
                spec,
                host_cpus=self.host_cpus,
                host_memory=self.host_memory,
                pids_limit=self.pids_limit,
            ),
            gpu_uuids=self._gpus_for(spec),
            publish_host=publish_host,
            host_ports=(host_ports[0], host_ports[1]) if host_ports else None,
        )
        kwargs["networking_config"] = {
            network.name: client.api.create_endpoint_config(ipv4_address=address)
        }
        volume = scratch_volume_name(spec.cluster_id, spec.node_index)
        container = None
        try:
            client.volumes.create(
                volume,
                labels={
                    LABEL_CLUSTER: spec.cluster_id,
                    LABEL_NODE: str(spec.node_index),
                    LABEL_DEVICE: self.owner,
                },
            )
            container = client.containers.create(**kwargs)
            container.start()
            self._wait_started(container, spec)
        except (docker.errors.DockerException, _NodeFailed) as exc:
            with contextlib.suppress(docker.errors.DockerException):
                self._remove(container.id if container is not None else None, volume, host_ports)
                self.network.release(spec.cluster_id)
            if isinstance(exc, _NodeFailed):
                raise
            raise _NodeFailed(REASON_CONTAINER_START_FAILED, str(exc)) from exc
        log.info("node %s runs in container %s at %s", spec.marker, container.short_id, address)
        ray_address = kwargs["labels"][LABEL_RAY_ADDRESS]
        return ContainerNode(
            cluster_id=spec.cluster_id,
            node_index=spec.node_index,
            role=spec.role,
            container_id=container.id,
            ray_address=ray_address,
            token=spec.token,
            dashboard_port=host_ports[1] if host_ports else None,
            dashboard_url=(
                f"http://{_dashboard_host(publish_host)}:{host_ports[1]}" if host_ports else None
            ),
            host_ports=host_ports,
        )

    def _gpus_for(self, spec: NodeSpec) -> list[str]:
        if spec.gpu_uuids:
            return list(spec.gpu_uuids)
        if spec.num_gpus is None:
            return list(self.gpu_uuids)
        return list(self.gpu_uuids[: spec.num_gpus])

    def _wait_started(self, container: Any, spec: NodeSpec) -> None:
        """Until ``ray start`` says the node runs; raises _NodeFailed when the container ends
        first (Ray's words, token redacted) or the start takes too long."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            output = container.logs().decode("utf-8", errors="replace")
            if _STARTED in output:
                return
            container.reload()
            if container.status not in ("created", "running", "restarting"):
                failure = ray_failures.classify(spec.role, output, {})
                state = container.attrs.get("State") or {}
                reason = REASON_OOM_KILLED if state.get("OOMKilled") else failure.reason
                raise _NodeFailed(reason, ray_failures.failure_message(output, {}, spec.token))
            if time.monotonic() > deadline:
                raise _NodeFailed(
                    ray_failures.REASON_RAY_START_TIMEOUT,
                    f"ray start did not finish in {self.start_timeout_s:.0f} s\n"
                    + ray_failures.failure_message(output, {}, spec.token),
                )
            time.sleep(0.5)

    # --- leave ---

    def leave_cluster(self, args: Mapping[str, Any]) -> NodeState:
        """Stop and remove this agent's node(s) of a cluster, their volumes and, when it was
        the cluster's last container on this host, its network."""
        cluster_id = str(UUID(str(args["cluster_id"])))
        index = args.get("node_index")
        role: Role = "worker"
        try:
            wanted = None if index is None else int(index)
            for container in self._containers(cluster_id, wanted):
                role = "head" if container.labels.get(LABEL_ROLE) == "head" else role
                self._drop(container)
            # Volumes whose container never came to be (a start cut short by a crash).
            for volume in self._labelled("volumes", cluster_id, wanted):
                volume.remove(force=True)
            self.network.release(cluster_id)
        except ContainerRuntimeUnavailable as exc:
            return _failed_state(args, REASON_CONTAINER_RUNTIME_UNAVAILABLE, str(exc))
        except Exception as exc:  # the engine refused: the control plane retries the leave
            log.warning("leaving cluster %s failed: %s", cluster_id, exc)
            return _failed_state(args, REASON_RAY_STOP_FAILED, str(exc))
        return NodeState(cluster_id=UUID(cluster_id), role=role, state="stopped")

    def _drop(self, container: Any) -> None:
        cluster_id = container.labels[LABEL_CLUSTER]
        index = int(container.labels[LABEL_NODE])
        with self._lock:
            node = self._nodes.pop(node_marker(cluster_id, index), None)
        ports = node.host_ports if node is not None else _published_ports(container.attrs)
        self._remove(container.id, scratch_volume_name(cluster_id, index), ports)

    def _remove(self, container_id: str | None, volume: str, host_ports: list[int]) -> None:
        import docker.errors  # type: ignore[import-untyped]

        client = self.client()
        if container_id is not None:
            with contextlib.suppress(docker.errors.NotFound):
                client.containers.get(container_id).remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(volume).remove(force=True)
        if host_ports:
            self.allocator.release(host_ports)

    def stop_all(self) -> None:
        """Stop every node this agent runs (the agent leaves the pool: SIGTERM)."""
        try:
            containers = self._containers(None, None)
        except ContainerRuntimeUnavailable:
            return
        clusters = set()
        for container in containers:
            clusters.add(container.labels[LABEL_CLUSTER])
            try:
                self._drop(container)
            except Exception:
                log.exception("container %s not removed", container.name)
        for cluster_id in clusters:
            self.network.release(cluster_id)

    # --- status and recovery ---

    def _containers(self, cluster_id: str | None, index: int | None) -> list[Any]:
        return self._labelled("containers", cluster_id, index)

    def _labelled(self, kind: str, cluster_id: str | None, index: int | None) -> list[Any]:
        """This agent's containers or volumes, of a cluster and a node when given."""
        labels = [f"{LABEL_DEVICE}={self.owner}"]
        if cluster_id is not None:
            labels.append(f"{LABEL_CLUSTER}={cluster_id}")
        if index is not None:
            labels.append(f"{LABEL_NODE}={index}")
        collection = getattr(self.client(), kind)
        extra = {"all": True} if kind == "containers" else {}
        return list(collection.list(filters={"label": labels}, **extra))

    def _container(self, name_or_id: str) -> Any | None:
        import docker.errors  # type: ignore[import-untyped]

        try:
            return self.client().containers.get(name_or_id)
        except docker.errors.NotFound:
            return None

    def _node_from(self, container: Any) -> ContainerNode:
        """A node record from a running container (its labels, environment and ports)."""
        labels = container.labels
        env = dict(
            e.split("=", 1)
            for e in (container.attrs.get("Config") or {}).get("Env") or []
            if "=" in e
        )
        ports = _published_ports(container.attrs)
        bindings = ((container.attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(
            f"{DASHBOARD_PORT}/tcp"
        ) or []
        host = bindings[0].get("HostIp", "") if bindings else ""
        dashboard_port = int(bindings[0]["HostPort"]) if bindings else None
        return ContainerNode(
            cluster_id=labels[LABEL_CLUSTER],
            node_index=int(labels[LABEL_NODE]),
            role="head" if labels.get(LABEL_ROLE) == "head" else "worker",
            container_id=container.id,
            ray_address=labels.get(LABEL_RAY_ADDRESS, ""),
            token=env.get("RAY_AUTH_TOKEN", ""),
            dashboard_port=dashboard_port,
            dashboard_url=(
                f"http://{_dashboard_host(host)}:{dashboard_port}" if dashboard_port else None
            ),
            host_ports=ports,
        )

    def recover(self) -> list[NodeState]:
        """Find this agent's node containers (after a restart) and keep them as they are:
        running ones go on running, ended ones are reported failed for the control plane to
        heal; none is restarted or rejoined."""
        try:
            found = [self._node_from(c) for c in self._containers(None, None)]
        except ContainerRuntimeUnavailable as exc:
            log.warning("no node containers to recover: %s", exc)
            return []
        with self._lock:
            for node in found:
                self._nodes[node.marker] = node
        for node in found:
            log.info("recovered node %s (container %s)", node.marker, node.container_id[:12])
        return [self._state(n) for n in found]

    def node_states(self) -> list[NodeState]:
        """Every node this agent runs, for the heartbeat."""
        with self._lock:
            nodes = list(self._nodes.values())
        return [self._state(n) for n in nodes]

    def _state(self, node: ContainerNode) -> NodeState:
        import docker.errors  # type: ignore[import-untyped]

        base = NodeState(
            cluster_id=UUID(node.cluster_id),
            role=node.role,
            state="running",
            ray_address=node.ray_address,
            dashboard_port=node.dashboard_port,
        )
        try:
            container = self.client().containers.get(node.container_id)
        except docker.errors.NotFound:
            return base.model_copy(
                update={
                    "state": "failed",
                    "reason": REASON_NODE_EXITED,
                    "message": "container gone",
                }
            )
        except (docker.errors.DockerException, ContainerRuntimeUnavailable) as exc:
            log.warning("container state of %s unknown: %s", node.marker, exc)
            return base.model_copy(update={"reason": REASON_RAY_STATE_UNAVAILABLE})
        state = container.attrs.get("State") or {}
        name, reason, message = state_of_container(
            container.status, state.get("ExitCode"), bool(state.get("OOMKilled"))
        )
        if name != "running" or node.dashboard_url is None:
            return base.model_copy(update={"state": name, "reason": reason, "message": message})
        return base.model_copy(update=_ray_view(node))


def _ray_view(node: ContainerNode, timeout_s: float = 5.0) -> dict[str, Any]:
    """What the head's state API says (alive nodes, demand, idle nodes), as NodeState fields."""
    assert node.dashboard_url is not None
    headers = {"Authorization": f"Bearer {node.token}"}
    try:
        with httpx.Client(base_url=node.dashboard_url, headers=headers, timeout=timeout_s) as c:
            alive = alive_node_count(c)
            demand, idle = autoscaler_view(c)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return {"reason": REASON_RAY_STATE_UNAVAILABLE}
    return {"alive_nodes": alive, "pending_demand": demand, "idle_node_ids": idle}


def _published_ports(attrs: Mapping[str, Any]) -> list[int]:
    out = []
    for bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).values():
        for b in bindings or []:
            if b.get("HostPort"):
                out.append(int(b["HostPort"]))
    return sorted(set(out))


class _NodeFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _failed_state(args: Mapping[str, Any], reason: str, message: str) -> NodeState:
    role: Role = "head" if args.get("role") == "head" else "worker"
    try:
        cluster_id = UUID(str(args.get("cluster_id")))
    except ValueError:
        cluster_id = UUID(int=0)
    return NodeState(
        cluster_id=cluster_id,
        role=role,
        state="failed",
        reason=reason,
        message=message[:MAX_NODE_MESSAGE],
    )
