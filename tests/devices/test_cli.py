"""`tesai device add` and `tesai device list` against a real server, with a stored login."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tesai.app import create_app
from tesai.cli.main import app as cli
from tesai.client import Credentials, save_credentials
from tesai.settings import Settings
from tests.auth.oidc_provider import free_socket, serve_asgi
from tests.fixtures.auth import MakeUser


@pytest.fixture
def server_url(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with serve_asgi(create_app(settings), free_socket()) as url:
        yield url


async def test_device_add_prints_join_command_and_list(
    server_url: str, make_user: MakeUser
) -> None:
    _, headers = await make_user(roles=("provider",))
    token = headers["Authorization"].removeprefix("Bearer ")
    save_credentials(
        Credentials(
            server=server_url, access_token=token, refresh_token="", expires_at=time.time() + 600
        )
    )
    runner = CliRunner()
    added = runner.invoke(cli, ["device", "add", "--name", "rig-1", "--price", "2.5"])
    assert added.exit_code == 0, added.output
    assert "tesai agent --server " in added.output
    assert "--token tesai_join_" in added.output

    listed = runner.invoke(cli, ["device", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    [device] = json.loads(listed.output)
    assert device["name"] == "rig-1"
    assert device["status"] == "pending"
    assert device["price_per_gpu_hour_micro"] == 2_500_000

    table = runner.invoke(cli, ["device", "list"])
    assert "rig-1" in table.output
