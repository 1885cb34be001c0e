"""`tesai admin credit`: an admin gives a user credit from the CLI, at most once per
idempotency key, as the README prints it."""

from __future__ import annotations

import re
import shlex
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tesai.settings import Settings
from tests.fixtures.auth import MakeUser
from tests.fixtures.cli import Cli, explain, serve_api

README = Path(__file__).parents[2] / "README.md"


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    with serve_api(settings) as url:
        yield url


async def _available(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    r = await client.get("/api/v1/customer/balance", headers=headers)
    assert r.status_code == 200, r.text
    return int(r.json()["available_micro"])


async def test_the_readmes_credit_command_gives_credit_as_printed(
    api_url: str, client: httpx.AsyncClient, make_user: MakeUser, tmp_path: Path
) -> None:
    [command] = re.findall(r"`(tesai admin credit [^`]+)`", README.read_text())
    _, customer = await make_user(email="you@example.com")
    _, admin = await make_user(roles=("admin",))
    cli = Cli(api_url, tmp_path / "config")
    cli.login(admin)

    done = cli(*shlex.split(command)[1:])
    assert done.returncode == 0, explain(done)
    assert "Credited 100.000000 USDC to you@example.com" in done.stdout
    assert await _available(client, customer) == 100_000_000


async def test_a_retried_credit_with_its_idempotency_key_is_given_once(
    api_url: str, client: httpx.AsyncClient, make_user: MakeUser, tmp_path: Path
) -> None:
    user, customer = await make_user()
    _, admin = await make_user(roles=("admin",))
    cli = Cli(api_url, tmp_path / "config")
    cli.login(admin)
    grant = ["admin", "credit", str(user.id), "--amount", "2.5", "--reason", "outage refund"]

    first = cli(*grant, "--idempotency-key", "refund-42", "--json")
    again = cli(*grant, "--idempotency-key", "refund-42", "--json")
    assert first.returncode == again.returncode == 0, explain(first) + explain(again)
    assert first.stdout == again.stdout  # the same grant, answered twice
    assert await _available(client, customer) == 2_500_000

    # Without a key each run is a new grant: the CLI makes a fresh key every time.
    assert cli(*grant).returncode == 0
    assert await _available(client, customer) == 5_000_000


async def test_credit_is_refused_to_a_customer_and_for_an_unknown_email(
    api_url: str, make_user: MakeUser, tmp_path: Path
) -> None:
    user, customer = await make_user()
    cli = Cli(api_url, tmp_path / "config")
    cli.login(customer)
    refused = cli("admin", "credit", str(user.id), "--amount", "1000", "--reason", "free money")
    assert refused.returncode == 1, explain(refused)
    assert "403" in refused.stderr

    _, admin = await make_user(roles=("admin",))
    cli.login(admin)
    unknown = cli("admin", "credit", "nobody@example.com", "--amount", "1", "--reason", "x")
    assert unknown.returncode == 1, explain(unknown)
    assert "No user with the email nobody@example.com" in unknown.stderr
    zero = cli("admin", "credit", str(user.id), "--amount", "0", "--reason", "x")
    assert zero.returncode == 2, explain(zero)


def test_a_credit_without_an_answer_prints_the_key_to_retry_with(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    cli = Cli(dead, tmp_path / "config")
    cli.login({"Authorization": "Bearer whatever"})
    done = cli("admin", "credit", str(uuid.uuid4()), "--amount", "5", "--reason", "x")
    assert done.returncode == 1, explain(done)
    [key] = re.findall(r"--idempotency-key (\S+):", done.stderr)
    assert uuid.UUID(key)
    assert "may or may not have been given" in done.stderr
