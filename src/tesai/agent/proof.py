"""Proof of compute, agent side: compute a challenge's products, commit to them, open blocks.

The protocol (matrices, committed bits, Merkle tree) is ``tesai.protocol.proof``; the HTTP
exchange is ``Agent._verify``. ``HonestProver`` computes on the GPUs when torch sees CUDA
(float32 products with TF32 tensor cores allowed, exact for the proof's small integers; the
rounds are spread over every GPU, each in its own thread, and the base matrices are generated
on the GPU), else with numpy on the CPU. Committing overlaps the products: each round's bits
are hashed in a thread pool while the next round runs.

``Prover`` is the seam: ``prepare`` runs before the seed is asked for (loading torch, the
VRAM allocation test: nothing the clock should count), ``compute`` between the seed and the
commitment, ``open`` after the server named the blocks.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tesai.agent.probe import cpu_model
from tesai.protocol import proof
from tesai.protocol.proof import PackedBits
from tesai.protocol.v1 import (
    BlockOpening,
    BlockRef,
    ProofChallenge,
    ProofKind,
    ProofReport,
    ProofTimings,
    VerifyArgs,
)

log = logging.getLogger(__name__)

H2D_BYTES = 256 * 1024 * 1024
VRAM_HEADROOM = 0.9
"""Share of the declared VRAM to allocate (the CUDA context and other tenants hold the rest)."""
CPU_CHUNK_ENTRIES = 1 << 22
GPU_CHUNK_ENTRIES = 1 << 24
"""Entries generated at once (int64 temporaries: 128 MiB on a GPU)."""
HASH_THREADS = max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class ProofWork:
    """A computed challenge: every round's committed bits and the Merkle tree over them."""

    n: int
    bits: list[PackedBits]
    levels: list[list[bytes]]
    report: ProofReport

    @property
    def root(self) -> str:
        return self.levels[-1][0].hex()


class Prover(Protocol):
    """What ``Agent._verify`` runs (tests put an attacker's prover here)."""

    def prepare(self, args: VerifyArgs) -> None: ...

    def compute(self, challenge: ProofChallenge) -> ProofWork: ...

    def open(self, work: ProofWork, blocks: list[BlockRef]) -> list[BlockOpening]: ...


def open_blocks(work: ProofWork, blocks: list[BlockRef]) -> list[BlockOpening]:
    """The requested blocks with their Merkle paths."""
    rows = proof.leaf_rows(work.n)
    out = []
    for ref in blocks:
        data = work.bits[ref.round][ref.block * rows : (ref.block + 1) * rows]
        index = proof.leaf_index(work.n, ref.round, ref.block)
        out.append(
            BlockOpening(
                round=ref.round,
                block=ref.block,
                data=proof.encode_block(np.ascontiguousarray(data).data),
                path=[h.hex() for h in proof.merkle_path(work.levels, index)],
            )
        )
    return out


def _round_leaves(bits: PackedBits, n: int) -> list[bytes]:
    rows = proof.leaf_rows(n)
    return [proof.leaf_hash(bits[i : i + rows].data) for i in range(0, n, rows)]


def commit(
    n: int, rounds: int, produce: Callable[[Callable[[int, PackedBits], None]], None]
) -> tuple[list[PackedBits], list[list[bytes]]]:
    """Run ``produce`` (it hands each round's packed bits to the callback it is given, in any
    order and from any thread) while hashing the rounds' leaves in a pool; the bits and the
    tree's levels."""
    bits: list[PackedBits | None] = [None] * rounds
    pending: dict[int, Future[list[bytes]]] = {}
    with ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="proof-hash") as pool:

        def take(t: int, packed: PackedBits) -> None:
            bits[t] = packed
            pending[t] = pool.submit(_round_leaves, packed, n)

        produce(take)
        leaves = [leaf for t in range(rounds) for leaf in pending[t].result()]
    done = [b for b in bits if b is not None]
    if len(done) != rounds:
        raise RuntimeError("a round of the proof was not computed")
    return done, proof.tree_levels(leaves)


# --- the CPU engine (numpy) ----------------------------------------------------------------------


def numpy_base(seed: int, which: int, n: int) -> np.ndarray[Any, np.dtype[np.int16]]:
    """Base matrix ``which`` (``A`` or ``Bᵀ``), int16 (the round maps need room above int8)."""
    out = np.empty((n, n), dtype=np.int16)
    step = max(1, CPU_CHUNK_ENTRIES // n)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        out[r0:r1] = proof.base_rows(seed, which, np.arange(r0, r1), n)
    return out


def numpy_rounds(seed: int, n: int, rounds: Iterable[int]) -> Iterator[tuple[int, PackedBits]]:
    """Each round's committed bits, computed with numpy (float32 BLAS: exact here)."""
    a = numpy_base(seed, proof.MATRIX_A, n)
    bt = numpy_base(seed, proof.MATRIX_B, n)
    for t in rounds:
        m = proof.round_map(seed, t)
        a_t = proof.remap(a, m.alpha_a, m.beta_a).astype(np.float32)
        b_t = proof.remap(bt, m.alpha_b, m.beta_b).astype(np.float32)
        c = a_t @ b_t.T
        if not np.isfinite(c).all():
            # An honest device must not fail its proof for a glitch of the BLAS kernel: the
            # round is computed again with the float64 kernel (exact as well).
            log.warning("proof_product_not_finite round=%d n=%d: recomputing in float64", t, n)
            c = a_t.astype(np.float64) @ b_t.T.astype(np.float64)
        yield t, proof.commit_bits(c)


# --- the GPU engine (torch) ----------------------------------------------------------------------


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


def torch_base(torch: Any, device: Any, seed: int, which: int, n: int) -> Any:
    """Base matrix ``which`` generated on the GPU (int8), in chunks of rows."""
    out = torch.empty((n, n), dtype=torch.int8, device=device)
    key = proof.matrix_key(seed, which)
    cols = torch.arange(n, dtype=torch.int64, device=device).view(1, n)
    step = max(1, GPU_CHUNK_ENTRIES // n)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        rows = torch.arange(r0, r1, dtype=torch.int64, device=device).view(-1, 1)
        out[r0:r1] = proof.entries(rows, cols, key).to(torch.int8)
    return out


def _torch_round_matrix(torch: Any, base: Any, alpha: int, beta: int) -> Any:
    x = base.to(torch.float32)
    # In place: one n × n float32 buffer per matrix.
    span = proof.VALUE_SPAN
    return x.add_(span).mul_(alpha).add_(beta).remainder_(proof.MODULUS).sub_(span)


def torch_rounds(
    torch: Any, device: Any, seed: int, n: int, rounds: Iterable[int]
) -> Iterator[tuple[int, PackedBits]]:
    """Each round's committed bits, computed on one GPU; the packing happens there too, so
    only n²/8 bytes per round cross to the host."""
    torch.backends.cuda.matmul.allow_tf32 = True  # exact for these integers, and the fast path
    a = torch_base(torch, device, seed, proof.MATRIX_A, n)
    bt = torch_base(torch, device, seed, proof.MATRIX_B, n)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=device)
    for t in rounds:
        m = proof.round_map(seed, t)
        a_t = _torch_round_matrix(torch, a, m.alpha_a, m.beta_a)
        b_t = _torch_round_matrix(torch, bt, m.alpha_b, m.beta_b)
        c = a_t @ b_t.T
        del a_t, b_t
        bits = torch.remainder(c, proof.MODULUS).to(torch.uint8).bitwise_and_(1)
        del c
        packed = (bits.view(n, n // 8, 8) * weights).sum(dim=2, dtype=torch.int32)
        yield t, packed.to(torch.uint8).cpu().numpy()


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


# --- the honest prover ---------------------------------------------------------------------------


@dataclass
class HonestProver:
    """Compute the challenge for real, on every GPU torch sees, else on the CPU."""

    use_gpu: bool = True
    torch: Any | None = None
    vram_ok: bool | None = None
    h2d_gbps: float | None = None
    _gpu_failed: bool = field(default=False, repr=False)

    def prepare(self, args: VerifyArgs) -> None:
        self.torch = load_torch_cuda() if self.use_gpu and not self._gpu_failed else None
        self.vram_ok = self.h2d_gbps = None
        if self.torch is not None:
            device = self.torch.device("cuda:0")
            self.vram_ok = _vram_alloc_ok(self.torch, device, args.declared_vram_bytes)
            self.h2d_gbps = _h2d_gbps(self.torch, device)

    def compute(self, challenge: ProofChallenge) -> ProofWork:
        if self.torch is not None:
            try:
                return self._compute_gpu(self.torch, challenge)
            except Exception as exc:
                # Remembered: the next proofs go straight to the CPU (and say so).
                log.warning("GPU proof failed, computing on the CPU: %s", exc)
                self._gpu_failed = True
        return self._compute_cpu(challenge)

    def open(self, work: ProofWork, blocks: list[BlockRef]) -> list[BlockOpening]:
        return open_blocks(work, blocks)

    def _compute_cpu(self, challenge: ProofChallenge) -> ProofWork:
        n, rounds, seed = challenge.matrix_n, challenge.rounds, challenge.seed
        start = time.perf_counter()

        def produce(take: Callable[[int, PackedBits], None]) -> None:
            for t, packed in numpy_rounds(seed, n, range(rounds)):
                take(t, packed)

        bits, levels = commit(n, rounds, produce)
        return self._work(n, rounds, bits, levels, time.perf_counter() - start, "cpu", "numpy")

    def _compute_gpu(self, torch: Any, challenge: ProofChallenge) -> ProofWork:
        n, rounds, seed = challenge.matrix_n, challenge.rounds, challenge.seed
        gpus = max(1, int(torch.cuda.device_count()))
        start = time.perf_counter()

        def on_gpu(index: int, take: Callable[[int, PackedBits], None]) -> None:
            device = torch.device(f"cuda:{index}")
            with torch.cuda.device(device):
                for t, packed in torch_rounds(torch, device, seed, n, range(index, rounds, gpus)):
                    take(t, packed)
                torch.cuda.empty_cache()

        def produce(take: Callable[[int, PackedBits], None]) -> None:
            with ThreadPoolExecutor(gpus, thread_name_prefix="proof-gpu") as pool:
                for f in [pool.submit(on_gpu, i, take) for i in range(gpus)]:
                    f.result()

        bits, levels = commit(n, rounds, produce)
        elapsed = time.perf_counter() - start
        model = str(torch.cuda.get_device_name(torch.device("cuda:0")))
        return self._work(n, rounds, bits, levels, elapsed, "gpu", "torch", model)

    def _work(
        self,
        n: int,
        rounds: int,
        bits: list[PackedBits],
        levels: list[list[bytes]],
        elapsed: float,
        kind: ProofKind,
        engine: str,
        model: str | None = None,
    ) -> ProofWork:
        timings = ProofTimings(
            gemm_s=elapsed,
            gflops=proof.work_ops(n, rounds) / max(elapsed, 1e-9) / 1e9,
            vram_alloc_ok=self.vram_ok if kind == "gpu" else None,
            h2d_gbps=self.h2d_gbps if kind == "gpu" else None,
        )
        report = ProofReport(
            kind=kind, device_model=model or cpu_model(), engine=engine, timings=timings
        )
        return ProofWork(n=n, bits=bits, levels=levels, report=report)


def work_summary(work: ProofWork) -> dict[str, Any]:
    """What the command result keeps of a proof (not the bits)."""
    r = work.report
    return {
        "kind": r.kind,
        "root": work.root,
        "gflops": r.timings.gflops,
        "seconds": r.timings.gemm_s,
        "device_model": r.device_model,
        "engine": r.engine,
    }
