"""Published peak throughput and memory per GPU model: what a proof-of-compute deadline is
calibrated from (``tesai.devices.verification.plan_challenge``).

Figures are NVIDIA's datasheet numbers for dense math (without the 2:4 sparsity factor), in
TFLOP/s (TOPS for INT8), and the largest memory the model ships with. ``basis`` is what the
agent's GPU engine runs on: an FP32 matrix product with TF32 tensor cores allowed, which is
exact for the proof's small integers; on models without TF32 (Turing, Volta) it is plain FP32.
FP16 and INT8 are listed because a provider's own kernel could use them (exactly, too): a
lower-class GPU running INT8 can reach the TF32 basis of a model one or two classes above
(docs/architecture.md, "What we verify and what we trust").

Sources: NVIDIA H100 and H200 Tensor Core GPU datasheets; A100 datasheet (2021); A40, A30,
A10, L40, L40S, L4, T4, V100 datasheets; RTX 6000 Ada, RTX A6000/A5000/A4000 datasheets; the
Ada (RTX 4090/4080/4070) and Ampere GA102 (RTX 3090/3080/3070/3060) architecture white papers
(GeForce: FP16 with FP32 accumulation, the exact mode); B200 from the DGX B200 system figures
divided by its eight GPUs; A10G (no NVIDIA datasheet) from AWS's G5 figures. Pure data and a
lookup: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class GpuReference:
    fp32: float
    tf32: float | None
    """None: no TF32 tensor cores (the basis is FP32)."""
    fp16: float
    """FP16 tensor cores with FP32 accumulation (exact for the proof)."""
    int8: float | None
    memory_gb: float

    @property
    def basis_tflops(self) -> float:
        """The rate the agent's GPU engine can reach at best: max(FP32, TF32)."""
        return max(self.fp32, self.tf32 or 0.0)


def _g(
    fp32: float, tf32: float | None, fp16: float, int8: float | None, memory_gb: float
) -> GpuReference:
    return GpuReference(fp32, tf32, fp16, int8, memory_gb)


GPU_REFERENCE: Final[dict[str, GpuReference]] = {
    "b200": _g(80.0, 1100.0, 2250.0, 4500.0, 192),
    "gh200": _g(67.0, 494.7, 989.4, 1979.0, 144),
    "h200": _g(67.0, 494.7, 989.4, 1979.0, 141),
    "h100 sxm": _g(67.0, 494.7, 989.4, 1979.0, 80),
    "h100 80gb hbm3": _g(67.0, 494.7, 989.4, 1979.0, 80),
    "h100 nvl": _g(60.0, 417.5, 835.0, 1670.0, 94),
    "h100 pcie": _g(51.0, 378.0, 756.0, 1513.0, 80),
    "h100": _g(51.0, 378.0, 756.0, 1513.0, 80),
    "h800": _g(51.0, 378.0, 756.0, 1513.0, 80),
    "a100": _g(19.5, 156.0, 312.0, 624.0, 80),
    "a800": _g(19.5, 156.0, 312.0, 624.0, 80),
    "a40": _g(37.4, 74.8, 149.7, 299.3, 48),
    "a30": _g(10.3, 82.0, 165.0, 330.0, 24),
    "a10g": _g(31.2, 35.0, 70.0, 140.0, 24),
    "a10": _g(31.2, 62.5, 125.0, 250.0, 24),
    "l40s": _g(91.6, 183.0, 362.0, 733.0, 48),
    "l40": _g(90.5, 90.5, 181.0, 362.0, 48),
    "l4": _g(30.3, 60.0, 121.0, 242.5, 24),
    "t4": _g(8.1, None, 65.0, 130.0, 16),
    "v100": _g(15.7, None, 125.0, None, 32),
    "rtx 6000 ada": _g(91.1, 182.1, 364.2, 728.5, 48),
    "rtx a6000": _g(38.7, 77.4, 154.8, 309.7, 48),
    "rtx a5000": _g(27.8, 55.6, 111.1, 222.2, 24),
    "rtx a4000": _g(19.2, 38.4, 76.7, 153.4, 16),
    "rtx 5090": _g(104.8, 104.8, 209.5, 838.0, 32),
    "rtx 4090": _g(82.6, 82.6, 165.2, 660.6, 24),
    "rtx 4080": _g(48.7, 48.7, 97.5, 389.9, 16),
    "rtx 4070": _g(29.1, 29.1, 58.3, 233.2, 12),
    "rtx 3090": _g(35.6, 35.6, 71.0, 284.0, 24),
    "rtx 3080": _g(29.8, 29.8, 59.5, 238.0, 12),
    "rtx 3070": _g(20.3, 20.3, 40.6, 162.6, 8),
    "rtx 3060": _g(12.7, 12.7, 25.4, 101.6, 12),
}
"""Keys are lowercase word sequences matched inside the model name NVML reports."""

CPU_FLOOR_GFLOPS_PER_CORE: Final = 0.5
"""The slowest a CPU core may multiply float32 matrices (numpy/BLAS) and still count as
working: two orders of magnitude below any x86 core of the last decade, so a busy shared
host passes, while a host that did not compute cannot produce the commitment at all."""


def _words(name: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", name.lower())


def normalize_model(name: str) -> str:
    """A model name, lowercase, without vendor words (``"NVIDIA H100 PCIe"`` → ``"h100 pcie"``)."""
    drop = {"nvidia", "geforce", "tesla", "graphics", "corporation"}
    return " ".join(w for w in _words(name) if w not in drop)


def lookup(gpu_model: str) -> tuple[str, GpuReference] | None:
    """The reference entry for a model name, by the longest matching key; None when unknown."""
    words = _words(gpu_model)
    best: tuple[int, str] | None = None
    for key in GPU_REFERENCE:
        kw = key.split()
        for start in range(len(words) - len(kw) + 1):
            if words[start : start + len(kw)] == kw and (best is None or len(kw) > best[0]):
                best = (len(kw), key)
    return (best[1], GPU_REFERENCE[best[1]]) if best else None
