"""Proof of compute on this host's GPUs: the agent's honest prover against the challenge the
control plane would send for them, timed, and checked the way the control plane checks it.

Run on a GPU host with torch and CUDA (what a GPU check should run). Prints, per run: the
plan (n × rounds, operations, expected time, deadline), the time from seed to root on this host
(what the control plane would measure, less the network), the share of the model's reference
rate that is (the calibration's assumption is ``proof_gpu_efficiency``, 0.5), and the server's
verdict on the opened blocks. Exits 2 without a CUDA GPU.

    python bench/proof_gpu.py [--runs 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid

from _util import machine

from tesai.agent.proof import HonestProver, load_torch_cuda
from tesai.devices.gpu_reference import lookup
from tesai.devices.verification import (
    ProofPolicy,
    check_openings,
    pick_blocks,
    pick_checks,
    plan_challenge,
)
from tesai.protocol.v1 import BlockRef, ProofChallenge, VerifyArgs
from tesai.settings import Settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch = load_torch_cuda()
    if torch is None:
        print("no CUDA GPU visible to torch: nothing to measure", file=sys.stderr)
        return 2
    name = str(torch.cuda.get_device_name(0))
    count = int(torch.cuda.device_count())
    memory = int(torch.cuda.mem_get_info(0)[1])
    print(f"machine: {machine()}; {count} × {name}, {memory / 2**30:.0f} GiB", file=sys.stderr)
    policy = ProofPolicy.from_settings(Settings())
    plan = plan_challenge(policy, gpu_model=name, gpu_count=count, vram_bytes=memory, cpu_cores=1)
    found = lookup(name)
    basis = found[1].basis_tflops if found else float("nan")
    print(
        f"plan: {plan.n} × {plan.rounds} rounds, {plan.work_ops:.3g} operations, expected "
        f"{plan.expected_s:.2f} s, deadline {plan.deadline_s:.2f} s ({found[0] if found else '?'})",
        file=sys.stderr,
    )
    prover = HonestProver(use_gpu=True)
    runs = []
    for i in range(args.runs):
        challenge = ProofChallenge(
            challenge_id=uuid.uuid4(),
            proof_version=2,
            seed=random.SystemRandom().randrange(2**63),
            matrix_n=plan.n,
            rounds=plan.rounds,
            deadline_s=plan.deadline_s,
        )
        prover.prepare(VerifyArgs(challenge_id=challenge.challenge_id, matrix_n=plan.n))
        start = time.perf_counter()
        work = prover.compute(challenge)
        seconds = time.perf_counter() - start
        rng = random.Random(i)
        blocks = pick_blocks(plan, policy.sample_blocks, rng)
        openings = prover.open(work, [BlockRef(round=t, block=b) for t, b in blocks])
        checks = pick_checks(plan, blocks, policy.checked_entries, rng)
        verdict = check_openings(challenge.seed, plan, work.root, seconds, openings, checks)
        share = plan.work_ops / seconds / 1e12 / (basis * count)
        run = {
            "seconds": seconds,
            "deadline_s": plan.deadline_s,
            "share_of_reference": share,
            "engine": work.report.engine,
            "verdict": verdict.reason or "passed",
        }
        runs.append(run)
        print(
            f"run {i + 1}: {seconds:.2f} s on {work.report.engine} ({100 * share:.0f} % of the "
            f"reference rate), {'inside' if seconds < plan.deadline_s else 'PAST'} the deadline; "
            f"verdict: {run['verdict']}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps({"gpu": name, "count": count, "plan": plan.to_params(), "runs": runs}))
    return 0 if all(r["verdict"] == "passed" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
