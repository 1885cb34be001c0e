"""``tesai agent doctor``: checks a provider host and says what to fix.

Each check returns a ``Check`` (OK, WARN or FAIL, with a fix for anything not OK); only a FAIL
makes the command exit non-zero.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Literal

import httpx

from tesai.agent.commands import load_ray_node
from tesai.agent.probe import probe_gpus
from tesai.agent.state import CREDENTIAL_FILE, AgentState
from tesai.protocol.v1 import HEALTHZ_PATH, REASON_NVML_UNAVAILABLE

Outcome = Literal["OK", "WARN", "FAIL"]

EXPECTED_RAY_VERSION = "2.60.0"
"""The Ray version the platform's clusters run (clusters need one version on every node)."""
RAY_PORTS: dict[str, int] = {"GCS": 6379, "dashboard": 8265, "client server": 10001}
"""Ray's default head-node ports, checked when the agent has no Ray node support (ray_node)."""
MAX_CLOCK_SKEW_S = 10.0


@dataclass(frozen=True, slots=True)
class Check:
    """One doctor check: what was checked, the outcome, details and how to fix it."""

    name: str
    outcome: Outcome
    detail: str
    fix: str | None = None


def check_gpu() -> Check:
    """NVIDIA driver and NVML."""
    reading, status, reason, detail = probe_gpus()
    if status == "ok" and reading.gpus:
        models = ", ".join(sorted({g.model for g in reading.gpus}))
        return Check(
            "GPU driver / NVML",
            "OK",
            f"{len(reading.gpus)} GPU(s): {models}; driver {reading.driver_version}, "
            f"CUDA {reading.cuda_version}",
        )
    if status == "ok":
        why = "no NVIDIA driver" if reason == REASON_NVML_UNAVAILABLE else "no GPU found"
        return Check("GPU driver / NVML", "OK", f"{why}: this host joins as a CPU device")
    if status == "degraded":
        return Check(
            "GPU driver / NVML",
            "WARN",
            f"NVML failed ({detail}); nvidia-smi lists {len(reading.gpus)} GPU(s)",
            "install nvidia-ml-py next to the agent and check the driver (nvidia-smi -q)",
        )
    fix = (
        "the NVIDIA kernel module and user-space library differ: reboot, or reinstall the driver"
        if reason == "driver_mismatch"
        else "check the NVIDIA driver installation (nvidia-smi should list every GPU)"
    )
    return Check("GPU driver / NVML", "FAIL", f"{reason}: {detail}", fix)


def check_ray() -> Check:
    """Ray installed, in the platform's version."""
    try:
        installed = version("ray")
    except PackageNotFoundError:
        return Check(
            "Ray",
            "FAIL",
            "Ray is not installed: this host cannot run cluster nodes",
            f"pip install 'ray[default]=={EXPECTED_RAY_VERSION}'",
        )
    if installed != EXPECTED_RAY_VERSION:
        return Check(
            "Ray",
            "WARN",
            f"Ray {installed} installed; clusters run {EXPECTED_RAY_VERSION}",
            f"pip install 'ray[default]=={EXPECTED_RAY_VERSION}'",
        )
    return Check("Ray", "OK", f"Ray {installed}")


def port_free(port: int, host: str = "0.0.0.0") -> bool:
    """Whether a TCP port can be bound on this host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def check_ports(ports: dict[str, int] | None = None) -> Check:
    """Ports for Ray nodes are free: the agent's range (ray_node) or Ray's default ports."""
    ray_node = load_ray_node()
    if ports is None and ray_node is not None:
        return _check_port_range(ray_node)
    wanted = ports or RAY_PORTS
    busy = [f"{name} {port}" for name, port in wanted.items() if not port_free(port)]
    if busy:
        return Check(
            "Ray ports",
            "FAIL",
            f"in use: {', '.join(busy)}",
            "stop whatever listens there (ss -ltnp), or run no other Ray/Redis on this host",
        )
    return Check("Ray ports", "OK", ", ".join(f"{p}" for p in wanted.values()))


def _check_port_range(ray_node: ModuleType) -> Check:
    text = os.environ.get(ray_node.PORT_RANGE_ENV, "20000-29999")
    try:
        ports = ray_node.PortRange.parse(text)
    except ValueError:
        return Check(
            "Ray ports",
            "FAIL",
            f"{ray_node.PORT_RANGE_ENV}={text!r} is not a port range",
            f"set {ray_node.PORT_RANGE_ENV}=20000-29999 (first-last)",
        )
    needed = int(ray_node.ports_needed("head"))
    try:
        ray_node.PortAllocator(ports).allocate(needed)
    except ray_node.RayNodeError:
        return Check(
            "Ray ports",
            "FAIL",
            f"no {needed} consecutive free ports in {ports.first}-{ports.last} for a Ray node",
            f"free ports in that range (ss -ltnp) or set {ray_node.PORT_RANGE_ENV}",
        )
    return Check(
        "Ray ports",
        "OK",
        f"{ports.first}-{ports.last} has room for a Ray node ({needed} ports); "
        "open it in the host firewall to other providers' hosts",
    )


def check_server(server: str, timeout: float = 5.0) -> tuple[Check, Check]:
    """Connectivity to the control plane (GET /healthz) and clock skew against its Date header."""
    url = server.rstrip("/") + HEALTHZ_PATH
    try:
        start = time.perf_counter()
        response = httpx.get(url, timeout=timeout)
        rtt_ms = (time.perf_counter() - start) * 1000
    except httpx.HTTPError as exc:
        fail = Check(
            "Control plane",
            "FAIL",
            f"{url}: {exc or type(exc).__name__}",
            "check the URL, DNS and that outbound HTTPS to the server is allowed",
        )
        return fail, Check("Clock skew", "WARN", "not measured (server unreachable)")
    if response.status_code >= 400:
        reach = Check(
            "Control plane",
            "FAIL",
            f"{url}: HTTP {response.status_code}",
            "the server is up but unhealthy: try again later or tell the operator",
        )
    else:
        reach = Check("Control plane", "OK", f"{url} in {rtt_ms:.0f} ms")
    date = response.headers.get("date")
    if not date:
        return reach, Check("Clock skew", "WARN", "the server sent no Date header")
    try:
        server_now = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return reach, Check("Clock skew", "WARN", f"unreadable Date header {date!r}")
    # The Date header has 1 s resolution and was stamped during the request.
    skew = (datetime.now(UTC) - server_now).total_seconds() - rtt_ms / 2000
    if abs(skew) > MAX_CLOCK_SKEW_S:
        return reach, Check(
            "Clock skew",
            "FAIL",
            f"this host is {skew:+.0f} s off the server's clock",
            "enable time sync: timedatectl set-ntp true (or chrony/ntpd)",
        )
    return reach, Check("Clock skew", "OK", f"{skew:+.1f} s")


def check_state_dir(state_dir: Path) -> Check:
    """The state dir is private and writable; the credential file is 0600."""
    name = "State dir"
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        return Check(name, "FAIL", f"cannot create {state_dir}: {exc}", "pick --state-dir")
    mode = stat.S_IMODE(state_dir.stat().st_mode)
    if not os.access(state_dir, os.W_OK):
        return Check(name, "FAIL", f"{state_dir} is not writable", f"chown $USER {state_dir}")
    if mode & 0o022:
        return Check(
            name,
            "FAIL",
            f"{state_dir} is writable by others (mode {mode:o})",
            f"chmod 700 {state_dir}",
        )
    cred = state_dir / CREDENTIAL_FILE
    if cred.exists():
        cmode = stat.S_IMODE(cred.stat().st_mode)
        if cmode & 0o077:
            return Check(
                name,
                "FAIL",
                f"{cred} is readable by others (mode {cmode:o})",
                f"chmod 600 {cred}",
            )
        return Check(name, "OK", f"{state_dir} (credential present, 0600)")
    return Check(name, "OK", f"{state_dir} (no credential yet: the agent will join)")


def run_checks(server: str | None, state_dir: Path) -> list[Check]:
    """Every check, in the order printed."""
    checks = [check_gpu(), check_ray(), check_ports()]
    if server is None:
        stored = AgentState(state_dir).load_credential() if state_dir.exists() else None
        server = stored.server_url if stored else None
    if server:
        checks.extend(check_server(server))
    else:
        checks.append(Check("Control plane", "WARN", "not checked: pass --server URL"))
    checks.append(check_state_dir(state_dir))
    return checks
