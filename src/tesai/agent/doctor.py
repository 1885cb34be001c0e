"""``tesai agent doctor``: checks a provider host and says what to fix.

Each check returns a ``Check`` (OK, WARN or FAIL, with a fix for anything not OK); only a FAIL
makes the command exit non-zero.

The container checks (engine, node image, cgroups, image disk, NVIDIA container runtime) are
pure functions over what the engine and the host report, so they are tested without either;
``check_containers`` gathers those reports. The ``docker`` package is imported only there: the
agent starts, and the other checks run, on a host without it.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import httpx

from tesai.agent import node_image
from tesai.agent.commands import load_ray_node
from tesai.agent.probe import NvmlReading, probe_gpus
from tesai.agent.state import CREDENTIAL_FILE, AgentState
from tesai.protocol.v1 import HEALTHZ_PATH, REASON_NVML_UNAVAILABLE, ProbeStatus

Outcome = Literal["OK", "WARN", "FAIL"]

EXPECTED_RAY_VERSION = node_image.RAY_VERSION
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


GpuProbe = tuple[NvmlReading, ProbeStatus, str | None, str | None]


def check_gpu(probe: GpuProbe | None = None) -> Check:
    """NVIDIA driver and NVML (``probe``: what ``probe_gpus`` found, when already run)."""
    reading, status, reason, detail = probe or probe_gpus()
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
    gpus = probe_gpus()
    checks = [check_gpu(gpus), check_ray(), check_ports()]
    checks.extend(check_containers(gpu_host=bool(gpus[0].gpus)))
    if server is None:
        stored = AgentState(state_dir).load_credential() if state_dir.exists() else None
        server = stored.server_url if stored else None
    if server:
        checks.extend(check_server(server))
    else:
        checks.append(Check("Control plane", "WARN", "not checked: pass --server URL"))
    checks.append(check_state_dir(state_dir))
    return checks


# --- Containers: where cluster nodes run -------------------------------------------------------

MIN_ENGINE_API = (1, 41)
"""Docker Engine API 1.41 (Engine 20.10, Debian bookworm's docker.io): the oldest tested;
GPUs by UUID through DeviceRequests need 1.40."""
CGROUP_CONTROLLERS = ("cpu", "memory", "pids")
"""What a node's limits need: NanoCPUs, Memory (and the OOM kill), PidsLimit."""
IMAGE_DISK_GIB = {False: (5, 20), True: (15, 50)}
"""Free space for images where the engine keeps them, (FAIL below, WARN below) in GiB, for a
CPU host and a GPU host (CUDA images are several times larger)."""
CDI_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))
NVIDIA_HOOK = "nvidia-container-runtime-hook"
INSTALL_ENGINE = (
    "install Docker (Debian/Ubuntu: apt-get install docker.io) and start it "
    "(systemctl enable --now docker; in a TES AI checkout: scripts/docker_engine.sh); "
    "a non-root agent's user needs the docker group"
)


def _api_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return ()


def engine_name(version: Mapping[str, Any]) -> str:
    """``Docker Engine`` or ``Podman Engine``, from the engine's ``/version`` answer."""
    for component in version.get("Components") or ():
        name = str(component.get("Name", ""))
        if name == "Engine":
            return "Docker Engine"
        if "Engine" in name:
            return name
    return "Docker Engine"


def engine_check(version: Mapping[str, Any]) -> Check:
    """The engine's ``/version`` answer: which engine, and an API new enough."""
    name, api = engine_name(version), str(version.get("ApiVersion", "?"))
    detail = f"{name} {version.get('Version', '?')} (API {api})"
    if _api_tuple(api) < MIN_ENGINE_API:
        wanted = ".".join(map(str, MIN_ENGINE_API))
        return Check(
            "Container engine",
            "FAIL",
            f"{detail}: API {wanted} or newer is needed",
            "upgrade the engine (Docker 20.10 or newer, or Podman 4 or newer)",
        )
    return Check("Container engine", "OK", detail)


def image_check(
    tag: str,
    labels: Mapping[str, str] | None,
    ray_version: str = EXPECTED_RAY_VERSION,
    ray_site_sha256: str | None = None,
) -> Check:
    """The node image ``tag`` from its labels (None: not on this host)."""
    name = "Node image"
    rebuild = "make node-image (in a TES AI checkout)"
    if labels is None:
        return Check(name, "WARN", f"{tag} is not on this host", rebuild)
    found = node_image.image_ray_version(labels)
    if found is None:
        return Check(name, "WARN", f"{tag} does not say its Ray version (no label)", rebuild)
    if found != ray_version:
        return Check(
            name,
            "FAIL",
            f"{tag} carries Ray {found}; clusters run {ray_version} (image_ray_mismatch)",
            rebuild,
        )
    site = labels.get(node_image.RAY_SITE_LABEL)
    if ray_site_sha256 is not None and site != ray_site_sha256:
        return Check(
            name,
            "WARN",
            f"{tag} (Ray {found}) has another lock-down of Ray's endpoints than this agent",
            rebuild,
        )
    return Check(name, "OK", f"{tag} (Ray {found})")


def cgroup_check(mounts: str, v2_controllers: str | None, info: Mapping[str, Any] | None) -> Check:
    """cgroups with the controllers a node's limits need.

    ``mounts``: ``/proc/self/mounts``; ``v2_controllers``: ``/sys/fs/cgroup/cgroup.controllers``
    (None when absent); ``info``: the engine's ``/info`` answer (None when no engine answers).
    """
    name = "cgroups"
    if info is not None:
        missing = [k for k in ("MemoryLimit", "PidsLimit", "CpuCfsQuota") if info.get(k) is False]
        if missing:
            return Check(
                name,
                "FAIL",
                f"the engine cannot enforce {', '.join(missing)}",
                "enable the memory, pids and cpu cgroup controllers (kernel command line: "
                "cgroup_enable=memory), then restart the engine",
            )
    v1: set[str] = set()
    unified = False
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        if fields[2] == "cgroup2" and fields[1] == "/sys/fs/cgroup":
            unified = True
        elif fields[2] == "cgroup":
            v1.update(fields[3].split(","))
    if unified:
        have = set((v2_controllers or "").split())
        missing_v2 = [c for c in CGROUP_CONTROLLERS if c not in have]
        if missing_v2:
            return Check(
                name,
                "FAIL",
                f"cgroup v2 without the {', '.join(missing_v2)} controller(s)",
                "enable them (kernel command line: cgroup_enable=memory; systemd: Delegate=yes "
                "for the engine's service)",
            )
        return Check(name, "OK", "cgroup v2 with " + ", ".join(CGROUP_CONTROLLERS))
    missing_v1 = [c for c in CGROUP_CONTROLLERS if c not in v1]
    if missing_v1:
        return Check(
            name,
            "FAIL",
            f"no cgroup {', '.join(missing_v1)} controller: a node's limits cannot be enforced",
            "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1) and cgroup_enable=memory",
        )
    return Check(
        name,
        "WARN",
        "cgroup v1: memory, pids and CPU limits work, but runc and systemd are retiring v1",
        "boot with cgroup v2 (kernel command line: systemd.unified_cgroup_hierarchy=1; the "
        "default since Debian 11 and Ubuntu 21.10)",
    )


def image_disk_check(path: Path, free_bytes: int, gpu_host: bool) -> Check:
    """Free space where the engine keeps images (its ``DockerRootDir``)."""
    fail_gib, warn_gib = IMAGE_DISK_GIB[gpu_host]
    free_gib = free_bytes / 2**30
    detail = f"{free_gib:.0f} GiB free in {path}"
    fix = f"free space in {path}, or move the engine's data root (data-root in daemon.json)"
    if free_gib < fail_gib:
        return Check("Image disk", "FAIL", f"{detail}; {fail_gib} GiB at the least", fix)
    if free_gib < warn_gib:
        return Check("Image disk", "WARN", f"{detail}; {warn_gib} GiB recommended", fix)
    return Check("Image disk", "OK", detail)


def nvidia_container_check(
    engine: str | None,
    runtimes: Iterable[str],
    hook: str | None,
    cdi_specs: Sequence[Path],
) -> Check:
    """On a GPU host: can the engine give a container GPUs? Docker does it through the NVIDIA
    Container Toolkit (``--gpus``/DeviceRequests need its hook on the daemon's PATH, or its
    ``nvidia`` runtime); Podman through CDI specs (``nvidia-ctk cdi generate``)."""
    name = "NVIDIA container runtime"
    cdi = ", ".join(str(p) for p in cdi_specs)
    if engine is not None and "Podman" in engine:
        if cdi_specs:
            return Check(name, "OK", f"CDI specs: {cdi}")
        return Check(
            name,
            "FAIL",
            "no CDI spec for the GPUs: Podman cannot give a container a GPU",
            "install the NVIDIA Container Toolkit, then: "
            "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml",
        )
    if hook or "nvidia" in runtimes:
        found = [f"hook {hook}"] if hook else []
        found += ["runtime nvidia"] if "nvidia" in runtimes else []
        return Check(name, "OK", "NVIDIA Container Toolkit: " + ", ".join(found))
    return Check(
        name,
        "FAIL",
        "no NVIDIA Container Toolkit: the engine cannot give a container a GPU"
        + (f" (CDI specs {cdi} alone do not serve Docker's --gpus)" if cdi_specs else ""),
        "install nvidia-container-toolkit, then: nvidia-ctk runtime configure --runtime=docker "
        "and restart Docker",
    )


def _cdi_specs() -> list[Path]:
    found: list[Path] = []
    for folder in CDI_DIRS:
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    return found


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _engine_client() -> tuple[Any | None, Mapping[str, Any], Check]:
    """A Docker API client (API version negotiated) and the engine's ``/version`` answer, or
    None and {} with the check that says why."""
    try:
        import docker  # the agent runs without it: nodes then run only as processes
    except ImportError:
        missing = Check(
            "Container engine",
            "WARN",
            "the docker Python package is missing: nodes can run only as processes",
            "pip install 'docker>=7'",
        )
        return None, {}, missing
    try:
        client = docker.from_env(version="auto", timeout=10)
        version = client.version()
    except docker.errors.DockerException as exc:
        silent = Check(
            "Container engine",
            "WARN",
            f"no Docker Engine answers ({exc}): nodes can run only as processes, which "
            "customers asking for container isolation do not rent",
            INSTALL_ENGINE,
        )
        return None, {}, silent
    return client, version, engine_check(version)


def _engine_reports(client: Any) -> tuple[Mapping[str, Any], Mapping[str, str] | None]:
    """The engine's ``/info`` and the node image's labels (None: no such image)."""
    import docker

    info = client.info()
    try:
        labels = client.images.get(node_image.IMAGE).labels or {}
    except docker.errors.ImageNotFound:
        labels = None
    return info, labels


def check_containers(gpu_host: bool) -> list[Check]:
    """The container engine, the node image, cgroups, image disk space and, on a GPU host, the
    NVIDIA container runtime."""
    client, version, engine = _engine_client()
    checks = [engine]
    info: Mapping[str, Any] | None = None
    if client is not None:
        try:
            info, labels = _engine_reports(client)
        except Exception as exc:  # docker.errors.DockerException; requests' errors
            checks.append(Check("Node image", "WARN", f"not checked: {exc}"))
        else:
            digest = node_image.ray_site_digest()
            checks.append(image_check(node_image.IMAGE, labels, ray_site_sha256=digest))
        finally:
            client.close()
    else:
        checks.append(Check("Node image", "WARN", "not checked (no container engine)"))
    mounts = _read("/proc/self/mounts") or ""
    checks.append(cgroup_check(mounts, _read("/sys/fs/cgroup/cgroup.controllers"), info))
    root = Path(str((info or {}).get("DockerRootDir") or "/var/lib/docker"))
    existing = next(p for p in (root, *root.parents) if p.exists())
    checks.append(image_disk_check(root, shutil.disk_usage(existing).free, gpu_host))
    if gpu_host:
        engine_kind = engine_name(version) if version else None
        runtimes = list((info or {}).get("Runtimes") or {})
        hook = shutil.which(NVIDIA_HOOK)
        checks.append(nvidia_container_check(engine_kind, runtimes, hook, _cdi_specs()))
    return checks
