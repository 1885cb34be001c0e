"""Telemetry: per-GPU utilisation, memory, temperature, power, ECC and Xid errors; host CPU/RAM.

``read_nvml_telemetry`` takes any NVML-like object (pynvml function names) so it is tested on
recorded values; ``Sampler`` keeps NVML open between samples and counts Xid events.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
from typing import Any

import psutil

from tesai.agent.probe import (
    MIB,
    NvmlUnavailable,
    load_nvml,
    nvml_init,
    run_nvidia_smi,
    smi_cell,
    smi_number,
)
from tesai.protocol.v1 import MAX_GPUS, GpuTelemetry, NetworkProbe, Telemetry

log = logging.getLogger(__name__)

_NVML_TEMPERATURE_GPU = 0
_NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
_NVML_VOLATILE_ECC = 0
_NVML_EVENT_TYPE_XID_CRITICAL_ERROR = 0x0000000000000008


def _opt(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:
        return None


def read_nvml_telemetry(nvml: Any, xid_counts: dict[int, int] | None = None) -> list[GpuTelemetry]:
    """One telemetry sample per GPU through an initialised NVML-like module."""
    temp_sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", _NVML_TEMPERATURE_GPU)
    uncorrected = getattr(
        nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", _NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    )
    volatile = getattr(nvml, "NVML_VOLATILE_ECC", _NVML_VOLATILE_ECC)
    count = _opt(nvml.nvmlDeviceGetCount) or 0
    out: list[GpuTelemetry] = []
    for index in range(min(int(count), MAX_GPUS)):
        handle = _opt(nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            continue
        uuid = _opt(nvml.nvmlDeviceGetUUID, handle)
        util = _opt(nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = _opt(nvml.nvmlDeviceGetMemoryInfo, handle)
        temp = _opt(nvml.nvmlDeviceGetTemperature, handle, temp_sensor)
        power = _opt(nvml.nvmlDeviceGetPowerUsage, handle)
        ecc = _opt(nvml.nvmlDeviceGetTotalEccErrors, handle, uncorrected, volatile)
        if isinstance(uuid, bytes):
            uuid = uuid.decode()
        out.append(
            GpuTelemetry(
                index=index,
                uuid=str(uuid) if uuid is not None else f"GPU-unknown-{index}",
                utilization_pct=float(util.gpu) if util is not None else None,
                memory_used_bytes=int(memory.used) if memory is not None else None,
                memory_total_bytes=int(memory.total) if memory is not None else None,
                temperature_c=float(temp) if temp is not None else None,
                power_w=power / 1000.0 if power is not None else None,
                ecc_errors=int(ecc) if ecc is not None else None,
                xid_errors=(xid_counts or {}).get(index, 0),
            )
        )
    return out


SMI_TELEMETRY_FIELDS = (
    "index",
    "uuid",
    "utilization.gpu",
    "memory.used",
    "memory.total",
    "temperature.gpu",
    "power.draw",
    "ecc.errors.uncorrected.volatile.total",
)


def parse_nvidia_smi_telemetry(
    text: str, fields: tuple[str, ...] = SMI_TELEMETRY_FIELDS
) -> list[GpuTelemetry]:
    """Telemetry from ``nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits``."""
    out: list[GpuTelemetry] = []
    for row in csv.reader(io.StringIO(text)):
        cells = dict(zip(fields, (smi_cell(c) for c in row), strict=False))
        if not (cells.get("index") or "").isdigit():
            continue
        used = smi_number(cells.get("memory.used"))
        total = smi_number(cells.get("memory.total"))
        util = smi_number(cells.get("utilization.gpu"))
        temp = smi_number(cells.get("temperature.gpu"))
        power = smi_number(cells.get("power.draw"))
        ecc = smi_number(cells.get("ecc.errors.uncorrected.volatile.total"))
        out.append(
            GpuTelemetry(
                index=int(cells["index"] or 0),
                uuid=cells.get("uuid") or f"GPU-unknown-{cells['index']}",
                utilization_pct=util,
                memory_used_bytes=int(used * MIB) if used is not None else None,
                memory_total_bytes=int(total * MIB) if total is not None else None,
                temperature_c=temp,
                power_w=power,
                ecc_errors=int(ecc) if ecc is not None else None,
                xid_errors=None,
            )
        )
    return out[:MAX_GPUS]


class Sampler:
    """Takes telemetry samples; keeps NVML initialised and counts Xid errors between samples."""

    def __init__(self, nvml: Any | None = None, use_nvidia_smi: bool = True) -> None:
        self._nvml: Any = nvml if nvml is not None else load_nvml()
        self._nvml_ok = False
        self._use_smi = use_nvidia_smi
        self._events: Any = None
        self.xid_counts: dict[int, int] = {}
        self.last_xid: dict[int, int] = {}
        if self._nvml is not None:
            try:
                nvml_init(self._nvml)
                self._nvml_ok = True
                self._register_xid_events()
            except NvmlUnavailable as exc:
                log.info("NVML unavailable for telemetry: %s", exc.reason)
        psutil.cpu_percent(interval=None)  # the first call only primes the counter

    def _register_xid_events(self) -> None:
        nvml = self._nvml
        try:
            self._events = nvml.nvmlEventSetCreate()
            kind = getattr(
                nvml, "nvmlEventTypeXidCriticalError", _NVML_EVENT_TYPE_XID_CRITICAL_ERROR
            )
            for index in range(int(nvml.nvmlDeviceGetCount())):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                with contextlib.suppress(Exception):
                    nvml.nvmlDeviceRegisterEvents(handle, kind, self._events)
        except Exception:
            self._events = None

    def _drain_xid_events(self) -> None:
        if self._events is None:
            return
        nvml = self._nvml
        uuid_to_index: dict[str, int] = {}
        with contextlib.suppress(Exception):
            for index in range(int(nvml.nvmlDeviceGetCount())):
                uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(index))
                uuid_to_index[uuid.decode() if isinstance(uuid, bytes) else str(uuid)] = index
        wait = getattr(nvml, "nvmlEventSetWait_v2", None) or nvml.nvmlEventSetWait
        for _ in range(1000):
            try:
                event = wait(self._events, 0)
            except Exception:
                return  # NVML_ERROR_TIMEOUT: nothing pending
            uuid = _opt(nvml.nvmlDeviceGetUUID, event.device)
            key = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            index = uuid_to_index.get(key, 0)
            self.xid_counts[index] = self.xid_counts.get(index, 0) + 1
            self.last_xid[index] = int(getattr(event, "eventData", 0) or 0)

    def gpus(self) -> list[GpuTelemetry]:
        """Per-GPU telemetry (empty on a CPU device)."""
        if self._nvml_ok:
            self._drain_xid_events()
            return read_nvml_telemetry(self._nvml, self.xid_counts)
        if self._use_smi:
            text = run_nvidia_smi(
                [f"--query-gpu={','.join(SMI_TELEMETRY_FIELDS)}", "--format=csv,noheader,nounits"],
                timeout=5.0,
            )
            if text:
                return parse_nvidia_smi_telemetry(text)
            self._use_smi = text is not None  # stop asking a host without nvidia-smi
        return []

    def sample(self, net: NetworkProbe | None = None) -> Telemetry:
        """Host and GPU telemetry now."""
        mem = psutil.virtual_memory()
        return Telemetry(
            cpu_percent=min(max(psutil.cpu_percent(interval=None), 0.0), 100.0),
            mem_used_bytes=int(mem.total - mem.available),
            mem_total_bytes=int(mem.total),
            gpus=self.gpus(),
            net=net,
        )

    def close(self) -> None:
        """Release NVML."""
        if self._nvml_ok:
            with contextlib.suppress(Exception):
                if self._events is not None:
                    self._nvml.nvmlEventSetFree(self._events)
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml_ok = False
