"""`tesai admin drain|undrain|incidents|sla` against a real server, with a stored admin login."""

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
from tests.clusters.conftest import AddDevice
from tests.fixtures.auth import MakeUser


@pytest.fixture
def server_url(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with serve_asgi(create_app(settings), free_socket()) as url:
        yield url


def login(server_url: str, headers: dict[str, str]) -> None:
    token = headers["Authorization"].removeprefix("Bearer ")
    save_credentials(
        Credentials(
            server=server_url, access_token=token, refresh_token="", expires_at=time.time() + 600
        )
    )


async def test_admin_commands(server_url: str, make_user: MakeUser, add_device: AddDevice) -> None:
    device = await add_device(gpu_model=None, gpus=0)
    runner = CliRunner()

    _, customer = await make_user()
    login(server_url, customer)
    refused = runner.invoke(cli, ["admin", "drain", str(device.id)])
    assert refused.exit_code == 1
    assert "403" in refused.output

    _, admin = await make_user(roles=("admin",))
    login(server_url, admin)
    drained = runner.invoke(cli, ["admin", "drain", str(device.id), "--reason", "rack move"])
    assert drained.exit_code == 0, drained.output
    assert "drained" in drained.output
    timeline = runner.invoke(cli, ["admin", "incidents", "--device", str(device.id), "--json"])
    assert timeline.exit_code == 0, timeline.output
    data = json.loads(timeline.output)
    assert [i["reason"] for i in data["incidents"]] == ["drained"]
    assert data["status"] == "drained"
    table = runner.invoke(cli, ["admin", "incidents", "--device", str(device.id)])
    assert "drained" in table.output

    both = runner.invoke(cli, ["admin", "incidents"])
    assert both.exit_code == 2

    report = runner.invoke(cli, ["admin", "sla", "--json"])
    assert report.exit_code == 0, report.output
    [provider] = json.loads(report.output)["providers"]
    assert provider["devices"] == 1
    assert "promised" in runner.invoke(cli, ["admin", "sla"]).output

    missing = runner.invoke(cli, ["admin", "undrain", "00000000-0000-0000-0000-000000000000"])
    assert missing.exit_code == 1
    assert "404" in missing.output
