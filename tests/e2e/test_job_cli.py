"""`tesai job submit --working-dir` end to end: the customer's CLI, a real server, a real
agent running a one-node Ray cluster.

The folder is packaged by Ray's own client code and uploaded through our authenticated Ray
proxy; the job imports a module from it. `tesai job logs --follow` streams its output until it
ends, and `tesai job status` reports SUCCEEDED.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import textwrap
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from tesai.agent.ray_node import find_processes
from tesai.runtime import Runtime
from tests.e2e.conftest import MakePool
from tests.embedded.helpers import TESAI, clean_env
from tests.fixtures.auth import MakeUser
from tests.fixtures.cluster import funded_customer, no_cluster_processes
from tests.fixtures.processes import ServerProcess

# Ray starts in seconds on an idle host, in minutes on a loaded 2-core CI runner.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _cli(env: dict[str, str], cwd: Path, *args: str, timeout: float = 120) -> str:
    """Run `tesai ARGS` as a customer would; returns stdout, fails with its output."""
    done = subprocess.run(
        [TESAI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (
        f"tesai {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


async def test_job_submit_uploads_the_working_dir_and_follows_its_logs(
    server: ServerProcess,
    make_pool: MakePool,
    runtime: Runtime,
    make_user: MakeUser,
    tmp_path: Path,
) -> None:
    await make_pool(1, first_port=35000)
    email, password = "cli-customer@example.com", "a long enough password"
    await funded_customer(runtime, make_user, email=email, password=password)
    env = clean_env(XDG_CONFIG_HOME=str(tmp_path / "config"), TESAI_PASSWORD=password)
    _cli(env, tmp_path, "login", "--server", server.url, "--email", email)

    created: dict[str, Any] = json.loads(
        _cli(env, tmp_path, "cluster", "create", "--nodes", "1", "--json", timeout=600)
    )
    assert created["status"] == "running", created
    cluster_id = created["id"]

    project = tmp_path / "project"
    project.mkdir()
    (project / "helper.py").write_text("def greet(who):\n    return f'hello {who} from helper'\n")
    (project / "train.py").write_text(
        textwrap.dedent(
            """
            import ray
            import helper

            ray.init()

            @ray.remote
            def square(x):
                return x * x

            total = sum(ray.get([square.remote(i) for i in range(5)]))
            print("TRAIN", helper.greet("tesai"), total)
            """
        )
    )
    job: dict[str, Any] = json.loads(
        _cli(
            env,
            tmp_path,
            "job",
            "submit",
            "--cluster",
            cluster_id,
            "--working-dir",
            str(project),
            "--json",
            "--",
            "python",
            "train.py",
        )
    )
    assert job["entrypoint"] == "python train.py"

    logs = _cli(env, tmp_path, "job", "logs", job["id"], "--cluster", cluster_id, "--follow")
    assert "TRAIN hello tesai from helper 30" in logs
    status = _cli(env, tmp_path, "job", "status", job["id"], "--cluster", cluster_id)
    assert f"{job['id']}: SUCCEEDED" in status
    listed = json.loads(_cli(env, tmp_path, "job", "list", "--cluster", cluster_id, "--json"))
    assert [j["id"] for j in listed] == [job["id"]]

    # The README's quoted command, as printed: the arguments reach Ray's shell as typed.
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    [line] = [
        x for x in readme.splitlines() if x.startswith("tesai job submit") and "python -c" in x
    ]
    quoted = _cli(env, tmp_path, *shlex.split(line.replace("CLUSTER_ID", cluster_id))[1:])
    assert quoted.strip().endswith(version("ray")), quoted
    # A failing job: --follow exits 1 and says why.
    failed = subprocess.run(
        [TESAI, "job", "submit", "-c", cluster_id, "--follow", "--", "python", "-c", "exit(3)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    said = " ".join(failed.stderr.split())  # rich wraps long lines
    assert "FAILED: Job entrypoint command failed with exit code 3" in said, said

    # Without an entrypoint the CLI refuses before calling anything.
    refused = subprocess.run(
        [TESAI, "job", "submit", "--cluster", cluster_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2

    _cli(env, tmp_path, "cluster", "terminate", cluster_id)
    await no_cluster_processes(lambda: find_processes(f"{cluster_id}/"), 60)
