"""`tesai device add`, `list`, `show` and `events` against a real server, with a stored login."""

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
from tesai.devices.reputation import record_offence
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


async def test_device_show_says_why_a_device_was_disabled_and_lists_its_failed_checks(
    server_url: str, make_user: MakeUser, runtime: Runtime
) -> None:
    """Three caught lies disable a device for review: `show` says so in words and lists the
    failed checks with their reason codes and numbers; `events` has them too."""
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
    device_id = uuid.UUID(device["id"])
    for code, detail in [
        ("node_unverified", "Worker node n1 of cluster c1."),
        ("node_resource_shared", "Head node n2 of cluster c2."),
        ("canary_failed", "Node n3."),
    ]:
        async with runtime.sessionmaker.begin() as s:
            await record_offence(s, runtime.settings, device_id, code, detail)

    shown = runner.invoke(cli, ["device", "show", device["id"]])
    assert shown.exit_code == 0, shown.output
    assert "disabled (offences_review)" in shown.output
    assert "an admin must review it before it can be enabled" in shown.output
    assert "reliability: 0.51" in shown.output
    assert "failed checks in the last 30 days: 3" in shown.output
    assert "node_resource_shared: One Ray node claimed" in shown.output
    assert "Worker node n1 of cluster c1." in shown.output

    listed = runner.invoke(cli, ["device", "events", device["id"], "--json"])
    offences = [e["reason"] for e in json.loads(listed.output) if e["offence"]]
    assert offences == ["canary_failed", "node_resource_shared", "node_unverified"]
