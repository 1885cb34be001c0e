"""Proof of compute: the one definition the agent (to produce) and the server (to check) share.

The challenge is a seeded GEMM, ``C = A @ B`` with ``A`` and ``B`` float32 ``n × n`` matrices
drawn from numpy's PCG64 (the bit generator behind ``default_rng``). Their entries are small
integers in ``[-8, 8]``, so every product and partial sum is an integer below 2**24 and exactly
representable in float32: ``C`` is bit-exact whatever BLAS, summation order or GPU (TF32 included)
computed it. That makes the digest reproducible everywhere and lets the server recompute any
entry exactly.

- Rows of ``A`` come from the stream ``SeedSequence([seed, 0])``; rows of ``Bᵀ`` (the columns
  of ``B``) from ``SeedSequence([seed, 1])``, ``n`` raw 64-bit draws per row. PCG64 can jump
  ahead, so the server rebuilds one row or column in O(n) without drawing the whole matrix.
- ``digest = sha256(round(C, 2) as little-endian float32 bytes, row-major)``.
- ``sample`` holds ``C[i, j]`` at ``SAMPLE_SIZE`` positions drawn from ``SeedSequence([seed, 2])``.

The server checks the sample in O(k·n) (``check_sample``); the full digest check is O(n³) and
optional (``expected_digest``). Timings are checked against ``REFERENCE_FP32_TFLOPS``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from tesai.protocol.v1 import ProofKind, ProofTimings, VerificationResult, VerifyArgs

VALUE_SPAN: Final = 8
"""Matrix entries are integers in [-VALUE_SPAN, VALUE_SPAN]."""
SAMPLE_SIZE: Final = 16
SAMPLE_TOLERANCE: Final = 1e-3

_A_STREAM: Final = 0
_B_STREAM: Final = 1
_POSITION_STREAM: Final = 2

# Reason codes of a failed check (VerificationOutcome.reason).
REASON_WRONG_SAMPLE: Final = "wrong_sample"
REASON_WRONG_DIGEST: Final = "wrong_digest"
REASON_MISSING_SAMPLE: Final = "missing_sample"
REASON_MODEL_MISMATCH: Final = "model_mismatch"
REASON_GPU_NOT_PROVEN: Final = "gpu_not_proven"
REASON_KIND_MISMATCH: Final = "kind_mismatch"
REASON_TOO_SLOW: Final = "too_slow"
REASON_TOO_FAST: Final = "too_fast"
REASON_VRAM_ALLOC_FAILED: Final = "vram_alloc_failed"
REASON_UNKNOWN_MODEL: Final = "unknown_gpu_model"

Float32Matrix = npt.NDArray[np.float32]


def _stream(seed: int, stream: int, skip: int = 0) -> np.random.PCG64:
    bits = np.random.PCG64(np.random.SeedSequence([seed, stream]))
    if skip:
        bits.advance(skip)
    return bits


def _to_entries(raw: npt.NDArray[np.uint64]) -> npt.NDArray[np.float32]:
    span = np.uint64(2 * VALUE_SPAN + 1)
    return ((raw % span).astype(np.int64) - VALUE_SPAN).astype(np.float32)


def _row(seed: int, stream: int, index: int, n: int) -> npt.NDArray[np.float32]:
    return _to_entries(_stream(seed, stream, index * n).random_raw(n))


def seeded_matrices(seed: int, n: int) -> tuple[Float32Matrix, Float32Matrix]:
    """The challenge matrices ``A`` and ``B`` (C-contiguous float32, ``n × n``)."""
    a = _to_entries(_stream(seed, _A_STREAM).random_raw(n * n)).reshape(n, n)
    b_t = _to_entries(_stream(seed, _B_STREAM).random_raw(n * n)).reshape(n, n)
    return a, np.ascontiguousarray(b_t.T)


def result_digest(c: npt.NDArray[np.floating]) -> str:
    """sha256 of ``C`` rounded to 2 decimals, as little-endian float32 bytes in row-major order."""
    rounded = np.round(np.asarray(c, dtype=np.float32), 2) + np.float32(0.0)  # -0.0 → +0.0
    return hashlib.sha256(np.ascontiguousarray(rounded, dtype="<f4").tobytes()).hexdigest()


def sample_positions(seed: int, n: int, k: int = SAMPLE_SIZE) -> list[tuple[int, int]]:
    """The ``k`` positions ``(i, j)`` of ``C`` the agent reports, derived from the seed."""
    raw = _stream(seed, _POSITION_STREAM).random_raw(2 * k)
    return [(int(raw[2 * m] % np.uint64(n)), int(raw[2 * m + 1] % np.uint64(n))) for m in range(k)]


def sample_entries(c: npt.NDArray[np.floating], seed: int, k: int = SAMPLE_SIZE) -> list[float]:
    """The agent side: ``C`` at the seed's sample positions."""
    n = c.shape[0]
    return [float(c[i, j]) for i, j in sample_positions(seed, n, k)]


def expected_entries(seed: int, n: int, positions: list[tuple[int, int]]) -> list[float]:
    """The server side: ``C[i, j]`` recomputed from the seed in O(n) per entry (exact)."""
    out: list[float] = []
    for i, j in positions:
        row = _row(seed, _A_STREAM, i, n).astype(np.float64)
        col = _row(seed, _B_STREAM, j, n).astype(np.float64)
        out.append(float(row @ col))
    return out


def expected_digest(seed: int, n: int) -> str:
    """The full digest, recomputed from the seed: O(n³), for occasional or small checks."""
    a, b = seeded_matrices(seed, n)
    return result_digest(a @ b)


def check_sample(seed: int, n: int, sample: list[float] | None) -> str | None:
    """None when ``sample`` matches the recomputed entries, else a reason code."""
    if not sample:
        return REASON_MISSING_SAMPLE
    positions = sample_positions(seed, n, len(sample))
    if len(sample) < min(SAMPLE_SIZE, n * n):
        return REASON_MISSING_SAMPLE
    expected = expected_entries(seed, n, positions)
    for got, want in zip(sample, expected, strict=True):
        if not abs(got - want) <= SAMPLE_TOLERANCE:  # also catches NaN
            return REASON_WRONG_SAMPLE
    return None


# --- reference timings ---------------------------------------------------------------------------

REFERENCE_FP32_TFLOPS: Final[dict[str, float]] = {
    "b200": 80.0,
    "gh200": 67.0,
    "h200": 67.0,
    "h100 sxm": 67.0,
    "h100 80gb hbm3": 67.0,
    "h100 pcie": 51.0,
    "h100 nvl": 60.0,
    "h100": 51.0,
    "h800": 51.0,
    "a100": 19.5,
    "a800": 19.5,
    "a40": 37.4,
    "a30": 10.3,
    "a10g": 31.2,
    "a10": 31.2,
    "l40s": 91.6,
    "l40": 90.5,
    "l4": 30.3,
    "t4": 8.1,
    "v100": 15.7,
    "rtx 6000 ada": 91.1,
    "rtx a6000": 38.7,
    "rtx a5000": 27.8,
    "rtx a4000": 19.2,
    "rtx 5090": 104.8,
    "rtx 4090": 82.6,
    "rtx 4080": 48.7,
    "rtx 4070": 29.1,
    "rtx 3090": 35.6,
    "rtx 3080": 29.8,
    "rtx 3070": 20.3,
    "rtx 3060": 12.7,
}
"""Peak dense FP32 (non-tensor-core) TFLOPS per GPU model; keys are lowercase word sequences."""

GPU_MIN_FRACTION: Final = 0.2
"""A GPU proof must reach this share of its model's peak (the server picks n ≥ 2048 for GPUs)."""
GPU_MAX_FRACTION: Final = 1.3
CPU_MIN_GFLOPS_PER_CORE: Final = 0.02
"""Deliberately low: a busy shared host is slow and noisy; the sample already proves the work."""
CPU_MAX_GFLOPS_PER_CORE: Final = 256.0


def _words(name: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", name.lower())


def normalize_model(name: str) -> str:
    """A model name, lowercase, without vendor words (``"NVIDIA H100 PCIe"`` → ``"h100 pcie"``)."""
    drop = {"nvidia", "geforce", "tesla", "graphics", "corporation"}
    return " ".join(w for w in _words(name) if w not in drop)


def reference_tflops(gpu_model: str) -> float | None:
    """Peak FP32 TFLOPS for a GPU model name, by the longest matching key; None when unknown."""
    words = _words(gpu_model)
    best: tuple[int, float] | None = None
    for key, tflops in REFERENCE_FP32_TFLOPS.items():
        kw = key.split()
        for start in range(len(words) - len(kw) + 1):
            if words[start : start + len(kw)] == kw and (best is None or len(kw) > best[0]):
                best = (len(kw), tflops)
    return best[1] if best else None


def gflops_for(n: int, iterations: int, seconds: float) -> float:
    """GFLOPS of ``iterations`` n×n GEMMs taking ``seconds``."""
    return 2.0 * n**3 * iterations / max(seconds, 1e-9) / 1e9


def check_timings(
    kind: ProofKind, device_model: str, cpu_cores: int | None, timings: ProofTimings
) -> str | None:
    """None when the timings fit the reference for the model (GPU) or core count (CPU)."""
    if kind == "gpu":
        peak = reference_tflops(device_model)
        if peak is None:
            return REASON_UNKNOWN_MODEL
        if timings.vram_alloc_ok is False:
            return REASON_VRAM_ALLOC_FAILED
        if timings.gflops < GPU_MIN_FRACTION * peak * 1000:
            return REASON_TOO_SLOW
        if timings.gflops > GPU_MAX_FRACTION * peak * 1000:
            return REASON_TOO_FAST
        return None
    cores = max(cpu_cores or 1, 1)
    if timings.gflops < CPU_MIN_GFLOPS_PER_CORE * cores:
        return REASON_TOO_SLOW
    if timings.gflops > CPU_MAX_GFLOPS_PER_CORE * cores:
        return REASON_TOO_FAST
    return None


@dataclass(frozen=True, slots=True)
class ProofCheck:
    """The server's verdict on a proof: ``reason`` is None when it passed."""

    reason: str | None
    score_gflops: float

    @property
    def ok(self) -> bool:
        return self.reason is None


def check_proof(
    args: VerifyArgs,
    result: VerificationResult,
    *,
    declared_gpu_model: str | None,
    declared_cpu_cores: int | None,
    full_digest_max_n: int = 0,
) -> ProofCheck:
    """Check a proof against its challenge and the hardware the device declared.

    ``declared_gpu_model`` is the model of the device's GPUs at join (None for a CPU device).
    The digest is recomputed in full only when ``matrix_n <= full_digest_max_n`` (O(n³)).
    """
    score = result.timings.gflops

    def fail(reason: str) -> ProofCheck:
        return ProofCheck(reason=reason, score_gflops=score)

    if declared_gpu_model and result.kind != "gpu":
        return fail(REASON_GPU_NOT_PROVEN)
    if not declared_gpu_model and result.kind == "gpu":
        return fail(REASON_KIND_MISMATCH)
    if declared_gpu_model and normalize_model(result.device_model) != normalize_model(
        declared_gpu_model
    ):
        return fail(REASON_MODEL_MISMATCH)
    reason = check_sample(args.seed, args.matrix_n, result.sample)
    if reason:
        return fail(reason)
    if args.matrix_n <= full_digest_max_n and result.digest != expected_digest(
        args.seed, args.matrix_n
    ):
        return fail(REASON_WRONG_DIGEST)
    # The timings are judged against the declared hardware, not what the proof claims to be.
    model = declared_gpu_model or result.device_model
    reason = check_timings(result.kind, model, declared_cpu_cores, result.timings)
    return ProofCheck(reason=reason, score_gflops=score)
