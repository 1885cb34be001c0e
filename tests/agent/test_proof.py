"""Proof of compute: the agent's result is reproducible and the server-side check is sound."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from tesai.agent.proof import run_cpu_proof, run_proof
from tesai.protocol import proof
from tesai.protocol.v1 import ProofTimings, VerifyArgs, connectivity_tier


def _args(seed: int = 1234, n: int = 128, iterations: int = 2) -> VerifyArgs:
    return VerifyArgs(challenge_id=uuid.uuid4(), seed=seed, matrix_n=n, iterations=iterations)


def test_digest_is_reproducible_and_matches_the_servers_recomputation() -> None:
    args = _args()
    first = run_cpu_proof(args, cpu_cores=2)
    second = run_proof(args, cpu_cores=2)  # no torch/CUDA here: the CPU path
    assert second.kind == "cpu"
    assert second.engine == "numpy"
    assert first.digest == second.digest == proof.expected_digest(args.seed, args.matrix_n)
    assert first.sample == second.sample
    assert first.timings.gflops > 0
    assert first.timings.gemm_s > 0
    assert run_cpu_proof(_args(seed=1235)).digest != first.digest


def test_the_result_is_exact_so_any_summation_order_gives_the_same_digest() -> None:
    a, b = proof.seeded_matrices(99, 96)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    reversed_order = a[:, ::-1].astype(np.float32) @ b[::-1, :].astype(np.float32)
    assert (
        proof.result_digest(a @ b)
        == proof.result_digest(exact)
        == proof.result_digest(reversed_order)
    )


def test_rows_rebuilt_by_jumping_ahead_match_the_full_matrices() -> None:
    a, b = proof.seeded_matrices(7, 64)
    positions = [(0, 0), (63, 63), (5, 40), (40, 5)]
    assert proof.expected_entries(7, 64, positions) == [float((a @ b)[i, j]) for i, j in positions]


def _check(result, args, **kw):  # type: ignore[no-untyped-def]
    # One declared core: this shared 2-core test machine is often busy, and timings show it.
    defaults = {"declared_gpu_model": None, "declared_cpu_cores": 1, "full_digest_max_n": 256}
    return proof.check_proof(args, result, **(defaults | kw))


def test_server_check_accepts_an_honest_result() -> None:
    args = _args()
    check = _check(run_cpu_proof(args, cpu_cores=2), args)
    assert check.ok, check.reason
    assert check.score_gflops > 0


def test_server_check_rejects_a_wrong_digest() -> None:
    args = _args()
    honest = run_cpu_proof(args, cpu_cores=2)
    forged = honest.model_copy(update={"digest": "0" * 64})
    assert _check(forged, args).reason == "wrong_digest"


def test_server_check_rejects_a_wrong_or_missing_sample() -> None:
    args = _args()
    honest = run_cpu_proof(args, cpu_cores=2)
    assert honest.sample is not None
    wrong = honest.model_copy(update={"sample": [honest.sample[0] + 1.0, *honest.sample[1:]]})
    assert _check(wrong, args, full_digest_max_n=0).reason == "wrong_sample"
    # A result computed for another seed fails the sampled check even without the full digest.
    other = run_cpu_proof(_args(seed=args.seed + 1), cpu_cores=2)
    assert (
        _check(
            other.model_copy(update={"challenge_id": args.challenge_id}), args, full_digest_max_n=0
        ).reason
        == "wrong_sample"
    )
    assert _check(honest.model_copy(update={"sample": None}), args).reason == "missing_sample"
    nan = honest.model_copy(update={"sample": [float("nan")] * len(honest.sample)})
    assert _check(nan, args).reason == "wrong_sample"


def test_a_cpu_claiming_to_be_an_h100_is_rejected() -> None:
    args = _args()
    honest = run_cpu_proof(args, cpu_cores=2)
    spoof = honest.model_copy(update={"kind": "gpu", "device_model": "NVIDIA H100 80GB HBM3"})
    check = _check(spoof, args, declared_gpu_model="NVIDIA H100 80GB HBM3")
    assert check.reason == "too_slow"
    # A GPU device that answers with a CPU proof has not proven its GPU.
    assert _check(honest, args, declared_gpu_model="NVIDIA H100 80GB HBM3").reason == (
        "gpu_not_proven"
    )
    # Reporting a different model than the one declared at join.
    t4 = spoof.model_copy(update={"device_model": "Tesla T4"})
    assert _check(t4, args, declared_gpu_model="NVIDIA H100 80GB HBM3").reason == "model_mismatch"


def test_timings_against_the_reference_table() -> None:
    fast = ProofTimings(gemm_s=1.0, gflops=40_000.0, vram_alloc_ok=True)
    assert proof.check_timings("gpu", "NVIDIA H100 80GB HBM3", None, fast) is None
    assert proof.check_timings("gpu", "NVIDIA T4", None, fast) == "too_fast"
    no_vram = fast.model_copy(update={"vram_alloc_ok": False})
    assert proof.check_timings("gpu", "NVIDIA H100 PCIe", None, no_vram) == "vram_alloc_failed"
    assert proof.check_timings("gpu", "Mystery GPU 9000", None, fast) == "unknown_gpu_model"
    slow_cpu = ProofTimings(gemm_s=10.0, gflops=1.0)
    assert proof.check_timings("cpu", "x", 64, slow_cpu) == "too_slow"


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 67.0),
        ("NVIDIA H100 PCIe", 51.0),
        ("NVIDIA A100-SXM4-80GB", 19.5),
        ("NVIDIA A10", 31.2),
        ("NVIDIA L4", 30.3),
        ("NVIDIA L40S", 91.6),
        ("NVIDIA GeForce RTX 4090", 82.6),
        ("Tesla T4", 8.1),
        ("NVIDIA H200", 67.0),
    ],
)
def test_reference_lookup_by_model_name(name: str, tflops: float) -> None:
    assert proof.reference_tflops(name) == tflops


def test_connectivity_tiers() -> None:
    assert connectivity_tier(None) is None
    assert connectivity_tier(2000) == "t1"
    assert connectivity_tier(1600) == "t1"
    assert connectivity_tier(1599.9) == "t2"
    assert connectivity_tier(900) == "t3"
    assert connectivity_tier(500) == "t4"
    assert connectivity_tier(3) == "t5"
