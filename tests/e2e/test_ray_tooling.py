"""The README's plain Ray commands for customers, run exactly as printed, from a separate
virtual environment that has nothing but ``ray[default]`` at the pinned version, against a
real server and a real agent's one-node Ray cluster.

``ray job submit … --working-dir . -- python train.py`` (without ``--no-wait``) uploads a
5 MB working directory (five times the API's body limit) through the proxy, then tails the
job's logs over a WebSocket until it ends, and exits 0. ``ray job logs --follow`` and ``ray
job list`` work the same way, and the job shows in ``tesai job list`` marked as submitted
with Ray.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest

from tesai.runtime import Runtime
from tests.e2e.conftest import MakePool
from tests.embedded.helpers import TESAI, clean_env
from tests.fixtures.auth import MakeUser
from tests.fixtures.cluster import funded_customer
from tests.fixtures.processes import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

README = Path(__file__).parents[2] / "README.md"


def _install(venv: Path, requirement: str) -> str | None:
    """Install ``requirement`` into ``venv``; None when it worked, else why not."""
    python = str(venv / "bin" / "python")
    uv = Path(sys.executable).with_name("uv")
    tries: list[list[str]] = []
    if uv.exists():  # from uv's cache when it has the wheels (the project's own install)
        tries += [
            [str(uv), "pip", "install", "-q", "-p", python, *flags, requirement]
            for flags in (["--offline"], [])
        ]
    tries.append([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement])
    errors = []
    for cmd in tries:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode == 0:
            return None
        errors.append(done.stderr.strip()[-300:])
    return "\n".join(errors)


@pytest.fixture(scope="module")
def ray_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with only ``ray[default]`` at the version this project pins."""
    venv = tmp_path_factory.mktemp("ray-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    requirement = f"ray[default]=={version('ray')}"
    why = _install(venv, requirement)
    if why is not None:
        pytest.skip(f"cannot install {requirement} into a fresh venv here:\n{why}")
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "tesai" not in names
    assert "ray" in names
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


def _readme_ray_submit() -> str:
    """The README's ``ray job submit`` command, as printed (continuation lines included)."""
    text = README.read_text()
    match = re.search(r"^ray job submit .*?(?:\\\n.*?)*$", text, flags=re.MULTILINE)
    assert match is not None, "the README shows no `ray job submit` command"
    return match.group(0)


def _shell(command: str, env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(
        ["/bin/bash", "-c", command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{command}\n→ {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


async def test_readmes_plain_ray_job_submit_with_a_5_mb_working_dir_runs_as_printed(
    server: ServerProcess,
    make_pool: MakePool,
    runtime: Runtime,
    make_user: MakeUser,
    ray_venv: Path,
    tmp_path: Path,
) -> None:
    await make_pool(1, first_port=37000)
    email, password = "ray-tooling@example.com", "a long enough password"
    headers = await funded_customer(runtime, make_user, email=email, password=password)
    api = httpx.AsyncClient(base_url=server.url, headers=headers, timeout=600)
    r = await api.post("/api/v1/auth/api-keys", json={"name": "ray", "scopes": ["clusters"]})
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    r = await api.post("/api/v1/clusters", json={"request": {"nodes": 1, "duration_s": 3600}})
    assert r.status_code == 201, r.text
    cluster: dict[str, Any] = r.json()
    cluster_id = cluster["id"]
    for _ in range(240):
        cluster = (await api.get(f"/api/v1/clusters/{cluster_id}")).json()
        if cluster["status"] == "running":
            break
        await asyncio.sleep(1)
    assert cluster["status"] == "running", cluster

    project = tmp_path / "project"
    project.mkdir()
    (project / "weights.bin").write_bytes(os.urandom(5 * 1000 * 1000))  # incompressible
    (project / "train.py").write_text(
        textwrap.dedent(
            """
            import os
            import ray

            ray.init()

            @ray.remote
            def size(path):
                return os.path.getsize(path)

            print("TRAINED", ray.get(size.remote("weights.bin")))
            """
        )
    )
    command = (
        _readme_ray_submit()
        .replace("https://tesai.example", server.url)
        .replace("CLUSTER_ID", cluster_id)
        .replace("YOUR_TOKEN_OR_API_KEY", key)
    )
    env = clean_env(PATH=f"{ray_venv / 'bin'}{os.pathsep}/usr/bin:/bin", VIRTUAL_ENV=str(ray_venv))
    env.pop("PYTHONPATH", None)
    out = _shell(command, env, project)
    assert "TRAINED 5000000" in out, out
    assert "succeeded" in out.lower(), out
    submission_id = re.search(r"raysubmit_\w+", out)
    assert submission_id is not None, out

    # The rest of Ray's job commands, through the same proxy with the same header.
    address = f"{server.url}/api/v1/clusters/{cluster_id}/ray"
    auth = json.dumps({"Authorization": f"Bearer {key}"})
    ray_args = f"--address {address} --headers '{auth}'"
    logs = _shell(f"ray job logs {ray_args} --follow {submission_id.group(0)}", env, project)
    assert "TRAINED 5000000" in logs
    listed = _shell(f"ray job list {ray_args}", env, project)
    assert submission_id.group(0) in listed

    # And TES AI lists it, marked as submitted with Ray.
    cli_env = clean_env(XDG_CONFIG_HOME=str(tmp_path / "config"), TESAI_PASSWORD=password)
    for args in (
        ["login", "--server", server.url, "--email", email],
        ["job", "list", "--cluster", cluster_id, "--json"],
    ):
        done = subprocess.run(
            [TESAI, *args], env=cli_env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
    [job] = [j for j in json.loads(done.stdout) if j["submission_id"] == submission_id.group(0)]
    assert job["submitted_via"] == "ray"
    assert job["status"] == "SUCCEEDED"
    await api.aclose()
