"""CLI start-up: wall time of `tesai --help` and `tesai cluster list`, medians of N runs.

Starts `tesai server` (one worker) against a scratch PostgreSQL database, signs a customer up
and logs the CLI in (`tesai login`, a private config dir), then runs each command N times as
a user types it, alternating, and prints the medians. `cluster list` makes one real API call,
so its figure is start-up + one round trip + the table.

Two cases:

- **bytecode**: Python's compiled modules are cached, as after `pip install` (which compiles
  them); the cache lives in a scratch ``PYTHONPYCACHEPREFIX`` and one unmeasured run fills it.
- **no bytecode**: ``PYTHONDONTWRITEBYTECODE=1`` and no cache, so every run compiles every
  module it imports (what a checkout whose environment sets that variable sees).

Each figure is the median wall time, with the median CPU time (user + system) the command
used: on a busy machine the wall time grows with what else runs, the CPU time hardly.

Goal (issue 15, item 9): ≤ 0.5 s for both commands with bytecode on an idle machine.

    python bench/cli_startup.py [--runs 15] [--src OTHER_CHECKOUT/src] [--json]

``--src`` measures another checkout's CLI with this environment (e.g. a `git archive` of an
older commit), for a before/after comparison on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _util import (
    REDIS_URL,
    delete_redis_prefix,
    free_port,
    machine,
    scratch_database,
    server_process,
)

GOAL_S = 0.5
EMAIL, PASSWORD = "cli-bench@example.com", "cli-bench-password-123"


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds from start to exit of ``argv``, and the CPU seconds (user + system) it
    used; fails if the command fails."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - began
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-2000:]}"
        )
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return elapsed, cpu


def measure(
    commands: dict[str, list[str]], env: dict[str, str], runs: int
) -> dict[str, list[tuple[float, float]]]:
    """``runs`` (wall, CPU) timings per command, alternating, after one unmeasured run of
    each."""
    for argv in commands.values():
        run_once(argv, env)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(run_once(argv, env))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="measured runs per command")
    parser.add_argument("--src", help="measure the tesai package under this directory instead")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    where = machine()  # before the run, so the load average shows what else was running
    port = free_port()
    prefix = f"tesai-bench-{os.getpid()}:"
    scratch = Path(tempfile.mkdtemp(prefix="tesai-bench-cli-"))
    tesai = str(Path(sys.executable).parent / "tesai")
    server_env = {
        "TESAI_HOME": str(scratch / "home"),
        "TESAI_REDIS_URL": REDIS_URL,
        "TESAI_REDIS_PREFIX": prefix,
        "TESAI_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TESAI_RATE_LIMIT_ENABLED": "false",
    }
    cli_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TESAI_", "PYTHONPYCACHEPREFIX"))
    }
    cli_env["XDG_CONFIG_HOME"] = str(scratch / "config")
    cli_env.pop("PYTHONDONTWRITEBYTECODE", None)
    if args.src:
        cli_env["PYTHONPATH"] = str(Path(args.src).resolve())
    commands = {"tesai --help": [tesai, "--help"], "tesai cluster list": [tesai, "cluster", "list"]}
    try:
        with scratch_database() as database_url:
            server_env["TESAI_DATABASE_URL"] = database_url
            argv = [tesai, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            with server_process(argv, server_env, port) as server:
                r = httpx.post(
                    f"{server.base_url}/api/v1/auth/signup",
                    json={"email": EMAIL, "password": PASSWORD},
                    timeout=30,
                )
                r.raise_for_status()
                login = [tesai, "login", "--server", server.base_url, "--email", EMAIL]
                run_once(login, {**cli_env, "TESAI_PASSWORD": PASSWORD})
                cases = {
                    "bytecode": {**cli_env, "PYTHONPYCACHEPREFIX": str(scratch / "pycache")},
                    "no bytecode": {
                        **cli_env,
                        "PYTHONDONTWRITEBYTECODE": "1",
                        "PYTHONPYCACHEPREFIX": str(scratch / "empty-pycache"),
                    },
                }
                results = {case: measure(commands, env, args.runs) for case, env in cases.items()}
    finally:
        delete_redis_prefix(prefix)
        shutil.rmtree(scratch, ignore_errors=True)

    figures = {
        case: {
            name: {
                "median_s": round(statistics.median(w for w, _ in t), 3),
                "min_s": round(min(w for w, _ in t), 3),
                "max_s": round(max(w for w, _ in t), 3),
                "cpu_median_s": round(statistics.median(c for _, c in t), 3),
            }
            for name, t in times.items()
        }
        for case, times in results.items()
    }
    if args.json:
        print(json.dumps({"machine": where, "runs": args.runs, "figures": figures}, indent=2))
        return 0
    print(f"Machine: {where}")
    print(f"CLI: {args.src or 'installed'}; {args.runs} runs per command, medians")
    for case, by_name in figures.items():
        print(f"\n{case}:")
        for name, f in by_name.items():
            goal = ""
            if case == "bytecode":
                goal = "  goal met" if f["median_s"] <= GOAL_S else f"  goal ≤ {GOAL_S} s missed"
            print(
                f"  {name:<20} {f['median_s']:6.3f} s  "
                f"(min {f['min_s']:.3f}, max {f['max_s']:.3f}; CPU {f['cpu_median_s']:.3f} s)"
                f"{goal}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
