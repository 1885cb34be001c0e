"""The agent's local ``/metrics``, with DCGM-exporter metric names so GPU dashboards work as is.

Per-GPU gauges carry dcgm-exporter's labels (``gpu``, ``UUID``, ``modelName``, ``Hostname``);
host gauges are ``tesai_agent_*``. A registry of its own keeps it apart from anything else in
the process.

When NVIDIA's ``dcgm-exporter`` runs on the host (``--dcgm-exporter-url``), ``/metrics``
relays its text instead of our GPU gauges — it knows every DCGM field, we know a few — plus
our host gauges and ``tesai_agent_dcgm_exporter_up 1``. Each scrape fetches it afresh with a
short timeout; when it does not answer, our own GPU gauges are served with
``tesai_agent_dcgm_exporter_up 0``, so a scrape never fails because the exporter did.
"""

from __future__ import annotations

import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.metrics_core import Metric

from tesai.protocol.v1 import HardwareSpec, Telemetry

GPU_LABELS = ("gpu", "UUID", "modelName", "Hostname")
MIB = 1024 * 1024
DCGM_EXPORTER_DEFAULT_URL = "http://127.0.0.1:9400/metrics"
"""Where dcgm-exporter listens by default; ``--dcgm-exporter-url auto`` looks there."""
RELAY_TIMEOUT_S = 2.0
MAX_RELAY_BYTES = 16 * 1024 * 1024
HOST_PREFIX = "tesai_agent_"

log = logging.getLogger("tesai.agent")


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
        self._relay_up: Gauge | None = None

    def enable_relay(self) -> None:
        """Add ``tesai_agent_dcgm_exporter_up`` (only agents that relay an exporter have it)."""
        if self._relay_up is None:
            self._relay_up = Gauge(
                "tesai_agent_dcgm_exporter_up",
                "1 when the relayed dcgm-exporter answered the last scrape; 0 when it did not"
                " and the agent's own GPU metrics were served instead.",
                registry=self.registry,
            )

    @property
    def relay_up(self) -> Gauge:
        self.enable_relay()
        assert self._relay_up is not None
        return self._relay_up

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


class _HostOnly:
    """The host gauges of a registry (``tesai_agent_*``), for use beside relayed GPU metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if family.name.startswith(HOST_PREFIX):
                yield family


class DcgmRelay:
    """Fetches a local dcgm-exporter's ``/metrics`` text (Prometheus exposition format)."""

    def __init__(self, url: str, timeout_s: float = RELAY_TIMEOUT_S) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"dcgm-exporter URL must be http(s)://…, not {url!r}")
        self.url = url
        self.timeout_s = timeout_s
        self._warned = False

    def fetch(self) -> bytes | None:
        """The exporter's text, or None when it does not answer with DCGM metrics."""
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:  # noqa: S310
                body: bytes = response.read(MAX_RELAY_BYTES + 1)
                ok = response.status == 200 and len(body) <= MAX_RELAY_BYTES
        except (OSError, ValueError, urllib.error.URLError) as exc:
            self._warn(f"dcgm-exporter at {self.url} did not answer ({exc})")
            return None
        if not ok or b"DCGM_FI_" not in body:
            self._warn(f"dcgm-exporter at {self.url} answered without DCGM metrics")
            return None
        if self._warned:
            log.info("dcgm-exporter at %s answers again; relaying it", self.url)
            self._warned = False
        return body

    def _warn(self, message: str) -> None:
        if not self._warned:  # once per outage, not once per scrape
            log.warning("%s; serving the agent's own GPU metrics", message)
            self._warned = True


def find_dcgm_exporter(setting: str | None) -> DcgmRelay | None:
    """The relay for ``--dcgm-exporter-url``: None when unset; ``auto`` relays the default
    address only if an exporter answers there now; any other value is used as the URL."""
    if not setting:
        return None
    if setting.strip().lower() != "auto":
        try:
            return DcgmRelay(setting.strip())
        except ValueError as exc:
            log.warning("not relaying dcgm-exporter: %s", exc)
            return None
    relay = DcgmRelay(DCGM_EXPORTER_DEFAULT_URL, timeout_s=1.0)
    relay._warned = True  # probing: a missing exporter is the normal case, not a warning
    if relay.fetch() is None:
        return None
    log.info("dcgm-exporter found at %s; relaying its metrics", DCGM_EXPORTER_DEFAULT_URL)
    return DcgmRelay(DCGM_EXPORTER_DEFAULT_URL)


def render(metrics: AgentMetrics, relay: DcgmRelay | None = None) -> bytes:
    """The ``/metrics`` body: the exporter's text plus host gauges, or all our own gauges."""
    if relay is None:
        return generate_latest(metrics.registry)
    text = relay.fetch()
    metrics.relay_up.set(0 if text is None else 1)
    if text is None:
        return generate_latest(metrics.registry)
    return text.rstrip(b"\n") + b"\n" + generate_latest(_HostOnly(metrics.registry))  # type: ignore[arg-type]


class MetricsServer:
    """``/metrics`` over HTTP on its own thread; ``port`` is the one actually bound."""

    def __init__(
        self,
        metrics: AgentMetrics,
        port: int,
        addr: str = "0.0.0.0",
        relay: DcgmRelay | None = None,
    ) -> None:
        if relay is not None:
            metrics.enable_relay()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = render(metrics, relay)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per scrape is noise

        self._server = ThreadingHTTPServer((addr, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="tesai-agent-metrics", daemon=True
        )
        self._thread.start()
        self.port: int = int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
