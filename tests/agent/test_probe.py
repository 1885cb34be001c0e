"""The hardware probe: this host (no NVIDIA GPU) and recorded NVML / nvidia-smi answers."""

from __future__ import annotations

import pytest

from tesai.agent import probe
from tesai.agent.probe import parse_nvidia_smi_csv, probe_gpus, probe_hardware, read_nvml
from tesai.agent.telemetry import Sampler, parse_nvidia_smi_telemetry, read_nvml_telemetry
from tesai.protocol.v1 import HardwareSpec
from tests.agent.nvml_recordings import (
    A100_MIG_HOST,
    H100_HOST,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    RecordedNvml,
)


def test_probe_on_this_host_is_a_valid_cpu_device(tmp_path) -> None:
    spec = probe_hardware(tmp_path)
    assert spec.gpus == []
    assert spec.probe_status == "ok"
    assert spec.probe_reason == "nvml_unavailable"
    assert spec.cpu_cores >= 1
    assert spec.cpu_threads >= spec.cpu_cores
    assert spec.ram_bytes > 256 * 1024 * 1024
    assert spec.disk_total_bytes >= spec.disk_free_bytes > 0
    assert spec.hostname
    assert spec.os
    assert spec.arch
    assert spec.cpu_model
    # What the agent sends at join survives the wire.
    assert HardwareSpec.model_validate_json(spec.model_dump_json()) == spec


def test_nvml_recording_of_two_h100s() -> None:
    nvml = RecordedNvml(H100_HOST)
    nvml.nvmlInit()
    reading = read_nvml(nvml)
    assert reading.driver_version == "550.54.15"
    assert reading.cuda_version == "12.4"
    assert [g.index for g in reading.gpus] == [0, 1]
    g = reading.gpus[0]
    assert g.model == "NVIDIA H100 80GB HBM3"
    assert g.uuid == "GPU-5b3a7c1e-9d2f-4e8b-a1c6-0f7e2d9b4a31"
    assert g.memory_total_bytes == 85520809984
    assert g.compute_capability == "9.0"
    assert (g.pcie_gen, g.pcie_width) == (5, 16)
    assert g.mig_enabled is False
    assert g.ecc_enabled is True
    assert g.power_limit_w == 700.0


def test_nvml_recording_with_unsupported_reads_keeps_the_rest() -> None:
    reading = read_nvml(RecordedNvml(A100_MIG_HOST))
    (g,) = reading.gpus
    assert g.model == "NVIDIA A100-SXM4-40GB"
    assert g.uuid == "GPU-0a1b2c3d-0000-1111-2222-333344445555"
    assert g.mig_enabled is True
    assert g.ecc_enabled is None
    assert g.compute_capability == "8.0"
    assert reading.cuda_version == "12.2"
    assert any(e.startswith("ecc") for e in reading.errors)


def test_probe_gpus_through_recorded_nvml_is_ok() -> None:
    reading, status, reason, _ = probe_gpus(RecordedNvml(H100_HOST))
    assert (status, reason) == ("ok", None)
    assert len(reading.gpus) == 2


def test_driver_mismatch_is_a_reported_error_not_a_crash(tmp_path) -> None:
    nvml = RecordedNvml(H100_HOST, init_error=NVML_ERROR_LIB_RM_VERSION_MISMATCH)
    spec = probe_hardware(tmp_path, nvml=nvml)
    assert spec.probe_status == "error"
    assert spec.probe_reason == "driver_mismatch"
    assert spec.gpus == []


def test_missing_nvml_library_is_a_cpu_device(tmp_path) -> None:
    nvml = RecordedNvml(H100_HOST, init_error=NVML_ERROR_LIBRARY_NOT_FOUND)
    spec = probe_hardware(tmp_path, nvml=nvml)
    assert (spec.probe_status, spec.probe_reason) == ("ok", "nvml_unavailable")


def test_nvidia_smi_takes_over_when_nvml_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        probe,
        "run_nvidia_smi",
        lambda args, timeout=10.0: H100_SMI_CSV if args and args[0].startswith("--query") else "",
    )
    nvml = RecordedNvml(H100_HOST, init_error=NVML_ERROR_LIB_RM_VERSION_MISMATCH)
    reading, status, reason, detail = probe_gpus(nvml)
    assert (status, reason) == ("degraded", "nvidia_smi_fallback")
    assert detail is not None
    assert detail.startswith("driver_mismatch")
    assert len(reading.gpus) == 2


def test_telemetry_from_recorded_nvml() -> None:
    gpus = read_nvml_telemetry(RecordedNvml(H100_HOST), {1: 3})
    assert gpus[0].utilization_pct == 87.0
    assert gpus[0].memory_used_bytes == 4194304 * 130
    assert gpus[0].temperature_c == 61.0
    assert gpus[0].power_w == pytest.approx(512.345)
    assert (gpus[0].ecc_errors, gpus[0].xid_errors) == (0, 0)
    assert (gpus[1].ecc_errors, gpus[1].xid_errors) == (2, 3)
    (mig,) = read_nvml_telemetry(RecordedNvml(A100_MIG_HOST))
    assert mig.utilization_pct is None
    assert mig.ecc_errors is None
    assert mig.temperature_c == 45.0


def test_host_telemetry_on_this_machine() -> None:
    sampler = Sampler()
    try:
        t = sampler.sample()
    finally:
        sampler.close()
    assert 0 <= t.cpu_percent <= 100
    assert 0 < t.mem_used_bytes < t.mem_total_bytes
    assert t.gpus == []


# Output of `nvidia-smi --query-gpu=<SMI_SPEC_FIELDS> --format=csv,noheader,nounits`.
H100_SMI_CSV = "".join(
    f"{i}, {uuid}, NVIDIA H100 80GB HBM3, 81559, 550.54.15, 9.0, 5, 16, Disabled, Enabled, 700.00\n"
    for i, uuid in enumerate(
        ["GPU-5b3a7c1e-9d2f-4e8b-a1c6-0f7e2d9b4a31", "GPU-c2d81f44-27aa-4b0e-9e55-6a3f1b8d7c02"]
    )
)

# The same query with `--format=csv` (header and units) on a consumer card.
RTX_SMI_CSV_WITH_HEADER = (
    "index, uuid, name, memory.total [MiB], driver_version, compute_cap, pcie.link.gen.current, "
    "pcie.link.width.current, mig.mode.current, ecc.mode.current, power.limit [W]\n"
    "0, GPU-11112222-3333-4444-5555-666677778888, NVIDIA GeForce RTX 4090, 24564 MiB, "
    "550.54.15, 8.9, 4, 16, [N/A], [N/A], 450.00 W\n"
)


def test_nvidia_smi_csv_parser() -> None:
    gpus = parse_nvidia_smi_csv(H100_SMI_CSV)
    assert len(gpus) == 2
    g = gpus[1]
    assert g.index == 1
    assert g.uuid == "GPU-c2d81f44-27aa-4b0e-9e55-6a3f1b8d7c02"
    assert g.model == "NVIDIA H100 80GB HBM3"
    assert g.memory_total_bytes == 81559 * 1024 * 1024
    assert g.compute_capability == "9.0"
    assert (g.pcie_gen, g.pcie_width) == (5, 16)
    assert (g.mig_enabled, g.ecc_enabled) == (False, True)
    assert g.power_limit_w == 700.0
    assert probe.parse_nvidia_smi_driver(H100_SMI_CSV) == "550.54.15"


def test_nvidia_smi_csv_parser_with_header_units_and_na() -> None:
    (g,) = parse_nvidia_smi_csv(RTX_SMI_CSV_WITH_HEADER)
    assert g.model == "NVIDIA GeForce RTX 4090"
    assert g.memory_total_bytes == 24564 * 1024 * 1024
    assert g.mig_enabled is None
    assert g.ecc_enabled is None
    assert g.power_limit_w == 450.0


def test_nvidia_smi_cuda_version_and_telemetry() -> None:
    header = "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4     |"
    assert probe.parse_nvidia_smi_cuda(header) == "12.4"
    text = (
        "0, GPU-aa, 87, 520, 81559, 61, 512.34, 0\n1, GPU-bb, [N/A], 0, 81559, 33, 71.00, [N/A]\n"
    )
    a, b = parse_nvidia_smi_telemetry(text)
    assert a.utilization_pct == 87.0
    assert a.memory_used_bytes == 520 * 1024 * 1024
    assert a.power_w == pytest.approx(512.34)
    assert a.ecc_errors == 0
    assert b.utilization_pct is None
    assert b.ecc_errors is None
