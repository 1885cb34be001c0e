"""The README's order for renting, run as printed: ``tesai quote …`` then ``tesai cluster
create …`` with the same request and no ``--quote``, through the CLI against the API on a real
socket. The customer's own quote must not stand in the way of their create."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tesai.clusters.models import ClusterNode, DeviceReservation
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.clusters.conftest import AddDevice, Grant
from tests.fixtures.auth import MakeUser
from tests.fixtures.cli import Cli, explain, serve_api

README = Path(__file__).parents[2] / "README.md"


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    with serve_api(settings) as url:
        yield url


def readme_quote_line() -> list[str]:
    """The README's ``tesai cluster create --quote QUOTE_ID`` line."""
    [line] = [
        x
        for x in README.read_text().splitlines()
        if x.startswith("tesai cluster create") and "--quote" in x
    ]
    return shlex.split(line.split("#")[0])


def readme_line(command: str) -> list[str]:
    """The README's ``tesai …`` line that starts with ``command`` and gives a GPU model."""
    [line] = [
        x
        for x in README.read_text().splitlines()
        if x.startswith(command) and "-m " in x and "--quote" not in x
    ]
    return shlex.split(line.split("#")[0])


async def test_quote_then_create_as_the_readme_prints_them(
    runtime: Runtime,
    make_user: MakeUser,
    grant: Grant,
    add_device: AddDevice,
    api_url: str,
    tmp_path: Path,
) -> None:
    device = await add_device(gpus=8)  # the one device that fits `-m "NVIDIA A100" -g 8`
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cli = Cli(api_url, tmp_path / "config")
    cli.login(headers)

    done = cli(*readme_line("tesai quote")[1:])
    assert done.returncode == 0, explain(done)
    assert "Quote" in done.stdout, explain(done)

    # As printed, except that nothing here will ever run the cluster: do not wait for it.
    done = cli(*readme_line("tesai cluster create")[1:], "--no-wait")
    assert done.returncode == 0, explain(done)
    assert "provisioning" in done.stdout, explain(done)
    async with runtime.sessionmaker() as s:
        assert (await s.execute(select(ClusterNode.device_id))).scalars().all() == [device.id]
        assert (await s.execute(select(DeviceReservation))).first() is None


async def test_create_with_the_quote_as_the_readme_prints_it_books_the_quoted_device(
    runtime: Runtime,
    make_user: MakeUser,
    grant: Grant,
    add_device: AddDevice,
    api_url: str,
    tmp_path: Path,
) -> None:
    device = await add_device(gpus=8)
    user, headers = await make_user()
    await grant(user.id, 100_000_000)
    cli = Cli(api_url, tmp_path / "config")
    cli.login(headers)

    done = cli(*readme_line("tesai quote")[1:])
    assert done.returncode == 0, explain(done)
    match = re.search(r"Quote (\S+) ", done.stdout)
    assert match, explain(done)

    # As printed, with the id the quote printed for QUOTE_ID, and not waiting for Ray.
    args = [match[1] if a == "QUOTE_ID" else a for a in readme_quote_line()[1:]]
    assert match[1] in args
    done = cli(*args, "--no-wait")
    assert done.returncode == 0, explain(done)
    assert "provisioning" in done.stdout, explain(done)
    async with runtime.sessionmaker() as s:
        assert (await s.execute(select(ClusterNode.device_id))).scalars().all() == [device.id]
        assert (await s.execute(select(DeviceReservation))).first() is None
