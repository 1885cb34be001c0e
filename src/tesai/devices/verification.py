"""Proof-of-compute policy, pure: how large a challenge is and how long it may take, and the
verdicts on a commitment and on its openings (the protocol is ``tesai.protocol.proof``).

The deadline is the server's own measurement, challenge sent (the answer to
``/verification/start``) → commitment received, never the agent's timings (those are shown,
never trusted). For a GPU device it is calibrated from the declared model's reference rate
(``tesai.devices.gpu_reference``)::

    expected = work / (efficiency × basis)        the claimed GPU, end to end
    deadline = slack × expected + latency allowance

and the work is sized so that ``expected`` is about ``gpu_target_s`` on one GPU, times the
number of GPUs declared (the agent spreads rounds over all of them). With the defaults
(efficiency 0.5, slack 1.25, 2 s, 0.5 s) an H100 SXM gets 5.6·10¹⁴ operations and 3.35 s: it
passes down to 40 % of its TF32 peak over the whole proof, while an L40S at 80 % of its peak
needs 3.9 s, an A100 4.5 s and a 128-core CPU a minute. A device that misses the deadline has,
at best, computed the share of the rows it had time for, and each opened block it did not
compute fails a checked bit with probability 1/2.

A CPU device is held to a floor, not a class: ``CPU_FLOOR_GFLOPS_PER_CORE`` per declared core,
and at least ``cpu_min_deadline_s``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from tesai.devices.gpu_reference import (
    CPU_FLOOR_GFLOPS_PER_CORE,
    GPU_REFERENCE,
    lookup,
    normalize_model,
)
from tesai.protocol import proof
from tesai.protocol.v1 import MAX_OPENINGS, BlockOpening, ProofReport
from tesai.settings import Settings

Kind = Literal["gpu", "cpu"]

VRAM_TOLERANCE = 0.15
"""NVML may report up to 15 % less GPU memory than declared (driver reservations), and a
declared figure may exceed the model's largest variant by as much (GB against GiB)."""
WORKING_SET_BYTES_PER_ENTRY = 20
"""GPU memory the agent's engine needs per entry of ``n × n`` (int8 bases, float32 round
matrices and product, temporaries)."""
REPORTED_MAX_FACTOR = 1.5
"""A self-reported rate above this multiple of the declared hardware's fastest mode is a lie."""
CPU_MAX_GFLOPS_PER_CORE = 256.0
MAX_ROUNDS = 1000
"""The wire limit on rounds (``ProofChallenge.rounds``)."""


@dataclass(frozen=True, slots=True)
class ProofPolicy:
    """The tunables of ``Settings`` that shape proofs (documented there)."""

    cpu_n: int
    cpu_rounds: int
    gpu_max_n: int
    max_rounds: int
    gpu_target_s: float
    gpu_efficiency: float
    slack: float
    latency_allowance_s: float
    cpu_min_deadline_s: float
    sample_blocks: int
    checked_entries: int

    @classmethod
    def from_settings(cls, s: Settings) -> ProofPolicy:
        return cls(
            cpu_n=s.proof_matrix_n_cpu,
            cpu_rounds=s.proof_iterations,
            gpu_max_n=s.proof_matrix_n_gpu,
            max_rounds=s.proof_max_rounds,
            gpu_target_s=s.proof_gpu_target_s,
            gpu_efficiency=s.proof_gpu_efficiency,
            slack=s.proof_deadline_slack,
            latency_allowance_s=s.proof_latency_allowance_s,
            cpu_min_deadline_s=s.proof_cpu_min_deadline_s,
            sample_blocks=s.proof_sample_blocks,
            checked_entries=s.proof_checked_entries,
        )


@dataclass(frozen=True, slots=True)
class ChallengePlan:
    """What one challenge asks for and allows; stored in the challenge's ``params``."""

    kind: Kind
    n: int
    rounds: int
    deadline_s: float
    expected_s: float
    """Time of the declared hardware at the assumed efficiency (GPU) or at the floor (CPU)."""
    reference: str | None
    """The reference-table key of the declared GPU model (None: CPU, or an unknown model)."""
    basis_tflops: float | None

    @property
    def work_ops(self) -> float:
        return proof.work_ops(self.n, self.rounds)

    def to_params(self) -> dict[str, Any]:
        return {
            "proof_version": proof.PROOF_VERSION,
            "kind": self.kind,
            "matrix_n": self.n,
            "iterations": self.rounds,
            "deadline_s": self.deadline_s,
            "expected_s": self.expected_s,
            "reference": self.reference,
            "basis_tflops": self.basis_tflops,
        }

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> ChallengePlan:
        return cls(
            kind="gpu" if p.get("kind") == "gpu" else "cpu",
            n=int(p["matrix_n"]),
            rounds=int(p["iterations"]),
            deadline_s=float(p["deadline_s"]),
            expected_s=float(p.get("expected_s", 0.0)),
            reference=p.get("reference"),
            basis_tflops=p.get("basis_tflops"),
        )


def _power_of_two_at_most(x: int) -> int:
    return 1 << (max(x, 1).bit_length() - 1)


def gpu_matrix_n(vram_bytes: int, cap: int) -> int:
    """The largest power-of-two ``n`` ≤ ``cap`` whose working set fits half the declared VRAM."""
    n = _power_of_two_at_most(min(max(cap, proof.MIN_N), proof.MAX_N))
    if vram_bytes > 0:
        while n > proof.MIN_N and WORKING_SET_BYTES_PER_ENTRY * n * n > vram_bytes // 2:
            n //= 2
    return n


def plan_challenge(
    policy: ProofPolicy,
    *,
    gpu_model: str | None,
    gpu_count: int,
    vram_bytes: int,
    cpu_cores: int,
) -> ChallengePlan:
    """Size a challenge for the declared hardware and give it its deadline."""
    if gpu_model and gpu_count > 0:
        found = lookup(gpu_model)
        # An unknown model gets the slowest GPU's challenge; the commitment is then refused
        # (``gpu_model_unknown``) since there is nothing to hold it to.
        basis = (
            found[1].basis_tflops if found else min(r.basis_tflops for r in GPU_REFERENCE.values())
        )
        n = gpu_matrix_n(vram_bytes, policy.gpu_max_n)
        rate = policy.gpu_efficiency * basis * 1e12
        per_gpu = math.ceil(policy.gpu_target_s * rate / proof.work_ops(n, 1))
        rounds = min(min(max(per_gpu, 1), policy.max_rounds) * gpu_count, MAX_ROUNDS)
        expected = proof.work_ops(n, rounds) / (rate * gpu_count)
        return ChallengePlan(
            kind="gpu",
            n=n,
            rounds=rounds,
            deadline_s=policy.slack * expected + policy.latency_allowance_s,
            expected_s=expected,
            reference=found[0] if found else None,
            basis_tflops=basis,
        )
    n = _power_of_two_at_most(min(max(policy.cpu_n, proof.MIN_N), proof.MAX_N))
    rounds = max(policy.cpu_rounds, 1)
    expected = proof.work_ops(n, rounds) / (CPU_FLOOR_GFLOPS_PER_CORE * 1e9 * max(cpu_cores, 1))
    deadline = max(policy.slack * expected, policy.cpu_min_deadline_s)
    return ChallengePlan(
        kind="cpu",
        n=n,
        rounds=rounds,
        deadline_s=deadline + policy.latency_allowance_s,
        expected_s=expected,
        reference=None,
        basis_tflops=None,
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """``reason`` is None when the proof passed; ``detail`` explains a failure in numbers."""

    reason: str | None
    score: float = 0.0
    """Server-measured GFLOP/s (work / time from challenge to commitment) when passed."""
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.reason is None


def _reported(report: ProofReport) -> str:
    t = report.timings
    return (
        f"The agent reported {t.gemm_s:.3f} s, {t.gflops:,.0f} GFLOP/s on {report.kind} "
        f"({report.engine or 'unknown engine'}, {report.device_model!r}); self-reported, "
        "not trusted."
    )


def judge_commitment(
    plan: ChallengePlan,
    *,
    measured_s: float,
    report: ProofReport,
    replayed: bool,
    declared_gpu_model: str | None,
    declared_vram_bytes: int,
    telemetry_gpu_memory: list[int] | None,
    cpu_cores: int,
) -> Verdict | None:
    """The verdict a commitment already decides (a failure), or None: open the blocks.

    In order: a root this device sent before (``proof_replayed``); timings that are not
    numbers or beyond the declared hardware (``timing_implausible``: a lie the agent told);
    a GPU model not in the reference table (``gpu_model_unknown``); declared GPU memory that
    the model never has or that NVML does not see (``vram_mismatch``), or that the agent
    itself could not allocate (``vram_alloc_failed``); the deadline (``proof_deadline_missed``).
    """
    t = report.timings
    if replayed:
        return Verdict(
            "proof_replayed", 0.0, "The commitment repeats one sent for an earlier challenge."
        )
    numbers = (t.gemm_s, t.gflops, t.h2d_gbps or 0.0)
    if not all(math.isfinite(x) for x in numbers):
        return Verdict("timing_implausible", 0.0, "Timings must be finite numbers.")
    found = lookup(declared_gpu_model) if declared_gpu_model else None
    if plan.kind == "gpu":
        if found is None:
            return Verdict(
                "gpu_model_unknown",
                0.0,
                f"{declared_gpu_model!r} is not in the reference table; nothing to hold it to.",
            )
        ref = found[1]
        fastest = max(ref.fp32, ref.tf32 or 0.0, ref.fp16, ref.int8 or 0.0) * 1000
        if t.gflops > REPORTED_MAX_FACTOR * fastest:
            return Verdict(
                "timing_implausible",
                0.0,
                f"Reported {t.gflops:,.0f} GFLOP/s; a {declared_gpu_model} peaks at "
                f"{fastest:,.0f} in its fastest mode.",
            )
        reason = vram_claim_refuted(
            declared_gpu_model or "", declared_vram_bytes, telemetry_gpu_memory
        )
        if reason:
            return Verdict("vram_mismatch", 0.0, reason)
        if t.vram_alloc_ok is False:
            return Verdict(
                "vram_alloc_failed", 0.0, "The agent could not allocate the declared memory."
            )
    elif t.gflops > CPU_MAX_GFLOPS_PER_CORE * max(cpu_cores, 1):
        return Verdict(
            "timing_implausible",
            0.0,
            f"Reported {t.gflops:,.0f} GFLOP/s from {cpu_cores} CPU cores.",
        )
    if measured_s > plan.deadline_s:
        return Verdict(
            "proof_deadline_missed",
            0.0,
            f"The commitment arrived {measured_s:.2f} s after the challenge; "
            f"{_allowed(plan, declared_gpu_model, cpu_cores)} {_reported(report)}",
        )
    return None


def _allowed(plan: ChallengePlan, declared_gpu_model: str | None, cpu_cores: int) -> str:
    if plan.kind == "gpu":
        return (
            f"{declared_gpu_model} is allowed {plan.deadline_s:.2f} s "
            f"({plan.basis_tflops:,.1f} TFLOP/s reference)."
        )
    return f"{cpu_cores} CPU cores are allowed {plan.deadline_s:.2f} s."


def vram_claim_refuted(
    declared_gpu_model: str, declared_vram_bytes: int, telemetry_gpu_memory: list[int] | None
) -> str | None:
    """Why the declared GPU memory cannot be true, or None.

    The proof itself does not measure memory (its working set is far smaller than a large
    GPU's, and a smaller GPU could regenerate its inputs). What is checked: the declared size
    against the largest the model ships with, and against what NVML reports in the agent's
    heartbeats (trusted: a modified agent can fake both consistently).
    """
    if declared_vram_bytes <= 0:
        return None
    found = lookup(declared_gpu_model)
    if found is not None:
        most = found[1].memory_gb * 1e9 * (1 + VRAM_TOLERANCE)
        if declared_vram_bytes > most:
            return (
                f"Declared {declared_vram_bytes / 2**30:.0f} GiB per GPU; a "
                f"{normalize_model(declared_gpu_model)} has at most {found[1].memory_gb:g} GB."
            )
    if telemetry_gpu_memory:
        smallest = min(telemetry_gpu_memory)
        if smallest < (1 - VRAM_TOLERANCE) * declared_vram_bytes:
            return (
                f"Declared {declared_vram_bytes / 2**30:.0f} GiB per GPU; NVML on the device "
                f"reports {smallest / 2**30:.0f} GiB."
            )
    return None


# --- choosing what to open, and checking it ------------------------------------------------------


def pick_blocks(plan: ChallengePlan, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """Blocks to open, ``(round, block)``, at most ``MAX_OPENINGS``: every round gets its share
    (a skipped round is caught) and the remainder goes to random rounds; with more rounds than
    openings, distinct random rounds get one each. Distinct blocks within a round."""
    per_round = proof.blocks_per_round(plan.n)
    count = min(max(count, plan.rounds), MAX_OPENINGS)
    if count >= plan.rounds:
        shares = [count // plan.rounds] * plan.rounds
        extra = rng.sample(range(plan.rounds), count % plan.rounds)
    else:
        shares = [0] * plan.rounds
        extra = rng.sample(range(plan.rounds), count)
    for t in extra:
        shares[t] += 1
    picked: list[tuple[int, int]] = []
    for t, share in enumerate(shares):
        picked.extend((t, b) for b in rng.sample(range(per_round), min(share, per_round)))
    return picked


MIN_CHECKS_PER_BLOCK = 2
"""A block the agent did not compute survives its checks with probability 2^-checks."""


def pick_checks(
    plan: ChallengePlan, blocks: list[tuple[int, int]], entries: int, rng: random.Random
) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Positions ``(row within the block, column)`` whose bit the server recomputes: about
    ``entries`` in all, spread over the blocks, at least ``MIN_CHECKS_PER_BLOCK`` each."""
    rows = proof.leaf_rows(plan.n)
    per_block = max(MIN_CHECKS_PER_BLOCK, -(-entries // max(len(blocks), 1)))
    return {
        b: [(rng.randrange(rows), rng.randrange(plan.n)) for _ in range(per_block)] for b in blocks
    }


def check_openings(
    seed: int,
    plan: ChallengePlan,
    root_hex: str,
    measured_s: float,
    openings: list[BlockOpening],
    checks: dict[tuple[int, int], list[tuple[int, int]]],
) -> Verdict:
    """Check every opened block against the root, then the chosen bits against the seed.

    CPU work: O(n) per checked bit plus one sha256 per block and per path step.
    """
    n, rows = plan.n, proof.leaf_rows(plan.n)
    size = rows * n // 8
    depth = proof.tree_depth(proof.leaf_count(n, plan.rounds))
    root = bytes.fromhex(root_hex)
    opened: dict[tuple[int, int], bytes] = {}
    for o in openings:
        key = (o.round, o.block)
        data = proof.decode_block(o.data)
        if key not in checks or key in opened:
            return Verdict("proof_commitment_mismatch", 0.0, f"Block {key} was not requested.")
        if data is None or len(data) != size or len(o.path) != depth:
            return Verdict(
                "proof_commitment_mismatch", 0.0, f"Block {key} is not a block of this proof."
            )
        path = [bytes.fromhex(h) for h in o.path]
        leaf = proof.leaf_hash(data)
        if proof.root_from_path(leaf, proof.leaf_index(n, o.round, o.block), path) != root:
            return Verdict(
                "proof_commitment_mismatch",
                0.0,
                f"Block {key} does not hash to the committed root: it was not what the agent "
                "committed to before it knew which blocks would be checked.",
            )
        opened[key] = data
    missing = [k for k in checks if k not in opened]
    if missing:
        return Verdict("proof_commitment_mismatch", 0.0, f"Block {missing[0]} was not opened.")
    by_round: dict[int, list[tuple[int, int, int]]] = {}
    for (t, b), positions in checks.items():
        by_round.setdefault(t, []).extend((b, r, c) for r, c in positions)
    wrong = total = 0
    for t, found in by_round.items():
        want = proof.expected_residues(seed, n, t, [(b * rows + r, c) for b, r, c in found])
        for (b, r, c), residue in zip(found, want, strict=True):
            total += 1
            wrong += proof.bit_at(opened[(t, b)], n, r, c) != residue & 1
    if wrong:
        return Verdict(
            "proof_sample_mismatch",
            0.0,
            f"{wrong} of {total} checked entries were wrong: the committed products were not "
            "computed.",
        )
    return Verdict(None, plan.work_ops / max(measured_s, 1e-9) / 1e9)


# --- re-verification ---------------------------------------------------------------------------


def reverification_window(interval_s: float) -> tuple[float, float]:
    """Ages of the last accepted proof between which a device is re-verified at a random
    time: half to one and a half intervals."""
    return 0.5 * interval_s, 1.5 * interval_s


def reverification_chance(round_s: float, interval_s: float) -> float:
    """Chance per round (every ``round_s``) that a device inside its window is challenged:
    memoryless, so the next challenge cannot be predicted, and on average it comes one
    interval after the last proof."""
    low, high = reverification_window(interval_s)
    return min(1.0, 2 * round_s / max(high - low, round_s))
