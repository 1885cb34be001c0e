"""With a dcgm-exporter on the host, the agent's /metrics relays it, and falls back to its own
GPU gauges (saying so) when the exporter stops answering.

The exporter is a stand-in HTTP server serving text in dcgm-exporter's format (a third-party
program, not one of ours); the agent's metrics server is the real one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tesai.agent.metrics import (
    AgentMetrics,
    DcgmRelay,
    MetricsServer,
    find_dcgm_exporter,
)
from tesai.protocol.v1 import GpuTelemetry, Telemetry

L = (
    'gpu="0",UUID="GPU-5fd4",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",'
    'Hostname="gpu-box-7",DCGM_FI_DRIVER_VERSION="550.54.15"'
)
EXPORTER_TEXT = f"""\
# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).
# TYPE DCGM_FI_DEV_SM_CLOCK gauge
DCGM_FI_DEV_SM_CLOCK{{{L}}} 1980
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{{{L}}} 93
# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{L}}} 84301723944
"""


class Exporter:
    """A tiny HTTP server answering /metrics with ``text`` (or 503 when ``down``)."""

    def __init__(self) -> None:
        self.text = EXPORTER_TEXT
        self.down = False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if owner.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = owner.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    e = Exporter()
    yield e
    e.close()


def own_metrics() -> AgentMetrics:
    metrics = AgentMetrics()
    metrics.update(
        Telemetry(
            cpu_percent=12.5,
            mem_used_bytes=1,
            mem_total_bytes=2,
            gpus=[GpuTelemetry(index=0, uuid="GPU-5fd4", utilization_pct=40)],
        )
    )
    return metrics


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_relays_the_exporter_and_falls_back_to_its_own_metrics_when_it_is_down(
    exporter: Exporter,
) -> None:
    metrics = own_metrics()
    server = MetricsServer(metrics, 0, "127.0.0.1", relay=DcgmRelay(exporter.url, timeout_s=1))
    try:
        # The exporter's text as it wrote it (every field, its labels), then our host gauges.
        body = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
        assert body.startswith(EXPORTER_TEXT)
        relayed = scrape(server.port)
        assert list(relayed["DCGM_FI_DEV_GPU_UTIL"].values()) == [93]
        [(labels, value)] = relayed["DCGM_FI_DEV_SM_CLOCK"].items()
        assert value == 1980
        assert ("DCGM_FI_DRIVER_VERSION", "550.54.15") in labels
        assert relayed["tesai_agent_cpu_percent"] == {(): 12.5}
        assert relayed["tesai_agent_dcgm_exporter_up"] == {(): 1.0}

        exporter.down = True
        fallback = scrape(server.port)
        assert "DCGM_FI_DEV_SM_CLOCK" not in fallback
        assert list(fallback["DCGM_FI_DEV_GPU_UTIL"].values()) == [40]  # the agent's own
        assert fallback["tesai_agent_dcgm_exporter_up"] == {(): 0.0}

        exporter.down = False
        assert scrape(server.port)["tesai_agent_dcgm_exporter_up"] == {(): 1.0}

        # An exporter that answers something else (a wrong URL) is not relayed either.
        exporter.text = "<html>not metrics</html>"
        assert list(scrape(server.port)["DCGM_FI_DEV_GPU_UTIL"].values()) == [40]
    finally:
        server.close()


def test_an_exporter_that_is_gone_costs_a_scrape_at_most_the_timeout(exporter: Exporter) -> None:
    url = exporter.url
    exporter.close()  # nothing listens there any more
    metrics = own_metrics()
    server = MetricsServer(metrics, 0, "127.0.0.1", relay=DcgmRelay(url, timeout_s=0.5))
    try:
        samples = scrape(server.port)
        assert samples["tesai_agent_dcgm_exporter_up"] == {(): 0.0}
        assert list(samples["DCGM_FI_DEV_GPU_UTIL"].values()) == [40]
    finally:
        server.close()


def test_choosing_the_exporter(exporter: Exporter) -> None:
    assert find_dcgm_exporter(None) is None
    relay = find_dcgm_exporter(exporter.url)
    assert relay is not None
    assert relay.url == exporter.url
    assert find_dcgm_exporter("file:///etc/passwd") is None  # only http(s)
    # Without a relay the endpoint has no exporter gauge at all.
    server = MetricsServer(own_metrics(), 0, "127.0.0.1")
    try:
        assert "tesai_agent_dcgm_exporter_up" not in scrape(server.port)
    finally:
        server.close()
