"""Money under SIGKILL of the control plane's own processes; prints what the books say.

    .venv/bin/python bench/money_kills.py [--shape production|embedded|both] [--seconds 120]
                                          [--runs 1] [--seed N]

Each run (see ``tests/billing/kills.py``) meters and settles two one-node clusters on real
agents and pays the provider out through a Solana JSON-RPC endpoint over LiteSVM, while the
Celery worker (production shape) or the whole ``tesai up`` process (embedded shape) is
SIGKILLed every 3–12 s and a third of the payout rounds meet an RPC node that answers only
after the client's timeout. Then it checks: every transaction sums to zero, billed seconds ≤
observable healthy seconds per node, no minute billed twice, no usage unsettled while its
hold has money, on-chain transfers = the ledger's paid payouts. Exit status 1 on a problem.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from _util import machine  # noqa: E402
from tests.billing.kills import KillRun  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=["production", "embedded", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    print(machine())
    shapes = ["production", "embedded"] if args.shape == "both" else [args.shape]
    failed = 0
    for i in range(args.runs):
        for shape in shapes:
            seed = args.seed + i
            work = Path(tempfile.mkdtemp(prefix="kills-"))
            started = time.monotonic()
            report = KillRun(shape, seconds=args.seconds, seed=seed, workdir=work).run()
            print(f"== {shape} run {i + 1}, seed {seed}, {time.monotonic() - started:.0f} s in all")
            for line in report.lines():
                print("  " + line)
            if report.problems:
                failed += 1
                print(f"  logs kept in {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
