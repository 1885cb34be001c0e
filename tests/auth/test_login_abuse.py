"""Failed sign-ins must never hurt anybody else: no pool starvation, no 500, bounded CPU.

Each password sign-in used to hold a pooled connection while argon2 hashed, then open a
second one for the failure's audit row: 50 parallel wrong passwords gave 62 % 500s
(``QueuePool limit … reached``) and made every other customer wait 30 s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.exc import TimeoutError as PoolTimeout

from tesai.app import create_app
from tesai.audit.models import AuditEvent
from tesai.auth import passwords
from tesai.runtime import Runtime, open_runtime
from tesai.settings import Settings
from tests.fixtures.auth import MakeUser

PASSWORD = "correct horse battery"

AppClient = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def app_client(settings: Settings, runtime: Runtime) -> AsyncIterator[AppClient]:
    """``await app_client(**settings_overrides)``: a client of an app whose runtime (pool,
    throttle, hashing) uses the overrides. ``runtime`` empties the tables afterwards."""
    async with AsyncExitStack() as stack:

        async def make(
            setup: Callable[[FastAPI], None] | None = None, **overrides: Any
        ) -> httpx.AsyncClient:
            tuned = settings.model_copy(update=overrides)
            rt = await open_runtime(tuned, run_periodic=False)
            stack.push_async_callback(rt.close)
            app = create_app(tuned, runtime=rt)
            if setup is not None:
                setup(app)
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )

        yield make


def login(client: httpx.AsyncClient, email: str, password: str) -> Awaitable[httpx.Response]:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


async def test_parallel_wrong_passwords_never_starve_the_pool_or_answer_500(
    app_client: AppClient, make_user: MakeUser, runtime: Runtime
) -> None:
    """With two pooled connections, eight parallel wrong passwords used to hold both while
    hashing and wait for a third for their audit rows: a deadlock until the pool timeout,
    then 500s, and a customer's ordinary request stuck behind them."""
    client = await app_client(database_pool_size=2, database_max_overflow=0)
    await make_user(email="victim@example.com", password=PASSWORD)
    _, customer = await make_user()

    async def ordinary() -> tuple[int, float]:
        await asyncio.sleep(0.2)  # while the guesses hash
        started = time.perf_counter()
        r = await client.get("/api/v1/clusters", headers=customer)
        return r.status_code, time.perf_counter() - started

    guesses = [login(client, "victim@example.com", f"guess-{i}") for i in range(8)]
    *answers, (status, waited) = await asyncio.wait_for(
        asyncio.gather(*guesses, ordinary()), timeout=25
    )
    assert Counter(r.status_code for r in answers) == {401: 8}, [r.text for r in answers]
    assert status == 200
    assert waited < 2.0, f"an ordinary request waited {waited:.1f} s behind the guesses"
    async with runtime.sessionmaker() as s:
        failed = await s.scalars(select(AuditEvent).where(AuditEvent.action == "auth.login_failed"))
        assert len(failed.all()) == 8  # every failure still audited
    ok = await login(client, "victim@example.com", PASSWORD)
    assert ok.status_code == 200, ok.text


async def test_password_guesses_past_the_throttle_get_429_with_retry_after(
    app_client: AppClient, make_user: MakeUser
) -> None:
    client = await app_client(
        rate_limit_enabled=True,
        login_burst_per_account=3,
        login_rate_per_account=0.01,
        login_burst_per_ip=6,
        login_rate_per_ip=0.01,
    )
    await make_user(email="target@example.com", password=PASSWORD)
    for i in range(3):
        assert (await login(client, "target@example.com", f"guess-{i}")).status_code == 401
    throttled = await login(client, "TARGET@example.com", PASSWORD)  # even the right one
    assert throttled.status_code == 429, throttled.text
    assert throttled.headers["content-type"].startswith("application/problem+json")
    assert throttled.json()["code"] == "login_throttled"
    assert int(throttled.headers["retry-after"]) >= 1
    # The address's own budget: three more tries at other accounts, then 429 for any.
    for i in range(3):
        assert (await login(client, f"other-{i}@example.com", "x" * 12)).status_code == 401
    spent = await login(client, "fresh@example.com", "x" * 12)
    assert spent.status_code == 429
    assert spent.json()["code"] == "login_throttled"


async def test_a_storm_past_the_hashing_queue_gets_503_not_500(
    app_client: AppClient, make_user: MakeUser
) -> None:
    client = await app_client(password_hash_concurrency=1, password_hash_queue=1)
    await make_user(email="victim@example.com", password=PASSWORD)
    answers = await asyncio.gather(
        *(login(client, "victim@example.com", f"guess-{i}") for i in range(8))
    )
    statuses = Counter(r.status_code for r in answers)
    assert statuses[503] >= 5, statuses
    assert statuses[401] >= 1, statuses
    assert set(statuses) <= {401, 503}
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.json()["code"] == "password_check_busy"
    assert busy.headers["retry-after"]
    # Once the storm is over, the right password works.
    assert (await login(client, "victim@example.com", PASSWORD)).status_code == 200


async def test_an_unknown_email_costs_one_full_verification_like_a_known_one(
    client: httpx.AsyncClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No timing oracle for which emails have accounts: an unknown email is checked
    against a dummy hash of the same parameters, made ahead of time."""
    await make_user(email="known@example.com", password=PASSWORD)
    calls: list[tuple[str, str]] = []
    real = passwords._hasher

    class Counting:
        def verify(self, hash_: str, password: str) -> bool:
            calls.append(("verify", hash_.rsplit("$", 2)[0]))
            return real.verify(hash_, password)

        def hash(self, password: str) -> str:
            calls.append(("hash", ""))
            return real.hash(password)

    passwords._dummy_hash()  # made when the first gate starts, before any request
    monkeypatch.setattr(passwords, "_hasher", Counting())
    assert (await login(client, "known@example.com", "wrong password")).status_code == 401
    assert (await login(client, "nobody@example.com", "wrong password")).status_code == 401
    known, unknown = calls
    assert known[0] == unknown[0] == "verify"
    assert known[1] == unknown[1]  # "$argon2id$v=19$m=65536,t=3,p=4"


async def test_an_exhausted_database_pool_is_503_with_retry_after(
    app_client: AppClient,
) -> None:
    def setup(app: FastAPI) -> None:
        async def busy() -> None:
            raise PoolTimeout("QueuePool limit of size 10 overflow 10 reached")

        app.add_api_route("/api/v1/test-busy", busy, methods=["GET"])

    client = await app_client(setup=setup)
    r = await client.get("/api/v1/test-busy")
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "overloaded"
    assert int(r.headers["retry-after"]) >= 1
