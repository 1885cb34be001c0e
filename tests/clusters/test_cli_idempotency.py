"""`tesai cluster create` and `tesai cluster extend` send an idempotency key: the command
run again with the same `--idempotency-key` books and extends once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tesai.settings import Settings
from tests.clusters.conftest import AddDevice, Grant
from tests.fixtures.auth import MakeUser
from tests.fixtures.cli import Cli, explain, serve_api


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    with serve_api(settings) as url:
        yield url


async def test_cluster_commands_retried_with_their_key_book_and_extend_once(
    api_url: str, make_user: MakeUser, add_device: AddDevice, grant: Grant, tmp_path: Path
) -> None:
    for _ in range(2):
        await add_device(gpu_model=None, gpus=0, price=1_000_000)
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cli = Cli(api_url, tmp_path / "config")
    cli.login(headers)

    create = ("cluster", "create", "--nodes", "1", "--no-wait", "--json")
    first = cli(*create, "--idempotency-key", "rent-1")
    again = cli(*create, "--idempotency-key", "rent-1")
    assert first.returncode == again.returncode == 0, explain(first) + explain(again)
    cluster = json.loads(first.stdout)
    assert json.loads(again.stdout)["id"] == cluster["id"]

    extend = ("cluster", "extend", cluster["id"], "--hours", "1", "--json")
    for _ in range(2):
        done = cli(*extend, "--idempotency-key", "more-1")
        assert done.returncode == 0, explain(done)
        assert json.loads(done.stdout)["duration_s"] == 2 * 3600
    # Without the option each run is a new request: a fresh key.
    done = cli(*extend)
    assert done.returncode == 0, explain(done)
    assert json.loads(done.stdout)["duration_s"] == 3 * 3600
    listed = cli("cluster", "list", "--json")
    assert [c["id"] for c in json.loads(listed.stdout)] == [cluster["id"]]
