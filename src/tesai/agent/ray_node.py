"""Ray nodes on a provider host: start a head or a worker for a cluster, report, stop exactly it.

Every node runs the real ``ray start`` with Ray's token authentication (Ray 2.60)::

    RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<per-cluster token> ray start --head --port P ...

With it the GCS rejects any gRPC client without the token (a node started without it, or with
another one, cannot join: ``ray start`` fails with ``AuthenticationError``/``InvalidAuthToken``
after ~25 s of retries), and the dashboard / Job Submission API answer 401 without
``Authorization: Bearer <token>`` and 403 with a wrong one.

Several nodes, also of several clusters, run side by side on one host: each gets its own block
of ports from a configured range, its own ``--temp-dir`` and custom resources
``tesai_cluster_<id>`` / ``tesai_node_<n>`` (tasks are spread with them). Ray daemonises its
processes (they are re-parented to init), so the module tags each node's process tree with an
environment marker (``TESAI_RAY_NODE=<cluster>/<n>``, inherited by every Ray process and
worker) and stops a node by killing exactly the processes carrying its marker — never
``ray stop``, which stops every Ray process on the host.

Status (``node_status``) comes from the node's processes and, for the head, from Ray's own
HTTP APIs on the dashboard with the bearer token: alive nodes from the GCS-backed state API
(``/api/v0/nodes``); pending resource demand from the autoscaler status the head's monitor
writes into the GCS (``/api/cluster_status``) — best effort, ``None`` when Ray does not say.
Idle nodes are nodes whose resources are all available (nothing scheduled on them), read from
the same report's per-node usage when present.

This is the ``process`` node runtime: ``tesai.agent.node_runtime.ProcessRuntime`` delegates
to the module-level ``join_cluster``/``leave_cluster``/``node_states``/``stop_all``. The
``ray start`` argv is built by ``tesai.agent.node_spec.ray_start_argv``, shared with the
container runtime (``tesai.agent.container_node``); ports and temp dirs are this module's.

Imports: stdlib, psutil, httpx and tesai.protocol only (no ray import: the installed Ray is
driven through its CLI and HTTP APIs, so one agent can serve clusters with different tokens).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import httpx
import psutil

from tesai.agent import ray_failures
from tesai.agent.node_spec import NodeSpec, Role, ray_start_argv
from tesai.agent.node_spec import cluster_resource as cluster_resource
from tesai.agent.node_spec import node_marker as node_marker
from tesai.agent.node_spec import node_resource as node_resource
from tesai.agent.port_locks import HostPortClaims, host_ports
from tesai.agent.ray_failures import REASON_RAY_AUTH_FAILED as REASON_RAY_AUTH_FAILED
from tesai.agent.ray_failures import REASON_RAY_DASHBOARD_FAILED as REASON_RAY_DASHBOARD_FAILED
from tesai.agent.ray_failures import REASON_RAY_PORT_IN_USE as REASON_RAY_PORT_IN_USE
from tesai.agent.ray_failures import REASON_RAY_START_FAILED as REASON_RAY_START_FAILED
from tesai.agent.ray_failures import REASON_RAY_START_TIMEOUT as REASON_RAY_START_TIMEOUT
from tesai.agent.ray_failures import REASON_RAY_TEMP_DIR_TOO_LONG as REASON_RAY_TEMP_DIR_TOO_LONG
from tesai.protocol.v1 import MAX_NODE_MESSAGE, REASON_BAD_ARGS, NodeState

REASON_RAY_VERSION_MISMATCH: Final = "ray_version_mismatch"
"""The installed Ray differs from the cluster's required version; the node is not started."""
REASON_RAY_NOT_INSTALLED: Final = "ray_not_installed"
REASON_NO_FREE_PORTS: Final = "no_free_ports"
REASON_RAY_STOP_FAILED: Final = "ray_stop_failed"
REASON_NODE_UNKNOWN: Final = "ray_node_unknown"

MARKER_ENV: Final = "TESAI_RAY_NODE"
"""Environment variable that tags every process of one node: ``<cluster_id>/<node_index>``."""
PORT_RANGE_ENV: Final = "TESAI_RAY_PORT_RANGE"
"""``first-last`` ports the agent may give Ray nodes (default 20000-29999)."""
TEMP_ROOT_ENV: Final = "TESAI_RAY_TEMP_ROOT"
"""Where per-node ``--temp-dir`` folders go (default ``<tmp>/tesai-ray``). Keep it short: Ray's
unix socket paths live under it and must fit 107 bytes, so the root may have 26 characters
where PIDs have 5 digits, 24 where they have 7 (a deeper one is refused before Ray runs:
ray_temp_dir_too_long, see ``check_temp_dir``)."""
NODE_IP_ENV: Final = "TESAI_RAY_NODE_IP"
"""The address this host's Ray nodes advertise (default: the one Ray detects)."""

DEFAULT_WORKER_PORTS: Final = 32
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NODE_IP = re.compile(r"Local node IP:\s*([0-9a-fA-F.:]+)")

log = logging.getLogger(__name__)


class RayNodeError(Exception):
    """A node could not be started/stopped; ``reason`` is a stable code for the control plane,
    ``message`` what happened in Ray's own words (for a failed start: its error lines and the
    tail of its logs, at most ``ray_failures.MESSAGE_LIMIT`` characters, token redacted)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


# --- versions ------------------------------------------------------------------------------------


def installed_ray_version() -> str | None:
    """The version of the installed ``ray`` package, or None when it is not installed."""
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_ray_version(required: str | None) -> str:
    """Return the installed Ray version; refuse when it differs from ``required``.

    Raises RayNodeError(ray_not_installed | ray_version_mismatch).
    """
    installed = installed_ray_version()
    if installed is None:
        raise RayNodeError(REASON_RAY_NOT_INSTALLED, "the ray package is not installed")
    if required is not None and installed != required:
        raise RayNodeError(
            REASON_RAY_VERSION_MISMATCH,
            f"cluster requires ray {required}, this device has ray {installed}",
        )
    return installed


def ray_executable() -> str:
    """The ``ray`` CLI next to this interpreter (a venv), else the one on PATH."""
    local = Path(sys.executable).with_name("ray")
    if local.exists():
        return str(local)
    found = shutil.which("ray")
    if found is None:
        raise RayNodeError(REASON_RAY_NOT_INSTALLED, "no ray executable found")
    return found


# --- ports ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortRange:
    """Inclusive range of TCP ports Ray nodes may use on this host."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``"20000-29999"`` → PortRange. Raises ValueError."""
        first, _, last = text.partition("-")
        rng = cls(int(first), int(last))
        if not 1024 <= rng.first <= rng.last <= 65535:
            raise ValueError(f"bad port range {text!r}")
        return rng


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out blocks of consecutive, currently bindable ports from a range (thread-safe).

    A port is only known free when checked; Ray binds it seconds later, so ports handed out
    stay claimed until ``release`` even if nothing listens on them yet — claimed host-wide
    (``tesai.agent.port_locks``): another agent on this host with an overlapping range skips
    them, and two clusters' heads never get the same GCS port.
    """

    def __init__(self, ports: PortRange, claims: HostPortClaims | None = None) -> None:
        self.range = ports
        self._claims = claims or host_ports
        self._reserved: set[int] = set()
        self._lock = threading.Lock()

    def _claim(self, block: range) -> int | None:
        """Claim every port of ``block``; on the first one that is taken or not bindable,
        give back what was claimed and return that port."""
        taken: list[int] = []
        for p in block:
            if not _port_free(p) or not self._claims.claim(p):
                self._claims.release(taken)
                return p
            taken.append(p)
        return None

    def allocate(self, count: int) -> list[int]:
        """Reserve ``count`` consecutive free ports. Raises RayNodeError(no_free_ports)."""
        with self._lock:
            port = self.range.first
            while port + count - 1 <= self.range.last:
                block = range(port, port + count)
                bad = self._claim(block)
                if bad is None:
                    self._reserved.update(block)
                    return list(block)
                port = bad + 1
        raise RayNodeError(
            REASON_NO_FREE_PORTS, f"no {count} consecutive free ports in {self.range}"
        )

    def release(self, ports: list[int]) -> None:
        """Give ports back (ones this allocator did not hand out are ignored)."""
        with self._lock:
            mine = self._reserved.intersection(ports)
            self._reserved.difference_update(mine)
            self._claims.release(mine)


@dataclass(frozen=True, slots=True)
class NodePorts:
    """The ports one node listens on. Head-only ports are None on workers."""

    node_manager: int
    object_manager: int
    dashboard_agent_listen: int
    dashboard_agent_grpc: int
    runtime_env_agent: int
    metrics_export: int
    min_worker: int
    max_worker: int
    gcs: int | None = None
    dashboard: int | None = None
    ray_client_server: int | None = None

    @classmethod
    def from_block(cls, role: Role, block: list[int]) -> NodePorts:
        """Lay out ports over a block from ``PortAllocator.allocate(ports_needed(...))``."""
        head = role == "head"
        fixed = 9 if head else 6
        return cls(
            node_manager=block[0],
            object_manager=block[1],
            dashboard_agent_listen=block[2],
            dashboard_agent_grpc=block[3],
            runtime_env_agent=block[4],
            metrics_export=block[5],
            gcs=block[6] if head else None,
            dashboard=block[7] if head else None,
            ray_client_server=block[8] if head else None,
            min_worker=block[fixed],
            max_worker=block[-1],
        )

    def all(self) -> list[int]:
        """Every port of the block (for release)."""
        fixed = [
            self.node_manager,
            self.object_manager,
            self.dashboard_agent_listen,
            self.dashboard_agent_grpc,
            self.runtime_env_agent,
            self.metrics_export,
        ]
        head = [p for p in (self.gcs, self.dashboard, self.ray_client_server) if p is not None]
        return fixed + head + list(range(self.min_worker, self.max_worker + 1))

    def args(self) -> list[str]:
        """The ``ray start`` port options."""
        out = [
            f"--node-manager-port={self.node_manager}",
            f"--object-manager-port={self.object_manager}",
            f"--dashboard-agent-listen-port={self.dashboard_agent_listen}",
            f"--dashboard-agent-grpc-port={self.dashboard_agent_grpc}",
            f"--runtime-env-agent-port={self.runtime_env_agent}",
            f"--metrics-export-port={self.metrics_export}",
            f"--min-worker-port={self.min_worker}",
            f"--max-worker-port={self.max_worker}",
        ]
        if self.gcs is not None:
            out.append(f"--port={self.gcs}")
        if self.dashboard is not None:
            out.append(f"--dashboard-port={self.dashboard}")
        if self.ray_client_server is not None:
            out.append(f"--ray-client-server-port={self.ray_client_server}")
        return out


def ports_needed(role: Role, worker_ports: int = DEFAULT_WORKER_PORTS) -> int:
    """How many consecutive ports a node of this role takes."""
    return (9 if role == "head" else 6) + worker_ports


# --- nodes ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class RayNode:
    """A Ray node this host started for a cluster."""

    cluster_id: str
    node_index: int
    role: Role
    temp_dir: Path
    ports: NodePorts
    node_ip: str
    gcs_address: str
    """``ip:port`` of the cluster's GCS (the head's own for a head)."""
    ray_version: str
    command: list[str]
    """The ``ray start`` argv (the token travels in the environment, never on the command line)."""
    start_seconds: float
    """Wall time ``ray start`` took (the raw cost of starting / joining)."""
    token: str = field(repr=False)
    dashboard_url: str | None = None
    attempts: int = 1
    """How many ``ray start`` runs it took (an overloaded host may need a second one)."""

    @property
    def marker(self) -> str:
        return node_marker(self.cluster_id, self.node_index)

    def auth_headers(self) -> dict[str, str]:
        """Headers for the head's dashboard / Job Submission API."""
        return {"Authorization": f"Bearer {self.token}"}


RAY_SITE_DIR: Final = Path(__file__).with_name("ray_site")
"""Holds the ``sitecustomize`` that closes what Ray serves without the token (metrics,
health checks, the dashboard's open pages): first on the node's ``PYTHONPATH``."""


def ray_env(token: str, marker: str) -> dict[str, str]:
    """The environment of ``ray start``: ours minus other Ray settings, plus token auth and
    the lock-down of Ray's open endpoints (``ray_site/sitecustomize.py``)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAY_") and k not in (MARKER_ENV, "RAY_ADDRESS")
    }
    # Job entrypoints (`python train.py`) must find the interpreter that has Ray installed.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(RAY_SITE_DIR), env.get("PYTHONPATH", "")) if p
    )
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        **{MARKER_ENV: marker},
    )
    return env


def _temp_root() -> Path:
    return Path(os.environ.get(TEMP_ROOT_ENV) or Path(tempfile.gettempdir()) / "tesai-ray")


def _node_temp_dir(root: Path | None, cluster_id: str, node_index: int) -> Path:
    # Short: Ray's unix sockets live below it (AF_UNIX paths are limited to ~107 bytes).
    return (root or _temp_root()) / f"{cluster_id.replace('-', '')[:12]}-{node_index}"


def _pid_digits() -> int:
    """Digits of the largest PID this host hands out (``kernel.pid_max``; 7 when unknown)."""
    try:
        return len(str(int(Path("/proc/sys/kernel/pid_max").read_text()) - 1))
    except (OSError, ValueError):
        return 7


def check_temp_dir(temp_dir: Path, role: Role) -> None:
    """Refuse a node temp dir below which Ray's unix socket paths could pass ``AF_UNIX``'s
    limit: Ray would fail after a minute with a misleading ``Module MetricsHead failed to
    start. Received EOF from pipe.`` (and only when its PID has one digit more).

    Raises RayNodeError(ray_temp_dir_too_long).
    """
    limit = 103 if sys.platform == "darwin" else ray_failures.AF_UNIX_PATH_MAX
    longest = ray_failures.longest_socket_path(temp_dir, role, _pid_digits())
    if longest > limit:
        over = longest - limit
        raise RayNodeError(
            REASON_RAY_TEMP_DIR_TOO_LONG,
            f"Ray's unix socket paths below {temp_dir} would reach {longest} bytes, over the "
            f"{limit}-byte AF_UNIX limit: {TEMP_ROOT_ENV} (now {temp_dir.parent}) must be "
            f"{over} byte{'' if over == 1 else 's'} shorter",
        )


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def _start(
    role: Role,
    cluster_id: str,
    token: str,
    *,
    node_index: int,
    allocator: PortAllocator,
    head_address: str | None,
    resources: Mapping[str, float] | None,
    labels: Mapping[str, str] | None,
    num_cpus: int | None,
    num_gpus: int | None,
    object_store_memory: int | None,
    node_ip: str | None,
    dashboard_host: str,
    temp_root: Path | None,
    required_ray_version: str | None,
    worker_ports: int,
    timeout_s: float,
) -> RayNode:
    version = check_ray_version(required_ray_version)
    if not token:
        raise RayNodeError(REASON_RAY_START_FAILED, "a cluster token is required")
    marker = node_marker(cluster_id, node_index)
    if find_processes(marker):
        raise RayNodeError(REASON_RAY_START_FAILED, f"node {marker} is already running here")
    temp_dir = _node_temp_dir(temp_root, cluster_id, node_index)
    check_temp_dir(temp_dir, role)
    ports = NodePorts.from_block(role, allocator.allocate(ports_needed(role, worker_ports)))
    _fresh_dir(temp_dir)
    spec = NodeSpec(
        cluster_id=cluster_id,
        node_index=node_index,
        role=role,
        token=token,
        head_address=head_address,
        ray_version=required_ray_version,
        resources=dict(resources or {}),
        labels=dict(labels or {}),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        object_store_memory=object_store_memory,
        node_ip=node_ip,
        dashboard_host=dashboard_host,
    )
    executable = ray_executable()
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        cmd = ray_start_argv(
            spec,
            executable=executable,
            port_args=ports.args(),
            temp_dir=str(temp_dir),
            node_ip=node_ip,
            dashboard_host=dashboard_host,
        )
        # The first two runs get the whole timeout each; later ones (an overloaded host
        # missing Ray's fixed 30 s raylet wait again) only what is left of the first.
        run_s = timeout_s if attempts <= 2 else started + timeout_s - time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                env=ray_env(token, marker),
                capture_output=True,
                text=True,
                timeout=max(run_s, 1.0),
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            output = _text(exc.stdout) + _text(exc.stderr)
            logs = ray_failures.read_session_logs(temp_dir)
            failure = ray_failures.StartFailure(REASON_RAY_START_TIMEOUT, retryable=True)
            message = f"ray start did not finish in {run_s:.0f} s\n" + (
                ray_failures.failure_message(output, logs, token)
            )
        else:
            output = _ANSI.sub("", proc.stdout + proc.stderr)
            if proc.returncode == 0:
                break
            logs = ray_failures.read_session_logs(temp_dir)
            failure = ray_failures.classify(role, output, logs)
            message = ray_failures.failure_message(output, logs, token)
        _kill(find_processes(marker), grace_s=2.0)
        elapsed = time.monotonic() - started
        overloaded = failure.reason == REASON_RAY_START_TIMEOUT and elapsed + 30 < timeout_s
        if failure.retryable and (attempts == 1 or overloaded):
            # Not the device's fault: once more (an overloaded host missing Ray's fixed 30 s
            # waits: while they fit in the timeout), on fresh ports and a fresh temp dir.
            log.warning(
                "ray start of %s failed (%s, attempt %d): %s; trying again",
                marker,
                failure.reason,
                attempts,
                ray_failures.headline(output),
            )
            try:
                block = allocator.allocate(ports_needed(role, worker_ports))
            except RayNodeError:
                block = None
            if block is not None:
                allocator.release(ports.all())
                ports = NodePorts.from_block(role, block)
                _fresh_dir(temp_dir)
                continue
        allocator.release(ports.all())
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise RayNodeError(failure.reason, message)
    elapsed = time.monotonic() - started
    seen_ip = _NODE_IP.search(output)
    ip = node_ip or (seen_ip.group(1) if seen_ip else "127.0.0.1")
    if role == "head":
        gcs_address = f"{ip}:{ports.gcs}"
        host = "127.0.0.1" if dashboard_host in ("0.0.0.0", "127.0.0.1", "") else dashboard_host
        dashboard_url: str | None = f"http://{host}:{ports.dashboard}"
    else:
        assert head_address is not None
        gcs_address, dashboard_url = head_address, None
    return RayNode(
        cluster_id=cluster_id,
        node_index=node_index,
        role=role,
        temp_dir=temp_dir,
        ports=ports,
        node_ip=ip,
        gcs_address=gcs_address,
        ray_version=version,
        command=cmd,
        start_seconds=elapsed,
        token=token,
        dashboard_url=dashboard_url,
        attempts=attempts,
    )


def _text(data: str | bytes | None) -> str:
    """Partial output of a timed-out run (bytes even with ``text=True``)."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    return _ANSI.sub("", data or "")


def start_head(
    cluster_id: str,
    token: str,
    *,
    allocator: PortAllocator,
    node_index: int = 0,
    resources: Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
    node_ip: str | None = None,
    dashboard_host: str = "127.0.0.1",
    temp_root: Path | None = None,
    required_ray_version: str | None = None,
    worker_ports: int = DEFAULT_WORKER_PORTS,
    timeout_s: float = 180.0,
) -> RayNode:
    """Start the head node of a cluster (``ray start --head``) with token authentication.

    ``dashboard_host`` is where the dashboard / Job API listens (the control plane's proxy must
    reach it; the token guards it). Blocks until ``ray start`` returns (≈ 7–12 s on a quiet
    host). A failure that is not the device's fault (ray_start_timeout, ray_port_in_use,
    ray_dashboard_failed: see ``tesai.agent.ray_failures``) is tried once more on fresh ports,
    each run within ``timeout_s``. Raises RayNodeError: ray_version_mismatch,
    ray_not_installed, ray_temp_dir_too_long or no_free_ports before Ray runs; after it, one
    of those three or ray_start_failed, with Ray's own lines in its message. Nothing is left
    running after a failure.
    """
    return _start(
        "head",
        cluster_id,
        token,
        node_index=node_index,
        allocator=allocator,
        head_address=None,
        resources=resources,
        labels=labels,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        object_store_memory=object_store_memory,
        node_ip=node_ip,
        dashboard_host=dashboard_host,
        temp_root=temp_root,
        required_ray_version=required_ray_version,
        worker_ports=worker_ports,
        timeout_s=timeout_s,
    )


def start_worker(
    cluster_id: str,
    token: str,
    head_address: str,
    *,
    allocator: PortAllocator,
    node_index: int,
    resources: Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
    node_ip: str | None = None,
    temp_root: Path | None = None,
    required_ray_version: str | None = None,
    worker_ports: int = DEFAULT_WORKER_PORTS,
    timeout_s: float = 180.0,
) -> RayNode:
    """Join a worker node to the cluster whose GCS is at ``head_address`` (``ip:port``).

    Raises RayNodeError like ``start_head``, and ray_auth_failed when the head rejects the token
    (Ray retries for ~25 s before giving up; not tried again).
    """
    return _start(
        "worker",
        cluster_id,
        token,
        node_index=node_index,
        allocator=allocator,
        head_address=head_address,
        resources=resources,
        labels=labels,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        object_store_memory=object_store_memory,
        node_ip=node_ip,
        dashboard_host="127.0.0.1",
        temp_root=temp_root,
        required_ray_version=required_ray_version,
        worker_ports=worker_ports,
        timeout_s=timeout_s,
    )


# --- processes -----------------------------------------------------------------------------------


def _temp_tag(cluster_id: str, node_index: int | None) -> str:
    """The per-node temp dir's name (``<cluster12>-<n>``), or its cluster prefix."""
    prefix = f"{cluster_id.replace('-', '')[:12]}-"
    return prefix if node_index is None else f"{prefix}{node_index}"


def _matches(proc: psutil.Process, marker: str, tag: str, exact: bool) -> bool:
    try:
        value = proc.environ().get(MARKER_ENV)
    except (psutil.Error, OSError):
        value = None
    if value is not None and (value == marker if exact else value.startswith(marker)):
        return True
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return False
    if exact:
        return f"/{tag}/" in cmdline or cmdline.endswith(f"/{tag}") or f"/{tag} " in cmdline
    return f"/{tag}" in cmdline


def find_processes(marker: str) -> list[psutil.Process]:
    """Live processes of one node (``<cluster>/<n>``) or of a whole cluster (``<cluster>/``).

    A process belongs to the node when it carries the node's ``TESAI_RAY_NODE`` or names its
    temp dir on its command line, or descends from such a process. (Ray retitles many of its
    processes — ``ray::IDLE``, ``ray-dashboard-*`` — which overwrites what /proc shows of their
    environment, so the marker alone would miss them; they are children of the raylet or the
    dashboard, which do keep it.)
    """
    cluster_id, _, index = marker.partition("/")
    exact = bool(index)
    tag = _temp_tag(cluster_id, int(index) if exact else None)
    me = os.getpid()
    roots = [p for p in psutil.process_iter() if p.pid != me and _matches(p, marker, tag, exact)]
    found = {p.pid: p for p in roots}
    for p in roots:
        with contextlib.suppress(psutil.Error):
            for child in p.children(recursive=True):
                found.setdefault(child.pid, child)
    found.pop(me, None)
    return [p for p in found.values() if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill(procs: list[psutil.Process], grace_s: float) -> list[psutil.Process]:
    """SIGTERM, wait up to ``grace_s``, SIGKILL what is left; returns the survivors."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    _, alive = psutil.wait_procs(alive, timeout=5.0)
    return alive


def _freeze_tree(marker: str) -> list[psutil.Process]:
    """SIGSTOP the node's processes until a scan finds no new one (a stopped raylet cannot
    fork workers that would escape as orphans while we kill)."""
    seen: dict[int, psutil.Process] = {}
    for _ in range(10):
        new = [p for p in find_processes(marker) if p.pid not in seen]
        if not new:
            break
        for p in new:
            with contextlib.suppress(psutil.Error):
                p.suspend()
            seen[p.pid] = p
    return list(seen.values())


def stop_node(
    node: RayNode | None = None,
    *,
    marker: str | None = None,
    allocator: PortAllocator | None = None,
    grace_s: float = 3.0,
    keep_temp_dir: bool = False,
) -> int:
    """Stop exactly one node's Ray processes (or, with ``marker="<cluster>/"``, a cluster's).

    Other clusters' nodes on the host are untouched. Returns how many processes were stopped;
    raises RayNodeError(ray_stop_failed) if any is still alive afterwards.
    """
    target = node.marker if node is not None else marker
    if not target:
        raise ValueError("give a node or a marker")
    stopped = 0
    for _ in range(3):
        procs = _freeze_tree(target)
        if not procs:
            break
        stopped += len(procs)
        # Stopped processes act on SIGTERM only once continued; a torn-down node needs no
        # graceful exit, so: continue, SIGTERM, and SIGKILL after a short grace.
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)
                p.resume()
        _kill(procs, grace_s)
    left = find_processes(target)
    if left:
        raise RayNodeError(REASON_RAY_STOP_FAILED, f"{len(left)} processes of {target} still alive")
    if node is not None:
        if allocator is not None:
            allocator.release(node.ports.all())
        if not keep_temp_dir:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
    return stopped


# --- status --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What a node looks like now; Ray-reported fields are None when Ray could not say."""

    processes: int
    raylet_alive: bool
    gcs_alive: bool | None
    """Head only."""
    alive_nodes: int | None = None
    pending_demand: list[dict[str, Any]] | None = None
    idle_node_ids: list[str] | None = None
    error: str | None = None

    @property
    def up(self) -> bool:
        return self.raylet_alive and self.gcs_alive is not False


def _process_names(procs: list[psutil.Process]) -> set[str]:
    names = set()
    for p in procs:
        with contextlib.suppress(psutil.Error):
            names.add(p.name())
    return names


def node_status(node: RayNode, timeout_s: float = 5.0) -> NodeStatus:
    """Processes of the node and, for a head, what Ray's state API says about the cluster."""
    procs = find_processes(node.marker)
    names = _process_names(procs)
    raylet = "raylet" in names
    gcs = ("gcs_server" in names) if node.role == "head" else None
    if node.dashboard_url is None or not (raylet and gcs):
        return NodeStatus(len(procs), raylet, gcs)
    try:
        with httpx.Client(
            base_url=node.dashboard_url, headers=node.auth_headers(), timeout=timeout_s
        ) as client:
            alive = alive_node_count(client)
            demand, idle = autoscaler_view(client)
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return NodeStatus(len(procs), raylet, gcs, error=f"{type(exc).__name__}: {exc}"[:300])
    return NodeStatus(len(procs), raylet, gcs, alive, demand, idle)


def alive_node_count(client: httpx.Client) -> int:
    """ALIVE nodes per the GCS-backed state API (``GET /api/v0/nodes``) of the dashboard."""
    resp = client.get("/api/v0/nodes", params={"limit": 10_000})
    resp.raise_for_status()
    rows = resp.json()["data"]["result"]["result"]
    return sum(1 for r in rows if r.get("state") == "ALIVE")


# The dashboard's cluster status camel-cases resource names (tesai_node_3 → tesaiNode3).
_NODE_RESOURCE = re.compile(r"^(?:tesai_node_|tesaiNode)(\d+)$")


def _node_label(ray_node_id: str, usage: Mapping[str, Any]) -> str:
    """``index:<n>`` for a node carrying our ``tesai_node_<n>`` resource, else Ray's node id:
    the control plane knows its nodes by index, not by Ray's ids."""
    for resource in usage:
        match = _NODE_RESOURCE.match(resource)
        if match:
            return f"index:{match.group(1)}"
    return ray_node_id


def autoscaler_view(
    client: httpx.Client,
) -> tuple[list[dict[str, Any]] | None, list[str] | None]:
    """Pending resource demand and idle nodes from the autoscaler status in the GCS.

    Best effort: ``GET /api/cluster_status`` returns what the head's monitor last wrote (every
    few seconds); before its first report both are None.
    """
    resp = client.get("/api/cluster_status")
    resp.raise_for_status()
    status = (resp.json().get("data") or {}).get("clusterStatus") or {}
    report = status.get("loadMetricsReport") or status.get("load_metrics_report")
    if not isinstance(report, dict):
        return None, None
    demand: list[dict[str, Any]] = []
    for key in ("resourceDemand", "resource_demand", "pgDemand", "pg_demand"):
        for item in report.get(key) or []:
            if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], dict):
                demand.append({"shape": item[0], "count": int(item[1])})
    idle: list[str] = []
    usage_by_node = report.get("usageByNode") or report.get("usage_by_node") or {}
    if isinstance(usage_by_node, dict):
        for node_id, usage in usage_by_node.items():
            # usage: {resource: [used, total]}; a node with nothing used is idle.
            if isinstance(usage, dict) and all(
                isinstance(v, list | tuple) and len(v) == 2 and not v[0] for v in usage.values()
            ):
                idle.append(_node_label(str(node_id), usage))
    return demand, sorted(idle)


# --- the agent's command interface ---------------------------------------------------------------

_nodes: dict[str, RayNode] = {}
_nodes_lock = threading.Lock()
_allocator: PortAllocator | None = None


def default_allocator() -> PortAllocator:
    """The agent's allocator over ``TESAI_RAY_PORT_RANGE`` (default 20000-29999)."""
    global _allocator
    if _allocator is None:
        _allocator = PortAllocator(PortRange.parse(os.environ.get(PORT_RANGE_ENV, "20000-29999")))
    return _allocator


def to_node_state(node: RayNode, status: NodeStatus | None = None) -> NodeState:
    """The heartbeat's view of a node."""
    st = status or node_status(node)
    if st.up:
        state, reason = "running", (REASON_RAY_STATE_UNAVAILABLE if st.error else None)
    else:
        state, reason = "failed", REASON_RAY_NODE_DOWN
    return NodeState(
        cluster_id=UUID(node.cluster_id),
        role=node.role,
        state=state,
        reason=reason,
        ray_address=node.gcs_address,
        dashboard_port=node.ports.dashboard,
        alive_nodes=st.alive_nodes,
        pending_demand=st.pending_demand,
        idle_node_ids=st.idle_node_ids,
    )


REASON_RAY_STATE_UNAVAILABLE: Final = "ray_state_unavailable"
"""The node runs but the head's state API did not answer (cluster figures are missing)."""
REASON_RAY_NODE_DOWN: Final = "ray_node_down"
"""The node's raylet (or the head's GCS) is no longer running."""


def join_cluster(args: Mapping[str, Any]) -> NodeState:
    """``join_cluster`` command: start this device's node of a cluster.

    args: cluster_id (UUID str), role ("head"|"worker"), token, node_index, head_address
    (workers), ray_version (required version), resources, labels, num_cpus, num_gpus,
    object_store_memory, node_ip, dashboard_host. Failures come back as state "failed" with a
    reason code (e.g. ray_version_mismatch) and, in ``message``, what Ray said.
    """
    cluster_id = str(UUID(str(args["cluster_id"])))
    role: Role = "head" if args.get("role") == "head" else "worker"
    index = int(args.get("node_index", 0))
    common: dict[str, Any] = {
        "allocator": default_allocator(),
        "node_index": index,
        "resources": args.get("resources"),
        "labels": args.get("labels"),
        "num_cpus": args.get("num_cpus"),
        "num_gpus": args.get("num_gpus"),
        "object_store_memory": args.get("object_store_memory"),
        "node_ip": args.get("node_ip") or os.environ.get(NODE_IP_ENV) or None,
        "required_ray_version": args.get("ray_version"),
    }
    token = str(args.get("token") or "")
    head_address = str(args.get("head_address") or "")
    try:
        check_ray_version(args.get("ray_version"))
        if not token or (role == "worker" and not head_address):
            return NodeState(
                cluster_id=UUID(cluster_id), role=role, state="failed", reason=REASON_BAD_ARGS
            )
        if role == "head":
            node = start_head(
                cluster_id,
                token,
                dashboard_host=str(args.get("dashboard_host") or "0.0.0.0"),
                **common,
            )
        else:
            node = start_worker(cluster_id, token, head_address, **common)
    except RayNodeError as exc:
        return NodeState(
            cluster_id=UUID(cluster_id),
            role=role,
            state="failed",
            reason=exc.reason,
            message=exc.message[:MAX_NODE_MESSAGE],
        )
    with _nodes_lock:
        _nodes[node.marker] = node
    return to_node_state(node)


def leave_cluster(args: Mapping[str, Any]) -> NodeState:
    """``leave_cluster`` command: stop this device's nodes of the cluster (all of them)."""
    cluster_id = str(UUID(str(args["cluster_id"])))
    index = args.get("node_index")
    # With a node index, only that node: several devices' agents may share a host (tests, a
    # provider's multi-device box), and another node of the same cluster must live on.
    sweep = f"{cluster_id}/" if index is None else node_marker(cluster_id, int(index))
    with _nodes_lock:
        mine = [
            n
            for n in _nodes.values()
            if n.cluster_id == cluster_id and (index is None or n.node_index == int(index))
        ]
    role: Role = mine[0].role if mine else "worker"
    try:
        for node in mine:
            stop_node(node, allocator=default_allocator())
            with _nodes_lock:
                _nodes.pop(node.marker, None)
        # Also processes of this node this agent lost track of (e.g. after a restart).
        stop_node(marker=sweep)
    except RayNodeError as exc:
        return NodeState(cluster_id=UUID(cluster_id), role=role, state="failed", reason=exc.reason)
    return NodeState(cluster_id=UUID(cluster_id), role=role, state="stopped")


def node_states() -> list[NodeState]:
    """Every node this agent started, for the heartbeat."""
    with _nodes_lock:
        nodes = list(_nodes.values())
    return [to_node_state(n) for n in nodes]


def stop_all() -> None:
    """Stop every node this agent started (SIGTERM drain)."""
    with _nodes_lock:
        nodes = list(_nodes.values())
        _nodes.clear()
    for node in nodes:
        with contextlib.suppress(RayNodeError):
            stop_node(node, allocator=default_allocator())
