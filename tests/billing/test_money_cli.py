"""Money commands send their idempotency key along with the login's token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from solders.keypair import Keypair

from tesai.settings import Settings
from tests.fixtures.auth import MakeUser
from tests.fixtures.cli import Cli, explain, serve_api


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    """A deployment that takes deposits (a deposit request needs no chain call)."""
    treasury = settings.model_copy(
        update={
            "treasury_owner": str(Keypair().pubkey()),
            "treasury_token_account": str(Keypair().pubkey()),
        }
    )
    with serve_api(treasury) as url:
        yield url


async def test_a_deposit_retried_with_its_key_is_one_deposit(
    api_url: str, make_user: MakeUser, tmp_path: Path
) -> None:
    _, customer = await make_user()
    cli = Cli(api_url, tmp_path / "config")
    cli.login(customer)

    first = cli("deposit", "--amount", "5", "--idempotency-key", "dep-1", "--json")
    again = cli("deposit", "--amount", "5", "--idempotency-key", "dep-1", "--json")
    assert first.returncode == again.returncode == 0, explain(first) + explain(again)
    assert json.loads(first.stdout)["id"] == json.loads(again.stdout)["id"]

    other = cli("deposit", "--amount", "5")
    assert other.returncode == 0, explain(other)
    assert "Pay 5.000000 USDC" in other.stdout
    assert json.loads(first.stdout)["id"] not in other.stdout  # a fresh key: a new request
