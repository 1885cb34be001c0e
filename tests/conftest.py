"""Shared fixtures: a real PostgreSQL database per test session, Redis, the app.

Each pytest session creates its own database (``tesai_test_<random>``) on the server named
by ``TESAI_TEST_DATABASE_URL`` and drops it at the end, so parallel runs never collide.
Tables are emptied after every test that used the database.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.accounts.models import User
from tesai.app import create_app
from tesai.db import asyncpg_url, create_engine
from tesai.models import metadata
from tesai.runtime import Runtime, open_runtime
from tesai.settings import Settings
from tests.fixtures.auth import MakeUser, create_user_with_headers

TEST_DATABASE_URL = os.environ.get(
    "TESAI_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TEST_REDIS_URL = os.environ.get("TESAI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_BROKER_URL = os.environ.get("TESAI_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def _plain(url: str) -> str:
    return asyncpg_url(url).replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(4)


@pytest.fixture(scope="session")
async def database_url(run_id: str) -> AsyncIterator[str]:
    """A fresh database with every table created from the models."""
    name = f"tesai_test_{run_id}"
    admin = await asyncpg.connect(_plain(TEST_DATABASE_URL))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = _with_database(TEST_DATABASE_URL, name)
    engine = create_engine(Settings(database_url=url))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        from tesai.dbextras import install_database_extras

        await install_database_extras(conn)
    await engine.dispose()
    yield url
    admin = await asyncpg.connect(_plain(TEST_DATABASE_URL))
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return TEST_REDIS_URL


@pytest.fixture
def settings(database_url: str, run_id: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Production-shaped settings on the test services, with in-process tasks."""
    return Settings(
        environment="test",
        home=tmp_path_factory.mktemp("home"),
        database_url=database_url,
        redis_url=TEST_REDIS_URL,
        redis_prefix=f"tesai-test-{run_id}-{secrets.token_hex(3)}:",
        broker_url=None,
        rate_limit_enabled=False,
        log_json=False,
        # Every test node runs on this machine (loopback): development's allowance, said here.
        ray_proxy_allow_internal_heads=True,
    )


async def _truncate_all(url: str) -> None:
    engine = create_engine(Settings(database_url=url))
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    await engine.dispose()


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = await open_runtime(settings, run_periodic=False)
    try:
        yield rt
    finally:
        await rt.close()
        await _truncate_all(settings.database_url or "")


@pytest.fixture
async def session(runtime: Runtime) -> AsyncIterator[AsyncSession]:
    async with runtime.sessionmaker() as s:
        yield s


@pytest.fixture
async def client(settings: Settings, runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process (no sockets)."""
    app = create_app(settings, runtime=runtime)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
async def make_user(runtime: Runtime) -> MakeUser:
    """``await make_user(email=None, roles=("customer",))`` → (user, auth headers)."""

    async def make(
        email: str | None = None, roles: tuple[str, ...] = ("customer",), **kwargs: str
    ) -> tuple[User, dict[str, str]]:
        return await create_user_with_headers(runtime, email, roles, **kwargs)

    return make
