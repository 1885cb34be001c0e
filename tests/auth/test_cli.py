"""`tesai admin create-user`, `tesai login` and `tesai logout` against a real server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tesai.app import create_app
from tesai.cli.main import app as cli
from tesai.client import ApiError, Credentials, TesaiClient, credentials_path, save_credentials
from tesai.runtime import Runtime
from tesai.settings import Settings, get_settings
from tests.auth.oidc_provider import free_socket, serve_asgi

PASSWORD = "a long cli password"


@pytest.fixture
def cli_env(
    settings: Settings, runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Environment a person would have: settings from TESAI_*, a private config dir."""
    assert settings.database_url is not None
    monkeypatch.setenv("TESAI_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("TESAI_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("TESAI_REDIS_PREFIX", settings.redis_prefix)
    monkeypatch.setenv("TESAI_HOME", str(settings.home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def server_url(settings: Settings, cli_env: None) -> Iterator[str]:
    with serve_asgi(create_app(settings), free_socket()) as url:
        yield url


def test_create_user_login_logout(server_url: str) -> None:
    runner = CliRunner()
    created = runner.invoke(
        cli,
        [
            "admin",
            "create-user",
            "--email",
            "Cli@Example.com",
            "--password",
            PASSWORD,
            "--role",
            "customer",
            "--role",
            "provider",
            "--json",
        ],
    )
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["roles"] == ["customer", "provider"]

    dup = runner.invoke(
        cli, ["admin", "create-user", "--email", "cli@example.com", "--password", PASSWORD]
    )
    assert dup.exit_code == 1

    bad = runner.invoke(
        cli, ["login", "--server", server_url, "--email", "cli@example.com"], input="nope\n"
    )
    assert bad.exit_code == 1
    assert not credentials_path().exists()

    ok = runner.invoke(
        cli, ["login", "--server", server_url, "--email", "cli@example.com"], input=f"{PASSWORD}\n"
    )
    assert ok.exit_code == 0, ok.output
    path = credentials_path()
    assert path.stat().st_mode & 0o777 == 0o600
    stored = json.loads(path.read_text())
    assert stored["server"] == server_url

    with TesaiClient() as client:
        me = client.get("/api/v1/auth/me")
    assert me["email"] == "cli@example.com"
    assert me["roles"] == ["customer", "provider"]

    # An expired stored access token is refreshed (and the new pair saved) on the fly.
    stale = Credentials.model_validate(stored)
    save_credentials(stale.model_copy(update={"access_token": "expired", "expires_at": 0.0}))
    with TesaiClient() as client:
        assert client.get("/api/v1/auth/me")["email"] == "cli@example.com"
    stored = json.loads(path.read_text())
    assert stored["refresh_token"] != stale.refresh_token
    assert stored["expires_at"] > time.time()

    out = runner.invoke(cli, ["logout"])
    assert out.exit_code == 0, out.output
    assert not path.exists()
    # The session is over on the server too.
    with TesaiClient(server_url, None) as anon, pytest.raises(ApiError) as denied:
        anon.post("/api/v1/auth/refresh", json={"refresh_token": stored["refresh_token"]})
    assert denied.value.status == 401
