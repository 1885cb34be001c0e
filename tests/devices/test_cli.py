"""`tesai device add`, `list` and `show` against a real server, with a stored login."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from tesai.app import create_app
from tesai.cli.main import app as cli
from tesai.client import Credentials, save_credentials
from tesai.devices.models import Device, DeviceUptimeMinute
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
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


async def test_device_show_says_over_how_long_uptime_was_measured(
    server_url: str, make_user: MakeUser, runtime: Runtime
) -> None:
    """Six minutes old, up all along: "uptime over 6 min: 100.00 %", not "30 d"; a device
    with nothing recorded yet says so instead of showing 0 %."""
    _, headers = await make_user(roles=("provider",))
    token = headers["Authorization"].removeprefix("Bearer ")
    save_credentials(
        Credentials(
            server=server_url, access_token=token, refresh_token="", expires_at=time.time() + 600
        )
    )
    runner = CliRunner()
    assert runner.invoke(cli, ["device", "add", "--name", "rig-1"]).exit_code == 0
    [device] = json.loads(runner.invoke(cli, ["device", "list", "--json"]).output)
    fresh = runner.invoke(cli, ["device", "show", device["id"]])
    assert fresh.exit_code == 0, fresh.output
    assert "uptime: not measured yet" in fresh.output

    device_id = uuid.UUID(device["id"])
    now = utcnow()
    created = now - timedelta(minutes=6)
    async with runtime.sessionmaker.begin() as s:
        await s.execute(update(Device).where(Device.id == device_id).values(created_at=created))
        minute = created.replace(second=0, microsecond=0)
        while minute < now.replace(second=0, microsecond=0) - timedelta(minutes=1):
            s.add(DeviceUptimeMinute(device_id=device_id, minute=minute, seconds_up=60))
            minute += timedelta(minutes=1)
    shown = runner.invoke(cli, ["device", "show", device["id"]])
    assert shown.exit_code == 0, shown.output
    assert "uptime over 6 min: 100.00 %" in shown.output
    assert "30 d" not in shown.output
