"""`tesai job …` and `tesai cluster show` as a customer types them: what reaches the job's
shell, what the commands say and the exit status they end with.

The CLI runs as a subprocess against the API on a real socket; the cluster's head is a stand-in
for Ray's Jobs API that runs each entrypoint through a real shell the way Ray does
(tests/fixtures/ray_head.py). The same commands against real Ray: tests/e2e/test_job_cli.py.
"""

from __future__ import annotations

import json
import shlex
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from tesai.clusters.models import Cluster, ClusterNode, ClusterStatus, NodeRole, NodeState
from tesai.clusters.service import record_event
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.clusters.conftest import AddDevice, Grant
from tests.fixtures.auth import MakeUser
from tests.fixtures.cli import Cli, explain, serve_api
from tests.fixtures.ray_head import FakeRayHead, fake_ray_head


@pytest.fixture
def head() -> Iterator[FakeRayHead]:
    with fake_ray_head() as h:
        yield h


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    with serve_api(settings) as url:
        yield url


async def _cluster_with_head(
    client: httpx.AsyncClient,
    runtime: Runtime,
    headers: dict[str, str],
    add_device: AddDevice,
    head: FakeRayHead,
) -> str:
    """A running one-node cluster of the customer whose head's dashboard is ``head``."""
    await add_device(gpu_model=None, gpus=0)
    r = await client.post(
        "/api/v1/clusters", json={"request": {"nodes": 1, "duration_s": 3600}}, headers=headers
    )
    assert r.status_code == 201, r.text
    cid = uuid.UUID(r.json()["id"])
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(Cluster).where(Cluster.id == cid).values(status=ClusterStatus.running)
        )
        await s.execute(
            update(ClusterNode)
            .where(ClusterNode.cluster_id == cid, ClusterNode.role == NodeRole.head)
            .values(state=NodeState.running, dashboard_url=head.url)
        )
    return str(cid)


@pytest.fixture
async def customer(
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    grant: Grant,
    add_device: AddDevice,
    head: FakeRayHead,
    api_url: str,
    tmp_path: Path,
) -> tuple[Cli, str]:
    """The CLI of a funded customer, logged in, and their running cluster's id."""
    user, headers = await make_user()
    await grant(user.id, 50_000_000)
    cli = Cli(api_url, tmp_path / "config")
    cli.login(headers)
    return cli, await _cluster_with_head(client, runtime, headers, add_device, head)


def test_each_argument_after_the_double_dash_reaches_the_job_as_typed(
    customer: tuple[Cli, str], head: FakeRayHead
) -> None:
    cli, cluster = customer
    code = "import sys; print('argv', sys.argv[1:]); print('a;b')"
    done = cli("job", "submit", "--cluster", cluster, "--follow", "--", "python", "-c", code, "x y")
    assert done.returncode == 0, explain(done)
    assert "argv ['x y']\na;b\n" in done.stdout, explain(done)
    assert "SUCCEEDED" in done.stderr

    # One argument with spaces is a shell command as given: the pipe is the shell's.
    done = cli("job", "submit", "--cluster", cluster, "--follow", "--", "echo one two | tr a-z A-Z")
    assert done.returncode == 0, explain(done)
    assert done.stdout == "ONE TWO\n", explain(done)
    # What the job was given, as `tesai job list` shows it.
    assert sorted(j.entrypoint for j in head.jobs.values()) == sorted(
        [shlex.join(["python", "-c", code, "x y"]), "echo one two | tr a-z A-Z"]
    )


def test_follow_exits_non_zero_when_the_job_fails_and_says_so(
    customer: tuple[Cli, str],
) -> None:
    cli, cluster = customer
    # Its output, which Ray quotes in the job's message, looks like markup to a terminal library.
    failing = ["python", "-c", "import sys; print('about to fail [/bold]'); sys.exit(3)"]
    done = cli("job", "submit", "--cluster", cluster, "--follow", "--json", "--", *failing)
    assert done.returncode == 1, explain(done)
    job = json.loads(done.stdout)  # --json: stdout is the job as it ended, logs on stderr
    assert job["status"] == "FAILED"
    assert "about to fail [/bold]" in done.stderr
    assert f"Job {job['id']} FAILED: Job entrypoint command failed with exit code 3" in " ".join(
        done.stderr.split()
    )

    logs = cli("job", "logs", job["id"], "--cluster", cluster, "--follow")
    assert logs.returncode == 1, explain(logs)
    assert logs.stdout == "about to fail [/bold]\n"  # stdout: the job's output alone
    assert "FAILED" in logs.stderr


def test_stop_says_the_job_stopped_and_following_it_exits_3(
    customer: tuple[Cli, str],
) -> None:
    cli, cluster = customer
    submitted = cli("job", "submit", "--cluster", cluster, "--", "sleep", "300")
    assert submitted.returncode == 0, explain(submitted)
    job_id = submitted.stdout.split()[1]
    assert f"Job {job_id} submitted" in submitted.stdout

    stopped = cli("job", "stop", job_id, "--cluster", cluster)
    assert stopped.returncode == 0, explain(stopped)
    assert f"Job {job_id} stopped (STOPPED)." in stopped.stdout

    again = cli("job", "stop", job_id, "--cluster", cluster)
    assert again.returncode == 0, explain(again)
    assert f"Job {job_id} had already ended: STOPPED." in again.stdout

    followed = cli("job", "logs", job_id, "--cluster", cluster, "--follow")
    assert followed.returncode == 3, explain(followed)
    assert f"Job {job_id} STOPPED" in followed.stderr


def test_the_readmes_quoted_job_command_runs_as_printed(customer: tuple[Cli, str]) -> None:
    cli, cluster = customer
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    [line] = [
        x for x in readme.splitlines() if x.startswith("tesai job submit") and "python -c" in x
    ]
    argv = shlex.split(line.replace("CLUSTER_ID", cluster))
    done = cli(*argv[1:], timeout=300)
    assert done.returncode == 0, explain(done)
    assert done.stdout.strip() == version("ray")
    assert "SUCCEEDED" in done.stderr


async def test_cluster_show_prints_rays_log_lines_in_an_event_as_they_are(
    customer: tuple[Cli, str], runtime: Runtime
) -> None:
    cli, cluster = customer
    line = "[2026-12-07 10:00:01] Module MetricsHead failed to start [/bold]"
    async with runtime.sessionmaker.begin() as s:
        row = await s.get(Cluster, uuid.UUID(cluster))
        assert row is not None
        record_event(s, row, "head_lost", detail=line)
    done = cli("cluster", "show", cluster, COLUMNS="200")
    assert done.returncode == 0, explain(done)
    assert line in done.stdout


async def test_cpu_is_counted_in_nodes_and_every_listed_price_says_the_fee(
    customer: tuple[Cli, str], add_device: AddDevice
) -> None:
    cli, _ = customer  # their running cluster: one CPU node
    await add_device(gpu_model=None, gpus=0, price=1_000_000)
    await add_device(gpu_model="NVIDIA A100", gpus=2, price=2_000_000)

    listed = cli("cluster", "list", COLUMNS="200")
    assert listed.returncode == 0, explain(listed)
    assert "1 CPU node " in listed.stdout, explain(listed)
    assert "GPU" not in listed.stdout
    assert "1 CPU nodes" not in listed.stdout

    offers = cli("offers", COLUMNS="200")
    assert offers.returncode == 0, explain(offers)
    out = offers.stdout
    assert "2 GPUs on 1 device" in out, explain(offers)
    assert "2 × NVIDIA A100" in out
    assert "$2.00/GPU-h" in out
    assert "$1.00/node-h" in out
    assert "$1.00/GPU-h" not in out  # a CPU price is never per GPU-hour
    assert "Listed prices are the providers'; a 10 % platform fee is added" in out

    quoted = cli("quote", "--nodes", "1", COLUMNS="200")
    assert quoted.returncode == 0, explain(quoted)
    assert "$1.00/h listed + $0.10/h platform fee = $1.10/h" in quoted.stdout, explain(quoted)
