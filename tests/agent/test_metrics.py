"""The agent's local /metrics speaks dcgm-exporter's names and labels."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tesai.agent.metrics import AgentMetrics, MetricsServer
from tesai.protocol.v1 import GpuSpec, GpuTelemetry, HardwareSpec, Telemetry

GiB = 1 << 30


def test_dcgm_metrics_endpoint() -> None:
    metrics = AgentMetrics()
    metrics.set_hardware(
        HardwareSpec(
            hostname="gpu-box-7",
            os="Linux",
            arch="x86_64",
            cpu_model="EPYC",
            cpu_cores=64,
            cpu_threads=128,
            ram_bytes=512 * GiB,
            disk_total_bytes=1,
            disk_free_bytes=1,
            gpus=[
                GpuSpec(
                    index=0,
                    uuid="GPU-aaa",
                    model="NVIDIA H100 80GB HBM3",
                    memory_total_bytes=80 * GiB,
                )
            ],
        )
    )
    metrics.update(
        Telemetry(
            cpu_percent=12.5,
            mem_used_bytes=100 * GiB,
            mem_total_bytes=512 * GiB,
            gpus=[
                GpuTelemetry(
                    index=0,
                    uuid="GPU-aaa",
                    utilization_pct=87,
                    memory_used_bytes=20 * GiB,
                    memory_total_bytes=80 * GiB,
                    temperature_c=61,
                    power_w=512.5,
                    ecc_errors=2,
                    xid_errors=1,
                )
            ],
        ),
        last_xid={0: 79},
    )
    server = MetricsServer(metrics, 0, "127.0.0.1")
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    finally:
        server.close()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    labels = tuple(
        sorted(
            {
                "gpu": "0",
                "UUID": "GPU-aaa",
                "modelName": "NVIDIA H100 80GB HBM3",
                "Hostname": "gpu-box-7",
            }.items()
        )
    )
    assert samples[("DCGM_FI_DEV_GPU_UTIL", labels)] == 87
    assert samples[("DCGM_FI_DEV_FB_USED", labels)] == 20 * 1024  # MiB, like dcgm-exporter
    assert samples[("DCGM_FI_DEV_FB_FREE", labels)] == 60 * 1024
    assert samples[("DCGM_FI_DEV_GPU_TEMP", labels)] == 61
    assert samples[("DCGM_FI_DEV_POWER_USAGE", labels)] == 512.5
    assert samples[("DCGM_FI_DEV_XID_ERRORS", labels)] == 79  # the last Xid's code
    assert samples[("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", labels)] == 2
    assert samples[("tesai_agent_cpu_percent", ())] == 12.5
    assert samples[("tesai_agent_memory_total_bytes", ())] == 512 * GiB
