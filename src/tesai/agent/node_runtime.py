"""The node-runtime seam: how this agent runs the Ray nodes the control plane asks for.

Two kinds, one small protocol (``NodeRuntime``) that the command handlers
(``tesai.agent.commands``) drive:

- ``container`` (``tesai.agent.container_node.ContainerRuntime``): each node in its own
  locked-down container, through the Docker Engine API. What providers run.
- ``process`` (``ProcessRuntime``, over ``tesai.agent.ray_node``): ``ray start`` on the host,
  as the agent's own user. Customer code then runs with the agent's rights: for development
  and tests on one's own machine only.

Both start the same ``ray start`` (``tesai.agent.node_spec``). The agent's setting
``TESAI_NODE_RUNTIME`` picks one: ``container``, ``process``, or ``auto`` (containers when a
Docker Engine answers and the node image of this agent's Ray version is there, else processes;
the agent logs which and why). Unset it is ``process`` for now, today's behaviour, until the
end-to-end cluster tests run in container mode (issue 17); then ``container`` becomes the
default and ``process`` an explicit opt-in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Final, Literal, Protocol

from tesai.agent import ray_node
from tesai.agent.container_node import ContainerRuntime, ContainerRuntimeUnavailable, docker_client
from tesai.agent.node_image import RAY_VERSION, image_tag
from tesai.protocol.v1 import HardwareSpec, NodeState

log = logging.getLogger(__name__)

Isolation = Literal["process", "container"]
RuntimeSetting = Literal["container", "process", "auto"]
RUNTIME_ENV: Final = "TESAI_NODE_RUNTIME"
"""``container`` | ``process`` | ``auto`` (see the module docstring)."""
DEFAULT_RUNTIME: Final[RuntimeSetting] = "process"
SETTINGS: Final = ("container", "process", "auto")


class NodeRuntime(Protocol):
    """Starts, stops and inspects this agent's Ray nodes. Calls may block (``ray start``,
    the engine's API): the command handlers run them in a thread. None raises for a node's
    failure: a failed node is a ``NodeState`` with a reason code."""

    @property
    def isolation(self) -> Isolation:
        """What separates a node's customer code from the host."""
        ...

    def set_hardware(self, hardware: HardwareSpec) -> None:
        """The device's declared resources (what a node may use by default, its GPUs)."""
        ...

    def join_cluster(self, args: Mapping[str, Any]) -> NodeState:
        """Start this device's node of a cluster (``join_cluster`` command args)."""
        ...

    def leave_cluster(self, args: Mapping[str, Any]) -> NodeState:
        """Stop this device's node(s) of a cluster and remove what they left."""
        ...

    def node_states(self) -> list[NodeState]:
        """Every node this agent runs, for the heartbeat."""
        ...

    def stop_all(self) -> None:
        """Stop every node (the agent leaves the pool)."""
        ...

    def recover(self) -> list[NodeState]:
        """Find the nodes this agent ran before a restart and keep them; their states."""
        ...


class ProcessRuntime:
    """Nodes as host processes: today's ``tesai.agent.ray_node``."""

    isolation: Literal["process"] = "process"

    def set_hardware(self, hardware: HardwareSpec) -> None:
        """Nothing to learn: Ray detects the host's resources itself."""

    def join_cluster(self, args: Mapping[str, Any]) -> NodeState:
        return ray_node.join_cluster(args)

    def leave_cluster(self, args: Mapping[str, Any]) -> NodeState:
        return ray_node.leave_cluster(args)

    def node_states(self) -> list[NodeState]:
        return ray_node.node_states()

    def stop_all(self) -> None:
        ray_node.stop_all()

    def recover(self) -> list[NodeState]:
        """None: a process node's ports and token die with the agent that started it; a
        ``leave_cluster`` still stops its processes by their marker."""
        return []


def container_runtime_ready(ray_version: str | None) -> tuple[bool, str]:
    """Whether nodes can run in containers here: a Docker Engine answers and has the node
    image of ``ray_version``. (ok, what was found or what is missing.)"""
    try:
        import docker.errors  # type: ignore[import-untyped]  # optional: container mode only
    except ImportError:
        return False, "the docker package is not installed"
    try:
        client = docker_client()
    except ContainerRuntimeUnavailable as exc:
        return False, str(exc)
    try:
        engine = client.version().get("Version", "?")
        if ray_version is None:
            return False, f"Docker Engine {engine}, but no Ray version to pick an image by"
        tag = image_tag(ray_version)
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            return False, f"Docker Engine {engine} answers, but it has no image {tag}"
        return True, f"Docker Engine {engine}, image {tag}"
    except docker.errors.DockerException as exc:
        return False, f"the Docker Engine failed: {exc}"
    finally:
        client.close()


def runtime_for(setting: str | None = None, *, owner: str) -> NodeRuntime:
    """The node runtime ``setting`` names (None: ``TESAI_NODE_RUNTIME``, else the default).

    ``owner`` tells this agent's containers from other agents' on the host (its instance id).
    Raises ValueError for an unknown setting. An explicit ``container`` without a working
    engine is still a container runtime: its joins fail with container_runtime_unavailable
    rather than quietly running customer code on the host.
    """
    chosen = (setting or os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME).strip().lower()
    if chosen not in SETTINGS:
        raise ValueError(f"{RUNTIME_ENV}={chosen!r}: expected one of {', '.join(SETTINGS)}")
    if chosen == "process":
        log.info("node runtime: process (customer code runs on this host as the agent's user)")
        return ProcessRuntime()
    if chosen == "container":
        log.info("node runtime: container")
        return ContainerRuntime(owner)
    ok, why = container_runtime_ready(ray_node.installed_ray_version() or RAY_VERSION)
    if ok:
        log.info("node runtime: container (auto: %s)", why)
        return ContainerRuntime(owner)
    log.warning("node runtime: process (auto: %s)", why)
    return ProcessRuntime()
