"""Proof of compute: the protocol is exact and binding, the GPU engine commits what the CPU
engine commits, and deadlines sized from the reference figures separate the classes.

There is no GPU on the machines these tests run on: the GPU engine (``torch_rounds``, the
multi-GPU split, the VRAM and bandwidth probes) runs here on ``FakeTorch``, numpy arrays
behind torch's names, so its arithmetic and its commitment are checked against the server's.
On a GPU host, ``HonestProver`` with the real torch runs the same code.
"""

from __future__ import annotations

import base64
import contextlib
import random
import uuid
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tesai.agent import proof as agent_proof
from tesai.agent.proof import HonestProver, numpy_rounds
from tesai.devices.gpu_reference import GPU_REFERENCE, lookup
from tesai.devices.verification import (
    ChallengePlan,
    ProofPolicy,
    check_openings,
    pick_blocks,
    pick_checks,
    plan_challenge,
)
from tesai.protocol import proof
from tesai.protocol.v1 import BlockRef, ProofChallenge, VerifyArgs, connectivity_tier
from tesai.settings import Settings

GiB = 1 << 30


def _challenge(seed: int = 1234, n: int = 128, rounds: int = 3) -> ProofChallenge:
    return ProofChallenge(
        challenge_id=uuid.uuid4(),
        proof_version=proof.PROOF_VERSION,
        seed=seed,
        matrix_n=n,
        rounds=rounds,
        deadline_s=10.0,
    )


def _plan(challenge: ProofChallenge) -> ChallengePlan:
    return ChallengePlan("cpu", challenge.matrix_n, challenge.rounds, 10.0, 1.0, None, None)


def _check(challenge: ProofChallenge, prover: Any, work: Any, rng_seed: int = 7) -> str | None:
    """The server's verdict on ``work``, with the default settings' openings and checks."""
    plan = _plan(challenge)
    policy = ProofPolicy.from_settings(Settings())
    rng = random.Random(rng_seed)
    blocks = pick_blocks(plan, policy.sample_blocks, rng)
    openings = prover.open(work, [BlockRef(round=t, block=b) for t, b in blocks])
    checks = pick_checks(plan, blocks, policy.checked_entries, rng)
    return check_openings(challenge.seed, plan, work.root, 1.0, openings, checks).reason


def test_products_are_exact_so_every_summation_order_commits_the_same_bits() -> None:
    seed, n = 99, 128
    m = proof.round_map(seed, 2)
    a = proof.round_rows(seed, proof.MATRIX_A, 2, list(range(n)), n)
    b = proof.round_rows(seed, proof.MATRIX_B, 2, list(range(n)), n)
    exact = a @ b.T  # int64
    f32 = a.astype(np.float32) @ b.astype(np.float32).T
    reversed_order = a[:, ::-1].astype(np.float32) @ b[:, ::-1].astype(np.float32).T
    assert (proof.commit_bits(exact) == proof.commit_bits(f32)).all()
    assert (proof.commit_bits(exact) == proof.commit_bits(reversed_order)).all()
    assert (m.alpha_a, m.alpha_b) != (0, 0)
    # Every entry lies in [-8, 8] and all 17 values occur about equally often.
    counts = np.bincount((proof.base_rows(seed, proof.MATRIX_A, range(n), n) + 8).ravel())
    assert len(counts) == 17
    assert counts.min() > 0.8 * n * n / 17


def test_the_server_rebuilds_any_entry_in_o_n_from_the_seed() -> None:
    seed, n = 7, 64
    rounds = dict(numpy_rounds(seed, n, range(3)))
    for t, row, cols in [(0, 0, [0, 63]), (2, 63, [5, 40]), (1, 17, list(range(0, 64, 9)))]:
        residues = proof.expected_residues(seed, n, t, [(row, c) for c in cols])
        assert [r & 1 for r in residues] == [
            proof.bit_at(rounds[t][row].tobytes(), n, 0, c) for c in cols
        ]


def test_honest_cpu_proof_passes_and_changed_or_wrong_blocks_do_not() -> None:
    challenge = _challenge(n=256, rounds=2)
    prover = HonestProver(use_gpu=False)
    prover.prepare(VerifyArgs(challenge_id=challenge.challenge_id, matrix_n=256))
    work = prover.compute(challenge)
    assert work.report.kind == "cpu"
    assert work.report.engine == "numpy"
    assert _check(challenge, prover, work) is None
    # The same challenge always commits to the same root; another seed to another.
    assert prover.compute(challenge).root == work.root
    assert prover.compute(_challenge(seed=1235, n=256, rounds=2)).root != work.root

    class Flipped(HonestProver):
        def open(self, work: Any, blocks: list[BlockRef]) -> Any:
            out = super().open(work, blocks)
            data = bytearray(base64.b64decode(out[0].data))
            data[3] ^= 0x10
            out[0] = out[0].model_copy(update={"data": base64.b64encode(data).decode()})
            return out

    assert _check(challenge, Flipped(use_gpu=False), work) == "proof_commitment_mismatch"


def test_a_small_proof_committed_to_wrong_products_never_passes() -> None:
    """A CPU proof opens one block per round: each must still carry enough checked bits that
    a commitment to the wrong products (a coin flip per bit) cannot pass."""
    challenge = _challenge(n=256, rounds=2)
    wrong = HonestProver(use_gpu=False)
    work = wrong.compute(_challenge(seed=challenge.seed + 1, n=256, rounds=2))
    verdicts = {_check(challenge, wrong, work, rng_seed=k) for k in range(40)}
    assert verdicts == {"proof_sample_mismatch"}


def test_merkle_paths_bind_each_leaf_to_its_place() -> None:
    leaves = [proof.leaf_hash(bytes([i])) for i in range(5)]
    levels = proof.tree_levels(leaves)
    root = levels[-1][0]
    assert len(levels) - 1 == proof.tree_depth(5) == 3
    for i, leaf in enumerate(leaves):
        path = proof.merkle_path(levels, i)
        assert proof.root_from_path(leaf, i, path) == root
        assert proof.root_from_path(leaf, (i + 1) % 5, path) != root


# --- the GPU engine on a numpy-backed torch --------------------------------------------------


class FakeTensor(np.ndarray):  # type: ignore[type-arg]
    """numpy behind the torch tensor methods the GPU engine calls."""

    def view(self, *shape: Any) -> Any:  # type: ignore[override]
        if shape and all(isinstance(s, int) for s in shape):
            return self.reshape(shape)
        return super().view(*shape)

    def to(self, dtype: Any) -> FakeTensor:
        return self.astype(dtype).view(FakeTensor)  # type: ignore[no-any-return]

    def add_(self, x: Any) -> FakeTensor:
        np.add(self, x, out=self)
        return self

    def sub_(self, x: Any) -> FakeTensor:
        np.subtract(self, x, out=self)
        return self

    def mul_(self, x: Any) -> FakeTensor:
        np.multiply(self, x, out=self)
        return self

    def remainder_(self, x: Any) -> FakeTensor:
        np.remainder(self, x, out=self)
        return self

    def bitwise_and_(self, x: Any) -> FakeTensor:
        np.bitwise_and(self, x, out=self)
        return self

    def fill_(self, x: Any) -> FakeTensor:
        self.fill(x)
        return self

    def copy_(self, other: Any, non_blocking: bool = False) -> FakeTensor:
        np.copyto(self, other)
        return self

    def sum(self, dim: int, dtype: Any) -> Any:  # type: ignore[override]
        return np.sum(np.asarray(self), axis=dim, dtype=dtype).view(FakeTensor)

    def pin_memory(self) -> FakeTensor:
        return self

    def cpu(self) -> FakeTensor:
        return self

    def numpy(self) -> Any:
        return np.asarray(self)


def _t(a: Any) -> FakeTensor:
    return np.asarray(a).view(FakeTensor)  # type: ignore[no-any-return]


def fake_torch(gpus: int, name: str, total: int) -> Any:
    """The parts of torch the agent's GPU engine uses, on numpy; ``gpus`` devices."""
    used: list[str] = []

    def device(spec: str) -> str:
        used.append(spec)
        return spec

    cuda = SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: gpus,
        device=lambda d: contextlib.nullcontext(),
        get_device_name=lambda d: name,
        mem_get_info=lambda d: (total - 64 * 1024 * 1024, total),
        synchronize=lambda d=None: None,
        empty_cache=lambda: None,
    )
    return SimpleNamespace(
        cuda=cuda,
        device=device,
        devices_used=used,
        backends=SimpleNamespace(cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=False))),
        int8=np.int8,
        int32=np.int32,
        int64=np.int64,
        uint8=np.uint8,
        float32=np.float32,
        empty=lambda shape, dtype, device=None: _t(np.zeros(shape, dtype=dtype)),
        arange=lambda a, b=None, dtype=None, device=None: _t(
            np.arange(a, b, dtype=dtype) if b is not None else np.arange(a, dtype=dtype)
        ),
        tensor=lambda data, dtype, device=None: _t(np.array(data, dtype=dtype)),
        remainder=lambda x, m: _t(np.remainder(x, m)),
    )


def test_gpu_engine_commits_what_the_cpu_engine_commits_and_passes_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agent_proof, "H2D_BYTES", 1 << 20)
    monkeypatch.setattr(agent_proof, "GPU_CHUNK_ENTRIES", 1 << 12)  # several chunks
    torch = fake_torch(gpus=2, name="NVIDIA H100 80GB HBM3", total=128 * 1024 * 1024)
    monkeypatch.setattr(agent_proof, "load_torch_cuda", lambda: torch)
    challenge = _challenge(seed=4242, n=256, rounds=5)
    gpu = HonestProver(use_gpu=True)
    gpu.prepare(
        VerifyArgs(challenge_id=challenge.challenge_id, matrix_n=256, declared_vram_bytes=1 << 26)
    )
    work = gpu.compute(challenge)
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert {"cuda:0", "cuda:1"} <= set(torch.devices_used)  # rounds spread over both GPUs
    assert work.report.kind == "gpu"
    assert work.report.engine == "torch"
    assert work.report.device_model == "NVIDIA H100 80GB HBM3"
    assert work.report.timings.vram_alloc_ok is True
    assert work.report.timings.h2d_gbps is not None
    cpu = HonestProver(use_gpu=False).compute(challenge)
    assert work.root == cpu.root
    assert _check(challenge, gpu, work) is None


def test_gpu_engine_that_fails_falls_back_to_the_cpu_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch = fake_torch(gpus=1, name="NVIDIA L4", total=1 << 30)
    torch.remainder = lambda x, m: (_ for _ in ()).throw(RuntimeError("CUDA error: ECC"))
    monkeypatch.setattr(agent_proof, "load_torch_cuda", lambda: torch)
    monkeypatch.setattr(agent_proof, "H2D_BYTES", 1 << 20)
    challenge = _challenge(n=128, rounds=1)
    prover = HonestProver(use_gpu=True)
    prover.prepare(VerifyArgs(challenge_id=challenge.challenge_id, matrix_n=128))
    work = prover.compute(challenge)
    assert work.report.kind == "cpu"
    assert _check(challenge, prover, work) is None


# --- deadlines from the reference figures ------------------------------------------------------

H100_SXM = "NVIDIA H100 80GB HBM3"


def _seconds(plan: ChallengePlan, tflops: float) -> float:
    return plan.work_ops / (tflops * 1e12)


def test_the_claimed_gpu_finishes_well_inside_and_lower_classes_and_cpus_cannot() -> None:
    """Published peaks (``tesai.devices.gpu_reference``): an H100 SXM at the assumed 50 % of
    its TF32 peak, end to end, needs at most 70 % of its deadline and passes down to 40 %;
    every lower class misses it even at 80 % of its own peak with no overhead at all, and so
    does a large CPU host."""
    policy = ProofPolicy.from_settings(Settings())
    plan = plan_challenge(
        policy, gpu_model=H100_SXM, gpu_count=1, vram_bytes=80 * GiB, cpu_cores=64
    )
    assert plan.reference == "h100 80gb hbm3"
    assert plan.n == 32768
    assert _seconds(plan, 0.5 * 494.7) <= 0.7 * plan.deadline_s
    assert _seconds(plan, 0.4 * 494.7) < plan.deadline_s
    for model in ("a100", "l40s", "rtx 4090", "l4", "a10", "t4", "v100"):
        best = _seconds(plan, 0.8 * GPU_REFERENCE[model].basis_tflops)
        assert best > plan.deadline_s, model
    two_socket_cpu = _seconds(plan, 10.0)  # 128 cores with AVX-512, FP32, at 100 %
    assert two_socket_cpu > 10 * plan.deadline_s
    # The work is sized per model: an L4's proof is smaller, and an L4 passes it.
    l4 = plan_challenge(
        policy, gpu_model="NVIDIA L4", gpu_count=1, vram_bytes=24 * GiB, cpu_cores=8
    )
    assert l4.work_ops < plan.work_ops
    assert _seconds(l4, 0.5 * 60.0) <= 0.7 * l4.deadline_s
    # Eight GPUs declared: eight times the work in the same time.
    eight = plan_challenge(
        policy, gpu_model=H100_SXM, gpu_count=8, vram_bytes=80 * GiB, cpu_cores=64
    )
    assert eight.rounds == 8 * plan.rounds
    assert eight.deadline_s == pytest.approx(plan.deadline_s)


def test_the_working_set_fits_the_declared_memory() -> None:
    policy = ProofPolicy.from_settings(Settings())
    small = plan_challenge(
        policy, gpu_model="NVIDIA GeForce RTX 3070", gpu_count=1, vram_bytes=8 * GiB, cpu_cores=8
    )
    assert 20 * small.n**2 <= 4 * GiB
    cpu = plan_challenge(policy, gpu_model=None, gpu_count=0, vram_bytes=0, cpu_cores=2)
    assert cpu.kind == "cpu"
    assert cpu.deadline_s >= policy.cpu_min_deadline_s


@pytest.mark.parametrize(
    ("name", "basis"),
    [
        ("NVIDIA H100 80GB HBM3", 494.7),
        ("NVIDIA H100 PCIe", 378.0),
        ("NVIDIA A100-SXM4-80GB", 156.0),
        ("NVIDIA A10", 62.5),
        ("NVIDIA L4", 60.0),
        ("NVIDIA L40S", 183.0),
        ("NVIDIA GeForce RTX 4090", 82.6),
        ("Tesla T4", 8.1),
        ("NVIDIA H200", 494.7),
    ],
)
def test_reference_lookup_by_model_name(name: str, basis: float) -> None:
    found = lookup(name)
    assert found is not None
    assert found[1].basis_tflops == basis


def test_connectivity_tiers() -> None:
    assert connectivity_tier(None) is None
    assert connectivity_tier(2000) == "t1"
    assert connectivity_tier(1600) == "t1"
    assert connectivity_tier(1599.9) == "t2"
    assert connectivity_tier(900) == "t3"
    assert connectivity_tier(500) == "t4"
    assert connectivity_tier(3) == "t5"
