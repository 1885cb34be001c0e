"""The agent's local ``/metrics``, with DCGM-exporter metric names so GPU dashboards work as is.

Per-GPU gauges carry dcgm-exporter's labels (``gpu``, ``UUID``, ``modelName``, ``Hostname``);
host gauges are ``tesai_agent_*``. A registry of its own keeps it apart from anything else in
the process.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tesai.protocol.v1 import HardwareSpec, Telemetry

GPU_LABELS = ("gpu", "UUID", "modelName", "Hostname")
MIB = 1024 * 1024


class AgentMetrics:
    """Gauges updated from each telemetry sample."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry

        def gpu_gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, GPU_LABELS, registry=r)

        self.util = gpu_gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).")
        self.fb_used = gpu_gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).")
        self.fb_free = gpu_gauge("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).")
        self.temp = gpu_gauge("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).")
        self.power = gpu_gauge("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).")
        self.xid = gpu_gauge("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.")
        self.ecc_dbe = gpu_gauge(
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors."
        )
        self.cpu = Gauge("tesai_agent_cpu_percent", "Host CPU utilisation (in %).", registry=r)
        self.mem_used = Gauge(
            "tesai_agent_memory_used_bytes", "Host memory in use (bytes).", registry=r
        )
        self.mem_total = Gauge("tesai_agent_memory_total_bytes", "Host memory (bytes).", registry=r)
        self.hostname = socket.gethostname()
        self.models: dict[int, str] = {}

    def set_hardware(self, hardware: HardwareSpec) -> None:
        """Remember the GPU model names for the ``modelName`` label."""
        self.hostname = hardware.hostname
        self.models = {g.index: g.model for g in hardware.gpus}

    def update(self, telemetry: Telemetry, last_xid: dict[int, int] | None = None) -> None:
        """Set every gauge from one sample."""
        self.cpu.set(telemetry.cpu_percent)
        self.mem_used.set(telemetry.mem_used_bytes)
        self.mem_total.set(telemetry.mem_total_bytes)
        for g in telemetry.gpus:
            labels = (str(g.index), g.uuid, self.models.get(g.index, "unknown"), self.hostname)
            if g.utilization_pct is not None:
                self.util.labels(*labels).set(g.utilization_pct)
            if g.memory_used_bytes is not None:
                self.fb_used.labels(*labels).set(g.memory_used_bytes / MIB)
                if g.memory_total_bytes is not None:
                    free = max(g.memory_total_bytes - g.memory_used_bytes, 0)
                    self.fb_free.labels(*labels).set(free / MIB)
            if g.temperature_c is not None:
                self.temp.labels(*labels).set(g.temperature_c)
            if g.power_w is not None:
                self.power.labels(*labels).set(g.power_w)
            if g.ecc_errors is not None:
                self.ecc_dbe.labels(*labels).set(g.ecc_errors)
            # dcgm-exporter reports the last Xid's code (0 when none).
            self.xid.labels(*labels).set((last_xid or {}).get(g.index, 0))


class MetricsServer:
    """``/metrics`` over HTTP on its own thread; ``port`` is the one actually bound."""

    def __init__(self, metrics: AgentMetrics, port: int, addr: str = "0.0.0.0") -> None:
        server: Any
        server, thread = start_http_server(port, addr=addr, registry=metrics.registry)
        self._server = server
        self._thread: threading.Thread = thread
        self.port: int = int(server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
