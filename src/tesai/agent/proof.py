"""Proof of compute, agent side: run the seeded GEMM challenge and time it.

On a GPU host with torch and CUDA the multiplication runs in torch (plus a VRAM allocation of
the declared size and a host→device copy timing); otherwise it is a numpy float32 GEMM on the
CPU. The matrices, digest and sampled entries are defined once in ``tesai.protocol.proof``.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

import numpy as np

from tesai.agent.probe import cpu_model
from tesai.protocol.proof import gflops_for, result_digest, sample_entries, seeded_matrices
from tesai.protocol.v1 import ProofTimings, VerificationResult, VerifyArgs

log = logging.getLogger(__name__)

H2D_BYTES = 256 * 1024 * 1024
VRAM_HEADROOM = 0.9
"""Share of the declared VRAM to allocate (the CUDA context and other tenants hold the rest)."""


def load_torch_cuda() -> Any | None:
    """The torch module when it is installed and sees a CUDA device, else None."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return None
    try:
        return torch if torch.cuda.is_available() else None
    except Exception:
        return None


def run_cpu_proof(args: VerifyArgs, cpu_cores: int | None = None) -> VerificationResult:
    """The numpy float32 GEMM proof."""
    a, b = seeded_matrices(args.seed, args.matrix_n)
    c = a @ b  # warm-up, and the result the digest covers
    start = time.perf_counter()
    for _ in range(args.iterations):
        c = a @ b
    elapsed = time.perf_counter() - start
    return VerificationResult(
        challenge_id=args.challenge_id,
        kind="cpu",
        digest=result_digest(c),
        sample=sample_entries(c, args.seed),
        timings=ProofTimings(
            gemm_s=elapsed, gflops=gflops_for(args.matrix_n, args.iterations, elapsed)
        ),
        device_model=cpu_model(),
        cpu_cores=cpu_cores,
        engine="numpy",
    )


def _vram_alloc_ok(torch: Any, device: Any, declared_bytes: int) -> bool | None:
    """Whether the declared VRAM is really there: False when the GPU is smaller or the
    allocation fails, None when other work holds too much of it to test (a busy GPU)."""
    if declared_bytes <= 0:
        return None
    free, total = (int(v) for v in torch.cuda.mem_get_info(device))
    if total < declared_bytes * 0.95:
        log.warning("GPU has %d bytes, %d declared", total, declared_bytes)
        return False
    wanted = int(declared_bytes * VRAM_HEADROOM)
    busy = free < wanted
    try:
        block = torch.empty(
            min(wanted, max(free - 512 * 1024 * 1024, 0)), dtype=torch.uint8, device=device
        )
        block.fill_(1)
        torch.cuda.synchronize(device)
        del block
        torch.cuda.empty_cache()
    except Exception as exc:  # torch.cuda.OutOfMemoryError and driver errors alike
        log.warning("VRAM allocation of %d bytes failed: %s", wanted, exc)
        torch.cuda.empty_cache()
        return False
    return None if busy else True


def _h2d_gbps(torch: Any, device: Any) -> float | None:
    try:
        host = torch.empty(H2D_BYTES, dtype=torch.uint8).pin_memory()
        dev = torch.empty(H2D_BYTES, dtype=torch.uint8, device=device)
        dev.copy_(host, non_blocking=True)  # warm-up
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(3):
            dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        del host, dev
        torch.cuda.empty_cache()
        return 3 * H2D_BYTES / elapsed / 1e9
    except Exception as exc:
        log.warning("host→device bandwidth probe failed: %s", exc)
        return None


def run_gpu_proof(torch: Any, args: VerifyArgs, gpu_index: int = 0) -> VerificationResult:
    """The torch proof on one GPU: seeded matmul, VRAM allocation, host→device bandwidth."""
    device = torch.device(f"cuda:{gpu_index}")
    # Plain FP32 so the timing compares with the FP32 reference table; the integer entries make
    # the result exact either way.
    torch.backends.cuda.matmul.allow_tf32 = False
    vram_ok = _vram_alloc_ok(torch, device, args.declared_vram_bytes)
    a_np, b_np = seeded_matrices(args.seed, args.matrix_n)
    a = torch.from_numpy(a_np).to(device)
    b = torch.from_numpy(b_np).to(device)
    c = a @ b  # warm-up: cuBLAS picks its kernels here
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.iterations):
        c = a @ b
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    c_np = c.cpu().numpy().astype(np.float32)
    del a, b, c
    h2d = _h2d_gbps(torch, device)
    return VerificationResult(
        challenge_id=args.challenge_id,
        kind="gpu",
        digest=result_digest(c_np),
        sample=sample_entries(c_np, args.seed),
        timings=ProofTimings(
            gemm_s=elapsed,
            gflops=gflops_for(args.matrix_n, args.iterations, elapsed),
            vram_alloc_ok=vram_ok,
            h2d_gbps=h2d,
        ),
        device_model=str(torch.cuda.get_device_name(device)),
        engine="torch",
    )


def run_proof(
    args: VerifyArgs, cpu_cores: int | None = None, use_gpu: bool = True
) -> VerificationResult:
    """The proof for this host: on the GPU when torch sees one, else on the CPU."""
    torch = load_torch_cuda() if use_gpu else None
    if torch is not None:
        try:
            return run_gpu_proof(torch, args)
        except Exception as exc:
            log.warning("GPU proof failed, falling back to the CPU: %s", exc)
    return run_cpu_proof(args, cpu_cores)
