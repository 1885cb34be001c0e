"""Proofs of compute for tests: the honest agent's prover, the attackers' provers, and the
three-step exchange (start, commit, reveal) driven over an HTTP client.

The attackers are ``tesai.agent.proof.Prover``s, so the real agent runs them too
(``tests.devices.adversary_agent``): everything but the proof is the real agent.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from tesai.agent.proof import HonestProver, ProofWork, commit, numpy_rounds, open_blocks
from tesai.protocol import proof
from tesai.protocol.proof import PackedBits
from tesai.protocol.v1 import (
    BlockOpening,
    BlockRef,
    ProofChallenge,
    ProofCommitment,
    ProofReport,
    ProofReveal,
    ProofStart,
    ProofTimings,
    VerifyArgs,
)

H100 = "NVIDIA H100 80GB HBM3"
START = "/api/v1/agent/verification/start"
COMMIT = "/api/v1/agent/verification/commit"
REVEAL = "/api/v1/agent/verification/reveal"


def fast_h100_report() -> ProofReport:
    """What a liar says: an H100 at H100 speed."""
    return ProofReport(
        kind="gpu",
        device_model=H100,
        engine="torch",
        timings=ProofTimings(gemm_s=0.01, gflops=40_000.0, vram_alloc_ok=True, h2d_gbps=25.0),
    )


def honest_cpu() -> HonestProver:
    return HonestProver(use_gpu=False)


def cpu_report() -> ProofReport:
    return ProofReport(
        kind="cpu",
        device_model="Test CPU",
        engine="numpy",
        timings=ProofTimings(gemm_s=0.05, gflops=2.0),
    )


def _tree(n: int, bits: list[PackedBits], report: ProofReport) -> ProofWork:
    """A consistent commitment to whatever ``bits`` are."""

    def produce(take: Callable[[int, PackedBits], None]) -> None:
        for t, b in enumerate(bits):
            take(t, b)

    bits, levels = commit(n, len(bits), produce)
    return ProofWork(n=n, bits=bits, levels=levels, report=report)


def true_block(seed: int, n: int, t: int, block: int) -> PackedBits:
    """The committed bits of one block, computed alone: O(rows · n²), not the whole product."""
    rows = proof.leaf_rows(n)
    a = proof.round_rows(seed, proof.MATRIX_A, t, list(range(block * rows, (block + 1) * rows)), n)
    b = proof.round_rows(seed, proof.MATRIX_B, t, list(range(n)), n)
    return proof.commit_bits(a.astype(np.float32) @ b.astype(np.float32).T)


@dataclass
class SampledEntriesOnly:
    """A CPU host claiming an H100 that does no products: it commits at once to a tree it
    did not compute, then computes only the entries it is asked to open."""

    seed: int = 0

    def prepare(self, args: VerifyArgs) -> None:
        pass

    def compute(self, challenge: ProofChallenge) -> ProofWork:
        self.seed = challenge.seed
        n = challenge.matrix_n
        zeros = [np.zeros((n, n // 8), dtype=np.uint8) for _ in range(challenge.rounds)]
        return _tree(n, zeros, fast_h100_report())

    def open(self, work: ProofWork, blocks: list[BlockRef]) -> list[BlockOpening]:
        out = open_blocks(work, blocks)  # the paths of the committed (empty) tree
        return [
            o.model_copy(
                update={"data": proof.encode_block(true_block(self.seed, work.n, o.round, o.block))}
            )
            for o in out
        ]


@dataclass
class WrongProducts:
    """Commits consistently to products of the wrong matrices (another seed)."""

    def prepare(self, args: VerifyArgs) -> None:
        pass

    def compute(self, challenge: ProofChallenge) -> ProofWork:
        n = challenge.matrix_n
        other = [b for _, b in numpy_rounds(challenge.seed + 1, n, range(challenge.rounds))]
        return _tree(n, other, cpu_report())

    def open(self, work: ProofWork, blocks: list[BlockRef]) -> list[BlockOpening]:
        return open_blocks(work, blocks)


@dataclass
class FabricatedTimings:
    """Computes every product for real (on the CPU) and says it took an H100's time."""

    honest: HonestProver = field(default_factory=honest_cpu)

    def prepare(self, args: VerifyArgs) -> None:
        self.honest.prepare(args)

    def compute(self, challenge: ProofChallenge) -> ProofWork:
        work = self.honest.compute(challenge)
        work.report = fast_h100_report()
        return work

    def open(self, work: ProofWork, blocks: list[BlockRef]) -> list[BlockOpening]:
        return open_blocks(work, blocks)


def _helper_compute(seed: int, n: int, rounds: int, delay_s: float) -> list[PackedBits]:
    time.sleep(delay_s)  # the way to the second machine and back
    return [b for _, b in numpy_rounds(seed, n, range(rounds))]


@dataclass
class ForwardToHelper:
    """Forwards the challenge to a second machine (another process, ``delay_s`` away) and
    commits to what comes back."""

    delay_s: float = 4.0

    def prepare(self, args: VerifyArgs) -> None:
        pass

    def compute(self, challenge: ProofChallenge) -> ProofWork:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as helper:
            bits = helper.submit(
                _helper_compute,
                challenge.seed,
                challenge.matrix_n,
                challenge.rounds,
                self.delay_s,
            ).result()
        return _tree(challenge.matrix_n, bits, cpu_report())

    def open(self, work: ProofWork, blocks: list[BlockRef]) -> list[BlockOpening]:
        return open_blocks(work, blocks)


@dataclass
class ReplayFirstProof:
    """Proves honestly once, then answers every later challenge with that first proof."""

    honest: HonestProver = field(default_factory=honest_cpu)
    first: ProofWork | None = None

    def prepare(self, args: VerifyArgs) -> None:
        self.honest.prepare(args)

    def compute(self, challenge: ProofChallenge) -> ProofWork:
        if self.first is None:
            self.first = self.honest.compute(challenge)
        return self.first

    def open(self, work: ProofWork, blocks: list[BlockRef]) -> list[BlockOpening]:
        return open_blocks(work, blocks)


@dataclass
class Exchange:
    """What happened in one proof exchange."""

    challenge: ProofChallenge
    work: ProofWork
    commit: dict[str, Any]
    outcome: dict[str, Any]
    responses: list[httpx.Response] = field(default_factory=list)


async def prove(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    verify_args: dict[str, Any],
    prover: Any = None,
    *,
    before_commit: Callable[[ProofChallenge], Awaitable[None]] | None = None,
) -> Exchange:
    """Run start → compute → commit → open → reveal like the agent does; the final outcome."""
    prover = prover or honest_cpu()
    args = VerifyArgs.model_validate(verify_args)
    prover.prepare(args)
    r = await client.post(
        START,
        json=ProofStart(challenge_id=args.challenge_id).model_dump(mode="json"),
        **_h(headers),
    )
    assert r.status_code == 200, r.text
    challenge = ProofChallenge.model_validate(r.json())
    work = prover.compute(challenge)
    if before_commit is not None:
        await before_commit(challenge)
    body = ProofCommitment(challenge_id=args.challenge_id, root=work.root, report=work.report)
    c = await client.post(COMMIT, content=body.model_dump_json(), **_h(headers))
    assert c.status_code == 200, c.text
    reply = c.json()
    if reply["outcome"] is not None:
        return Exchange(challenge, work, reply, reply["outcome"], [r, c])
    blocks = [BlockRef.model_validate(b) for b in reply["blocks"]]
    reveal = ProofReveal(challenge_id=args.challenge_id, openings=prover.open(work, blocks))
    v = await client.post(REVEAL, content=reveal.model_dump_json(), **_h(headers))
    assert v.status_code == 200, v.text
    return Exchange(challenge, work, reply, v.json(), [r, c, v])


def _h(headers: dict[str, str]) -> dict[str, Any]:
    return {"headers": headers | {"content-type": "application/json"}}


def prove_sync(client: httpx.Client, headers: dict[str, str], verify_args: dict[str, Any]) -> Any:
    """``prove`` with the honest CPU prover over a blocking client; the final outcome."""
    prover = honest_cpu()
    args = VerifyArgs.model_validate(verify_args)
    prover.prepare(args)
    start = ProofStart(challenge_id=args.challenge_id)
    r = client.post(START, content=start.model_dump_json(), **_h(headers))
    assert r.status_code == 200, r.text
    work = prover.compute(ProofChallenge.model_validate(r.json()))
    body = ProofCommitment(challenge_id=args.challenge_id, root=work.root, report=work.report)
    c = client.post(COMMIT, content=body.model_dump_json(), **_h(headers))
    assert c.status_code == 200, c.text
    if c.json()["outcome"] is not None:
        return c.json()["outcome"]
    blocks = [BlockRef.model_validate(b) for b in c.json()["blocks"]]
    reveal = ProofReveal(challenge_id=args.challenge_id, openings=prover.open(work, blocks))
    v = client.post(REVEAL, content=reveal.model_dump_json(), **_h(headers))
    assert v.status_code == 200, v.text
    return v.json()
