"""SIGKILL of the control plane's processes during metering, settlement and payouts.

Each test is one short ``KillRun`` (``tests/billing/kills.py``): real agents and Ray, a real
Solana runtime behind a JSON-RPC endpoint that sometimes answers after the client's timeout,
and the process that meters, settles and pays killed at random moments. The books must
balance afterwards: see ``KillRun.check`` for the five invariants. Longer runs:
``bench/money_kills.py``.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.billing.kills import KillRun

# Its own waits bound it (agents, clusters, the wind-down): set-up on a loaded machine takes
# minutes, more than the suite's default limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("shape", ["production", "embedded"])
def test_money_survives_sigkill_of_the_metering_process(shape: str, tmp_path: Path) -> None:
    seed = random.randrange(10**6)
    report = KillRun(shape, seconds=45, seed=seed, workdir=tmp_path).run()
    assert report.kills >= 2, report.lines()
    assert report.billed_seconds, report.lines()
    assert report.problems == [], f"seed {seed}:\n" + "\n".join(report.lines())
