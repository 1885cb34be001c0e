"""Judging a proof-of-compute result: pure, over the shared helpers in ``tesai.protocol.proof``.

``judge`` adds the server's own checks (declared VRAM against telemetry, self-consistent timings)
to ``check_proof`` and maps its reason codes onto the device reason codes people read
(``tesai.devices.states.REASONS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tesai.protocol import proof
from tesai.protocol.v1 import VerificationResult, VerifyArgs

VRAM_TOLERANCE = 0.15
"""Telemetry may report up to 15 % less GPU memory than declared (driver reservations)."""
CPU_SLOW_SLACK = 0.1
"""A CPU proof counts as too slow only below this share of the shared per-core floor: a loaded
host (other tenants, BLAS threads contending) is slow without lying, while a host claiming
ten times its real cores still fails."""
TIMING_TOLERANCE = 0.25
"""Reported GFLOP/s may differ this much from what n, iterations and gemm_s imply."""

_GPU_REASONS = {
    proof.REASON_WRONG_SAMPLE: "proof_sample_mismatch",
    proof.REASON_MISSING_SAMPLE: "proof_sample_mismatch",
    proof.REASON_WRONG_DIGEST: "proof_digest_mismatch",
    proof.REASON_MODEL_MISMATCH: "gpu_model_mismatch",
    proof.REASON_GPU_NOT_PROVEN: "gpu_model_mismatch",
    proof.REASON_KIND_MISMATCH: "gpu_model_mismatch",
    proof.REASON_TOO_SLOW: "gpu_model_mismatch",
    proof.REASON_TOO_FAST: "timing_implausible",
    proof.REASON_VRAM_ALLOC_FAILED: "vram_alloc_failed",
    proof.REASON_UNKNOWN_MODEL: "gpu_model_unknown",
}


@dataclass(frozen=True)
class Verdict:
    """``reason`` is None when the device passed; ``detail`` explains a failure in numbers."""

    reason: str | None
    score: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.reason is None


def _detail(reason: str, result: VerificationResult, declared_gpu_model: str | None) -> str:
    gflops = result.timings.gflops
    if reason == "gpu_model_mismatch" and declared_gpu_model:
        peak = proof.reference_tflops(declared_gpu_model)
        floor = (
            f"; a {declared_gpu_model} reaches at least {proof.GPU_MIN_FRACTION * peak * 1000:,.0f}"
            if peak
            else ""
        )
        return (
            f"Declared {declared_gpu_model!r}; the proof reported {result.kind} "
            f"{result.device_model!r} at {gflops:,.0f} GFLOP/s{floor}."
        )
    if reason == "timing_implausible":
        return f"Reported {gflops:,.0f} GFLOP/s is beyond what the hardware can do."
    if reason == "cpu_mismatch":
        return f"Measured {gflops:,.1f} GFLOP/s, too slow for the declared CPU cores."
    return ""


def judge(
    args: VerifyArgs,
    result: VerificationResult,
    *,
    declared_gpu_model: str | None,
    declared_cpu_cores: int | None,
    declared_vram_bytes: int,
    telemetry_gpu_memory: list[int] | None,
    full_digest_max_n: int,
) -> Verdict:
    """Judge a proof against its challenge, the declared hardware and recent telemetry."""
    score = result.timings.gflops
    if not (math.isfinite(score) and math.isfinite(result.timings.gemm_s)):
        return Verdict("timing_implausible", 0.0, "Timings must be finite numbers.")
    if declared_gpu_model and telemetry_gpu_memory and declared_vram_bytes > 0:
        smallest = min(telemetry_gpu_memory)
        if smallest < (1 - VRAM_TOLERANCE) * declared_vram_bytes:
            return Verdict(
                "gpu_model_mismatch",
                score,
                f"Declared {declared_vram_bytes / 2**30:.0f} GiB per GPU; telemetry reports "
                f"{smallest / 2**30:.0f} GiB.",
            )
    implied = proof.gflops_for(args.matrix_n, args.iterations, result.timings.gemm_s)
    if abs(implied - score) > TIMING_TOLERANCE * max(implied, score, 1e-9):
        return Verdict(
            "timing_implausible",
            score,
            f"Reported {score:,.1f} GFLOP/s but n={args.matrix_n}, {args.iterations} "
            f"iterations in {result.timings.gemm_s:.4f} s is {implied:,.1f} GFLOP/s.",
        )
    check = proof.check_proof(
        args,
        result,
        declared_gpu_model=declared_gpu_model,
        declared_cpu_cores=declared_cpu_cores,
        full_digest_max_n=full_digest_max_n,
    )
    cpu = result.kind == "cpu" and not declared_gpu_model
    if cpu and check.reason == proof.REASON_TOO_SLOW:
        floor = proof.CPU_MIN_GFLOPS_PER_CORE * max(declared_cpu_cores or 1, 1) * CPU_SLOW_SLACK
        if score >= floor:
            return Verdict(None, score)
    if check.ok:
        return Verdict(None, check.score_gflops)
    assert check.reason is not None
    if cpu and check.reason == proof.REASON_TOO_SLOW:
        reason = "cpu_mismatch"
    else:
        reason = _GPU_REASONS.get(check.reason, "proof_sample_mismatch")
    return Verdict(reason, check.score_gflops, _detail(reason, result, declared_gpu_model))
