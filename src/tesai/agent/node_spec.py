"""What one Ray node of a cluster is, and the ``ray start`` command line that starts it.

Both node runtimes (``tesai.agent.node_runtime``: processes on the host, or containers) start
the same Ray with the same arguments; only where it runs differs. So the node's description
(``NodeSpec``, read from a ``join_cluster`` command's arguments) and the ``ray start`` argv
built from it are plain data and pure functions here, with no ports, directories or
processes: those are each runtime's own concern and come in as arguments.

The cluster token is part of the spec but never of the argv: it travels in the node's
environment (``RAY_AUTH_TOKEN``), so ``ps`` and ``docker inspect``'s command do not show it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

Role = Literal["head", "worker"]


class BadNodeArgs(ValueError):
    """A ``join_cluster`` command whose arguments describe no startable node."""


def node_marker(cluster_id: str, node_index: int) -> str:
    """The ``TESAI_RAY_NODE`` value of one node (``<cluster_id>/<index>``)."""
    return f"{cluster_id}/{node_index}"


def cluster_resource(cluster_id: str) -> str:
    """Custom resource naming the cluster (one unit per node)."""
    return f"tesai_cluster_{cluster_id.replace('-', '')}"


def node_resource(node_index: int) -> str:
    """Custom resource naming one node of a cluster (one unit): spread tasks with it."""
    return f"tesai_node_{node_index}"


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of a cluster as the control plane asked for it (``join_cluster`` args)."""

    cluster_id: str
    node_index: int
    role: Role
    token: str = field(repr=False)
    head_address: str | None = None
    """``ip:port`` of the cluster's GCS (workers)."""
    ray_version: str | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_memory: int | None = None
    memory: int | None = None
    """Bytes of memory the node may use (container limit; None: the device's)."""
    gpu_uuids: tuple[str, ...] = ()
    """NVML UUIDs of the GPUs the control plane assigned (empty: the runtime picks)."""
    node_ip: str | None = None
    """The host address the agent advertises (process mode: Ray's node IP)."""
    dashboard_host: str | None = None
    node_id: str | None = None
    """The control plane's id of the node, when it sent one."""

    @property
    def marker(self) -> str:
        return node_marker(self.cluster_id, self.node_index)

    @classmethod
    def from_args(cls, args: Mapping[str, Any], *, default_node_ip: str | None = None) -> NodeSpec:
        """Read a ``join_cluster`` command's arguments.

        Raises BadNodeArgs when the cluster id is not a UUID, the token is missing, a worker
        has no head address, or a number is not a number.
        """
        try:
            cluster_id = str(UUID(str(args["cluster_id"])))
            role: Role = "head" if args.get("role") == "head" else "worker"
            token = str(args.get("token") or "")
            head_address = str(args.get("head_address") or "") or None
            if not token:
                raise BadNodeArgs("a cluster token is required")
            if role == "worker" and not head_address:
                raise BadNodeArgs("a worker needs the head's address")
            return cls(
                cluster_id=cluster_id,
                node_index=int(args.get("node_index", 0)),
                role=role,
                token=token,
                head_address=head_address,
                ray_version=str(args["ray_version"]) if args.get("ray_version") else None,
                resources={str(k): float(v) for k, v in (args.get("resources") or {}).items()},
                labels={str(k): str(v) for k, v in (args.get("labels") or {}).items()},
                num_cpus=_opt_int(args.get("num_cpus")),
                num_gpus=_opt_int(args.get("num_gpus")),
                object_store_memory=_opt_int(args.get("object_store_memory")),
                memory=_opt_int(args.get("memory")),
                gpu_uuids=tuple(str(u) for u in args.get("gpu_uuids") or ()),
                node_ip=str(args.get("node_ip") or "") or default_node_ip or None,
                dashboard_host=str(args.get("dashboard_host") or "") or None,
                node_id=str(args["node_id"]) if args.get("node_id") else None,
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            if isinstance(exc, BadNodeArgs):
                raise
            raise BadNodeArgs(f"{type(exc).__name__}: {exc}") from exc


def ray_start_argv(
    spec: NodeSpec,
    *,
    executable: str = "ray",
    port_args: Sequence[str] = (),
    temp_dir: str,
    node_ip: str | None,
    dashboard_host: str,
    block: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``ray start`` argv of a node (never the token: see the module docstring).

    ``port_args``, ``temp_dir``, ``node_ip`` and ``dashboard_host`` are the runtime's: a
    process node gets a block of host ports and a temp dir under the agent's root, a
    container node Ray's default ports inside its own network namespace and ``/tmp/ray``.
    """
    argv = [executable, "start"]
    if spec.role == "head":
        argv += ["--head", f"--dashboard-host={dashboard_host}", "--include-dashboard=true"]
    else:
        if not spec.head_address:
            raise BadNodeArgs("a worker needs the head's address")
        argv.append(f"--address={spec.head_address}")
    if block:
        argv.append("--block")
    argv += list(port_args)
    if node_ip:
        argv.append(f"--node-ip-address={node_ip}")
    if spec.num_cpus is not None:
        argv.append(f"--num-cpus={spec.num_cpus}")
    if spec.num_gpus is not None:
        argv.append(f"--num-gpus={spec.num_gpus}")
    if spec.object_store_memory is not None:
        argv.append(f"--object-store-memory={spec.object_store_memory}")
    resources = {cluster_resource(spec.cluster_id): 1.0, node_resource(spec.node_index): 1.0}
    resources.update(spec.resources)
    labels = {"tesai.io/cluster": spec.cluster_id, "tesai.io/node": str(spec.node_index)}
    labels.update(spec.labels)
    argv += [
        f"--resources={json.dumps(resources, sort_keys=True)}",
        "--labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        "--log-style=record",
        "--log-color=false",
        *extra,
    ]
    return argv
