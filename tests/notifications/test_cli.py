"""`tesai notifications` and `tesai spend-cap` against a real server, with a stored login."""

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
from tesai.notifications.service import NewNotification, notify
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.auth.oidc_provider import free_socket, serve_asgi
from tests.fixtures.auth import MakeUser


@pytest.fixture
def server_url(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("COLUMNS", "200")
    with serve_asgi(create_app(settings), free_socket()) as url:
        yield url


async def test_spend_cap_and_notifications_commands(
    server_url: str, runtime: Runtime, make_user: MakeUser
) -> None:
    user, headers = await make_user()
    token = headers["Authorization"].removeprefix("Bearer ")
    save_credentials(
        Credentials(
            server=server_url, access_token=token, refresh_token="", expires_at=time.time() + 600
        )
    )
    runner = CliRunner()

    shown = runner.invoke(cli, ["spend-cap"])
    assert shown.exit_code == 0, shown.output
    assert "monthly spend cap: none" in shown.output
    set_ = runner.invoke(cli, ["spend-cap", "set", "25.5"])
    assert set_.exit_code == 0, set_.output
    assert "25.500000 USDC" in set_.output
    data = json.loads(runner.invoke(cli, ["spend-cap", "--json"]).output)
    assert data["monthly_cap_micro"] == 25_500_000
    assert data["month_to_date_micro"] == 0
    bad = runner.invoke(cli, ["spend-cap", "set", "0"])
    assert bad.exit_code == 2
    cleared = runner.invoke(cli, ["spend-cap", "clear", "--json"])
    assert json.loads(cleared.output)["monthly_cap_micro"] is None

    assert "No notifications." in runner.invoke(cli, ["notifications"]).output
    async with runtime.sessionmaker.begin() as s:
        for t in (80, 95):
            await notify(
                s,
                NewNotification(
                    user_id=user.id,
                    kind="spend_cap_warning",
                    severity="warning" if t == 80 else "critical",
                    subject_type="account",
                    subject_id=str(user.id),
                    threshold=t,
                    period="2026-11",
                    message=f"You have spent {t} % of your monthly spend cap.",
                ),
            )
    listed = runner.invoke(cli, ["notifications"])
    assert listed.exit_code == 0, listed.output
    assert "You have spent 80 %" in listed.output
    assert "You have spent 95 %" in listed.output
    assert "2 unread" in listed.output
    page = json.loads(runner.invoke(cli, ["notifications", "--json"]).output)
    newest = page["items"][0]["id"]
    read = runner.invoke(cli, ["notifications", "read", str(newest)])
    assert read.exit_code == 0, read.output
    assert f"notification {newest} marked read" in read.output
    unread = runner.invoke(cli, ["notifications", "--unread", "--json"])
    assert [n["threshold"] for n in json.loads(unread.output)["items"]] == [80]
    missing = runner.invoke(cli, ["notifications", "read", "999999"])
    assert missing.exit_code == 1
    assert "404" in missing.output
    assert "1 marked read" in runner.invoke(cli, ["notifications", "read-all"]).output
    assert "No unread notifications." in runner.invoke(cli, ["notifications", "--unread"]).output
