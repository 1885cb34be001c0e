"""Recorded NVML answers and a tiny stand-in exposing the pynvml function names over them.

The recordings hold NVML's answers in the types and units pynvml returns them (bytes, mW,
``(current, pending)`` mode pairs, CUDA 12.4 as 12040): a 2 × H100 SXM host, and an A100 with
MIG on where ECC and utilisation reads are NOT_SUPPORTED (and names come back as bytes, as
older pynvml releases did).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

GiB = 1 << 30

H100_HOST: dict[str, Any] = {
    "driver": "550.54.15",
    "cuda": 12040,
    "gpus": [
        {
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-5b3a7c1e-9d2f-4e8b-a1c6-0f7e2d9b4a31",
            "memory": {
                "total": 85520809984,
                "used": 4194304 * 130,
                "free": 85520809984 - 4194304 * 130,
            },
            "cc": (9, 0),
            "pcie_gen": 5,
            "pcie_width": 16,
            "mig": (0, 0),
            "ecc": (1, 1),
            "power_limit_mw": 700000,
            "util": {"gpu": 87, "memory": 41},
            "temp": 61,
            "power_mw": 512345,
            "ecc_dbe": 0,
        },
        {
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-c2d81f44-27aa-4b0e-9e55-6a3f1b8d7c02",
            "memory": {"total": 85520809984, "used": 0, "free": 85520809984},
            "cc": (9, 0),
            "pcie_gen": 5,
            "pcie_width": 16,
            "mig": (0, 0),
            "ecc": (1, 1),
            "power_limit_mw": 700000,
            "util": {"gpu": 0, "memory": 0},
            "temp": 33,
            "power_mw": 71000,
            "ecc_dbe": 2,
        },
    ],
}

A100_MIG_HOST: dict[str, Any] = {
    "driver": "535.161.08",
    "cuda": 12020,
    "gpus": [
        {
            "name": b"NVIDIA A100-SXM4-40GB",  # older pynvml returned bytes
            "uuid": b"GPU-0a1b2c3d-0000-1111-2222-333344445555",
            "memory": {"total": 42949672960, "used": 1 * GiB, "free": 39 * GiB},
            "cc": (8, 0),
            "pcie_gen": 4,
            "pcie_width": 16,
            "mig": (1, 1),
            "ecc": None,  # NVML_ERROR_NOT_SUPPORTED
            "power_limit_mw": 400000,
            "util": None,  # not supported with MIG on
            "temp": 45,
            "power_mw": 90000,
            "ecc_dbe": None,
        }
    ],
}


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18


class RecordedNvml:
    """Answers pynvml calls from a recording; ``None`` in the recording is NOT_SUPPORTED."""

    NVML_TEMPERATURE_GPU = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = NVML_ERROR_LIB_RM_VERSION_MISMATCH
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND

    def __init__(self, recording: dict[str, Any], init_error: int | None = None) -> None:
        self.rec = recording
        self.init_error = init_error
        self.initialised = False

    def _get(self, handle: int, key: str) -> Any:
        value = self.rec["gpus"][handle][key]
        if value is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self.rec["driver"])

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return int(self.rec["cuda"])

    def nvmlDeviceGetCount(self) -> int:
        return len(self.rec["gpus"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, h: int) -> Any:
        return self._get(h, "name")

    def nvmlDeviceGetUUID(self, h: int) -> Any:
        return self._get(h, "uuid")

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(**self._get(h, "memory"))

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return tuple(self._get(h, "cc"))  # type: ignore[return-value]

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: int) -> int:
        return int(self._get(h, "pcie_gen"))

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: int) -> int:
        return int(self._get(h, "pcie_width"))

    def nvmlDeviceGetMigMode(self, h: int) -> Any:
        return self._get(h, "mig")

    def nvmlDeviceGetEccMode(self, h: int) -> Any:
        return self._get(h, "ecc")

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:
        return int(self._get(h, "power_limit_mw"))

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(**self._get(h, "util"))

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return int(self._get(h, "temp"))

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return int(self._get(h, "power_mw"))

    def nvmlDeviceGetTotalEccErrors(self, h: int, kind: int, counter: int) -> int:
        assert (kind, counter) == (1, 0)
        return int(self._get(h, "ecc_dbe"))
