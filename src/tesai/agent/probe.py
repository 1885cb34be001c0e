"""Hardware probe: what this host has, as a ``HardwareSpec``.

GPUs come from NVML (nvidia-ml-py), with ``nvidia-smi --query-gpu`` as fallback. Detection
problems never raise: they end up in ``probe_status``/``probe_reason`` with a reason code, and a
host without GPUs is a valid CPU device. The NVML reading goes through ``read_nvml``, which takes
any object exposing the pynvml function names, so it is tested on recorded answers.
"""

from __future__ import annotations

import contextlib
import csv
import io
import ipaddress
import os
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from tesai.protocol.v1 import (
    MAX_ADDRESSES,
    MAX_GPUS,
    MAX_STR,
    REASON_DRIVER_MISMATCH,
    REASON_NVIDIA_SMI_FALLBACK,
    REASON_NVML_ERROR,
    REASON_NVML_UNAVAILABLE,
    GpuSpec,
    HardwareSpec,
    ProbeStatus,
)

T = TypeVar("T")

MIB = 1024 * 1024

# pynvml error values (stable NVML API constants), used when the module does not define them.
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_LIBRARY_NOT_FOUND = 12
_NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
_NVML_ERROR_FUNCTION_NOT_FOUND = 13


class NvmlUnavailable(Exception):
    """NVML could not be initialised; ``reason`` is a protocol reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class NvmlReading:
    """What NVML said about the host's GPUs."""

    gpus: list[GpuSpec] = field(default_factory=list)
    driver_version: str | None = None
    cuda_version: str | None = None
    errors: list[str] = field(default_factory=list)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value)[:MAX_STR]


def _try(errors: list[str], what: str, fn: Callable[..., T], *args: Any) -> T | None:
    """Call one NVML function; a failure (often NOT_SUPPORTED) becomes None, noted in errors."""
    try:
        return fn(*args)
    except Exception as exc:
        errors.append(f"{what}: {exc}")
        return None


def classify_nvml_init_error(nvml: Any, exc: BaseException) -> str:
    """The reason code for an ``nvmlInit`` failure."""
    value = getattr(exc, "value", None)
    mismatch = getattr(
        nvml, "NVML_ERROR_LIB_RM_VERSION_MISMATCH", _NVML_ERROR_LIB_RM_VERSION_MISMATCH
    )
    missing = {
        getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", _NVML_ERROR_LIBRARY_NOT_FOUND),
        getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", _NVML_ERROR_DRIVER_NOT_LOADED),
        getattr(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", _NVML_ERROR_FUNCTION_NOT_FOUND),
    }
    if value == mismatch:
        return REASON_DRIVER_MISMATCH
    if value in missing:
        return REASON_NVML_UNAVAILABLE
    return REASON_NVML_ERROR


def nvml_init(nvml: Any) -> None:
    """Initialise NVML; raises ``NvmlUnavailable`` with a reason code."""
    try:
        nvml.nvmlInit()
    except Exception as exc:
        raise NvmlUnavailable(classify_nvml_init_error(nvml, exc), str(exc)[:MAX_STR]) from exc


def _cuda_version(raw: int | None) -> str | None:
    # NVML reports e.g. 12040 for CUDA 12.4.
    if not raw:
        return None
    return f"{raw // 1000}.{(raw % 1000) // 10}"


def _mode(value: Any) -> bool | None:
    """NVML (current, pending) mode pairs → whether the current mode is enabled."""
    if value is None:
        return None
    current = value[0] if isinstance(value, tuple | list) else value
    return bool(current)


def read_nvml(nvml: Any) -> NvmlReading:
    """Read every GPU's spec through an initialised NVML-like module (pynvml function names)."""
    out = NvmlReading()
    errs = out.errors
    driver = _try(errs, "driver", nvml.nvmlSystemGetDriverVersion)
    out.driver_version = _text(driver) if driver is not None else None
    out.cuda_version = _cuda_version(_try(errs, "cuda", nvml.nvmlSystemGetCudaDriverVersion))
    count = _try(errs, "count", nvml.nvmlDeviceGetCount) or 0
    for index in range(min(int(count), MAX_GPUS)):
        handle = _try(errs, f"gpu{index}", nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            continue
        name = _try(errs, "name", nvml.nvmlDeviceGetName, handle)
        uuid = _try(errs, "uuid", nvml.nvmlDeviceGetUUID, handle)
        memory = _try(errs, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        cc = _try(errs, "cc", nvml.nvmlDeviceGetCudaComputeCapability, handle)
        gen = _try(errs, "pcie_gen", nvml.nvmlDeviceGetCurrPcieLinkGeneration, handle)
        width = _try(errs, "pcie_width", nvml.nvmlDeviceGetCurrPcieLinkWidth, handle)
        mig = _try(errs, "mig", nvml.nvmlDeviceGetMigMode, handle)
        ecc = _try(errs, "ecc", nvml.nvmlDeviceGetEccMode, handle)
        power = _try(errs, "power_limit", nvml.nvmlDeviceGetPowerManagementLimit, handle)
        out.gpus.append(
            GpuSpec(
                index=index,
                uuid=_text(uuid) if uuid is not None else f"GPU-unknown-{index}",
                model=_text(name) if name is not None else "unknown",
                memory_total_bytes=int(memory.total) if memory is not None else 0,
                compute_capability=f"{cc[0]}.{cc[1]}" if cc is not None else None,
                pcie_gen=int(gen) if gen is not None else None,
                pcie_width=int(width) if width is not None else None,
                mig_enabled=_mode(mig),
                ecc_enabled=_mode(ecc),
                power_limit_w=power / 1000.0 if power is not None else None,
            )
        )
    return out


# --- nvidia-smi fallback -------------------------------------------------------------------------

SMI_SPEC_FIELDS = (
    "index",
    "uuid",
    "name",
    "memory.total",
    "driver_version",
    "compute_cap",
    "pcie.link.gen.current",
    "pcie.link.width.current",
    "mig.mode.current",
    "ecc.mode.current",
    "power.limit",
)
"""Fields asked of ``nvidia-smi --query-gpu`` (``--format=csv,noheader,nounits``)."""
SMI_BASIC_FIELDS = ("index", "uuid", "name", "memory.total", "driver_version")
"""Fields every driver knows; asked when an old ``nvidia-smi`` rejects the full list."""

_MISSING = {"", "n/a", "[n/a]", "[not supported]", "not supported", "[unknown error]"}


def smi_cell(value: str) -> str | None:
    value = value.strip()
    return None if value.lower() in _MISSING else value


def smi_number(value: str | None) -> float | None:
    if value is None:
        return None
    match = re.search(r"-?\d+(\.\d+)?", value)
    return float(match.group(0)) if match else None


def _enabled(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() == "enabled"


def parse_nvidia_smi_csv(text: str, fields: tuple[str, ...] = SMI_SPEC_FIELDS) -> list[GpuSpec]:
    """GPU specs from ``nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`` output.

    A header line (``--format=csv`` without ``noheader``) is skipped; memory is in MiB; units
    left in place (``80 MiB``, ``700.00 W``) are tolerated.
    """
    gpus: list[GpuSpec] = []
    for row in csv.reader(io.StringIO(text)):
        if not row or not any(c.strip() for c in row):
            continue
        cells = dict(zip(fields, (smi_cell(c) for c in row), strict=False))
        if not (cells.get("index") or "").isdigit():
            continue  # header line
        memory = smi_number(cells.get("memory.total"))
        gen = smi_number(cells.get("pcie.link.gen.current"))
        width = smi_number(cells.get("pcie.link.width.current"))
        gpus.append(
            GpuSpec(
                index=int(cells["index"] or 0),
                uuid=(cells.get("uuid") or f"GPU-unknown-{cells['index']}")[:MAX_STR],
                model=(cells.get("name") or "unknown")[:MAX_STR],
                memory_total_bytes=int(memory * MIB) if memory is not None else 0,
                compute_capability=cells.get("compute_cap"),
                pcie_gen=int(gen) if gen is not None else None,
                pcie_width=int(width) if width is not None else None,
                mig_enabled=_enabled(cells.get("mig.mode.current")),
                ecc_enabled=_enabled(cells.get("ecc.mode.current")),
                power_limit_w=smi_number(cells.get("power.limit")),
            )
        )
        if len(gpus) >= MAX_GPUS:
            break
    return gpus


def parse_nvidia_smi_driver(text: str, fields: tuple[str, ...] = SMI_SPEC_FIELDS) -> str | None:
    """The driver version from the same CSV output (first GPU)."""
    if "driver_version" not in fields:
        return None
    pos = fields.index("driver_version")
    for row in csv.reader(io.StringIO(text)):
        if len(row) > pos and (row[0].strip().isdigit()):
            return smi_cell(row[pos])
    return None


def parse_nvidia_smi_cuda(text: str) -> str | None:
    """The CUDA version from plain ``nvidia-smi`` output (``CUDA Version: 12.4``)."""
    match = re.search(r"CUDA Version:\s*([\d.]+)", text)
    return match.group(1) if match else None


def run_nvidia_smi(args: list[str], timeout: float = 10.0) -> str | None:
    """Run ``nvidia-smi`` with ``args``; its stdout, or None when missing or failing."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def probe_nvidia_smi() -> NvmlReading | None:
    """The GPU list from ``nvidia-smi``, or None when it is missing or fails."""
    fields: tuple[str, ...] = SMI_SPEC_FIELDS
    text = run_nvidia_smi([f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
    if text is None:
        fields = SMI_BASIC_FIELDS
        text = run_nvidia_smi([f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
    if text is None:
        return None
    plain = run_nvidia_smi([]) or ""
    return NvmlReading(
        gpus=parse_nvidia_smi_csv(text, fields),
        driver_version=parse_nvidia_smi_driver(text, fields),
        cuda_version=parse_nvidia_smi_cuda(plain),
    )


# --- host ----------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()[:MAX_STR]
    return (platform.processor() or platform.machine() or "unknown")[:MAX_STR]


def os_description() -> str:
    """``Linux 6.8.0 (Ubuntu 24.04.1 LTS)``-like text."""
    base = f"{platform.system()} {platform.release()}"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                pretty = line.split("=", 1)[1].strip().strip('"')
                return f"{base} ({pretty})"[:MAX_STR]
    return base[:MAX_STR]


def host_addresses() -> list[str]:
    """Non-loopback, non-link-local IP addresses of this host."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        for addrs in psutil.net_if_addrs().values():
            for addr in addrs:
                if addr.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                try:
                    ip = ipaddress.ip_address(addr.address.split("%", 1)[0])
                except ValueError:
                    continue
                if ip.is_loopback or ip.is_link_local or str(ip) in found:
                    continue
                found.append(str(ip))
    return found[:MAX_ADDRESSES]


def _disk_path(path: Path | None) -> str:
    candidate = path
    while candidate is not None and not candidate.exists():
        candidate = candidate.parent if candidate.parent != candidate else None
    return str(candidate) if candidate is not None else os.path.abspath(os.sep)


def load_nvml() -> Any | None:
    """The pynvml module, or None when nvidia-ml-py is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def probe_gpus(nvml: Any | None = None) -> tuple[NvmlReading, ProbeStatus, str | None, str | None]:
    """GPUs by NVML, else ``nvidia-smi``; with the probe status, reason code and detail."""
    nvml = nvml if nvml is not None else load_nvml()
    if nvml is None:
        reason, detail = REASON_NVML_UNAVAILABLE, "nvidia-ml-py is not installed"
    else:
        try:
            nvml_init(nvml)
        except NvmlUnavailable as exc:
            reason, detail = exc.reason, exc.detail
        else:
            try:
                reading = read_nvml(nvml)
            finally:
                with contextlib.suppress(Exception):
                    nvml.nvmlShutdown()
            if reading.errors and not reading.gpus:
                return reading, "error", REASON_NVML_ERROR, "; ".join(reading.errors)[:MAX_STR]
            return reading, "ok", None, None
    smi = probe_nvidia_smi()
    if smi is not None and smi.gpus:
        return smi, "degraded", REASON_NVIDIA_SMI_FALLBACK, f"{reason}: {detail}"[:MAX_STR]
    if reason == REASON_NVML_UNAVAILABLE:
        # No NVIDIA driver and no nvidia-smi: a plain CPU device.
        return NvmlReading(), "ok", reason, detail
    return NvmlReading(), "error", reason, detail


def probe_hardware(disk_path: Path | None = None, nvml: Any | None = None) -> HardwareSpec:
    """Everything the agent reports at join. Never raises for detection problems."""
    reading, status, reason, detail = probe_gpus(nvml)
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    try:
        disk = psutil.disk_usage(_disk_path(disk_path))
        disk_total, disk_free = int(disk.total), int(disk.free)
    except OSError:
        disk_total = disk_free = 0
    return HardwareSpec(
        hostname=socket.gethostname()[:MAX_STR],
        os=os_description(),
        arch=platform.machine()[:MAX_STR] or "unknown",
        cpu_model=cpu_model(),
        cpu_cores=int(physical),
        cpu_threads=int(logical),
        ram_bytes=int(psutil.virtual_memory().total),
        disk_total_bytes=disk_total,
        disk_free_bytes=disk_free,
        addresses=host_addresses(),
        gpus=reading.gpus,
        driver_version=reading.driver_version,
        cuda_version=reading.cuda_version,
        probe_status=status,
        probe_reason=reason,
        probe_detail=detail,
    )
