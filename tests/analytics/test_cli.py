"""`tesai report` against a real server: rich tables, CSV/Parquet files, errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tesai.analytics.reports import REPORTS
from tesai.analytics.rollup import rollup
from tesai.app import create_app
from tesai.cli.main import app as cli
from tesai.cli.report import NAMES
from tesai.client import Credentials, save_credentials
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.analytics.conftest import H0, Market
from tests.auth.oidc_provider import free_socket, serve_asgi
from tests.fixtures.auth import MakeUser

WINDOW = ["--since", "2026-01-05T09:00:00", "--until", "2026-01-05T13:00:00"]


@pytest.fixture
def server_url(
    settings: Settings, runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("COLUMNS", "200")
    with serve_asgi(create_app(settings), free_socket()) as url:
        yield url


async def login(url: str, make_user: MakeUser, role: str) -> None:
    _, headers = await make_user(roles=(role,))
    token = headers["Authorization"].removeprefix("Bearer ")
    save_credentials(
        Credentials(server=url, access_token=token, refresh_token="x", expires_at=time.time() + 600)
    )


def test_names_match_the_reports() -> None:
    assert set(NAMES) == set(REPORTS)


async def test_report_tables_and_files(
    server_url: str, runtime: Runtime, market: Market, make_user: MakeUser, tmp_path: Path
) -> None:
    await rollup(runtime.sessionmaker, now=utcnow() + timedelta(hours=1))
    runner = CliRunner()
    public = runner.invoke(
        cli, ["report", "supply_demand", "--public", "--server", server_url, *WINDOW]
    )
    assert public.exit_code == 0, public.output
    assert "supply_demand" in public.output
    assert "eu-west" in public.output
    assert "50" in public.output  # utilisation %

    await login(server_url, make_user, "customer")
    denied = runner.invoke(cli, ["report", "mtbf"])
    assert denied.exit_code == 1
    assert "403" in denied.output

    await login(server_url, make_user, "admin")
    table = runner.invoke(cli, ["report", "mtbf", "--since", "2026-01-05", "--until", "2026-01-06"])
    assert table.exit_code == 0, table.output
    assert str(market.d1) in table.output
    prices = runner.invoke(cli, ["report", "price_index", "--model", "A100", *WINDOW])
    assert prices.exit_code == 0, prices.output
    assert "median (USDC)" in prices.output
    assert "1.8" in prices.output

    out = tmp_path / "sd.parquet"
    done = runner.invoke(
        cli, ["report", "supply_demand", *WINDOW, "--format", "parquet", "--output", str(out)]
    )
    assert done.exit_code == 0, done.output
    frame = pd.read_parquet(out)
    assert frame["period"].iloc[0] == pd.Timestamp(H0)
    csv = runner.invoke(cli, ["report", "cluster_outcomes", *WINDOW, "--format", "csv"])
    assert csv.exit_code == 0, csv.output
    assert csv.output.splitlines()[0] == (
        "period,gpu_model,started,completed,failed,degraded,self_healed"
    )

    bad = runner.invoke(cli, ["report", "supply_demand", "--grain", "week"])
    assert bad.exit_code == 1
    assert "422" in bad.output
    nope = runner.invoke(cli, ["report", "supply_demand", "--format", "parquet"])
    assert nope.exit_code == 2
