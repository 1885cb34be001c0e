"""Schemathesis against every operation in /api/openapi.json: no 5xx, errors are problem+json.

The app runs as a real HTTP server (uvicorn, in a thread, on a free port) built from test
settings, so it talks to this session's database and Redis prefix. Every operation is
fuzzed with schema-valid and schema-invalid inputs three ways: without credentials, as a
customer+provider user, and as an admin on ``/api/v1/internal`` routes (signing in again
whenever an example has ended the session).

All operations run even when some fail; failures (operation, request as curl, response and
the server traceback) are printed, and written to the file named by ``FUZZ_FINDINGS`` when
it is set. ``TESAI_FUZZ_EXAMPLES`` sets the
examples per operation and caller (default 10).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.errors import SerializationNotPossible
from sqlalchemy import text

from tesai.app import create_app
from tesai.db import create_engine
from tesai.errors import install_error_handlers
from tesai.models import metadata
from tesai.runtime import open_runtime
from tesai.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.fixtures.auth import create_user_with_headers

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("TESAI_FUZZ_EXAMPLES", "10"))
FINDINGS = Path(os.environ.get("FUZZ_FINDINGS", ""))
PASSWORD = "fuzz-" + secrets.token_urlsafe(12)
SKIPPED: list[str] = []
"""Operations whose inputs the fuzzer could not generate (reported, not failed)."""


@schemathesis.check
def problem_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx is RFC 9457 problem+json with a machine-readable ``code``."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/problem+json"), (
        f"{response.status_code} with Content-Type {content_type!r}, not problem+json"
    )
    body = response.json()
    assert isinstance(body, dict), "problem body is not an object"
    assert isinstance(body.get("code"), str), "problem+json without `code`"
    assert body.get("status") == response.status_code, "problem `status` != HTTP status"
    return None


@schemathesis.check
def no_internal_graphql_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """A GraphQL answer never carries an unexpected (``internal``) error."""
    if "json" not in str(response.headers.get("content-type", "")):
        return None
    body = response.json()
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list):
        codes = [(e.get("extensions") or {}).get("code") for e in errors if isinstance(e, dict)]
        assert "internal" not in codes, f"GraphQL error with code internal: {errors}"
    return None


@schemathesis.check
def below_500(ctx: Any, response: Any, case: Any) -> bool | None:
    """The HTTP status is not a server error (GraphQL reports field errors with 200)."""
    assert response.status_code < 500, f"HTTP {response.status_code}"
    return None


REST_CHECKS = [not_a_server_error, problem_json]
# schemathesis' not_a_server_error counts any GraphQL `errors` entry as a server error, but
# a refused field (e.g. `me` without credentials) is a client error here.
GRAPHQL_CHECKS = [below_500, no_internal_graphql_error]


@dataclass
class LiveServer:
    base_url: str
    tracebacks: list[str] = field(default_factory=list)
    """Tracebacks of unhandled exceptions, in the order they happened."""


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def fuzz_settings(
    database_url: str, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return Settings(
        environment="test",
        home=tmp_path_factory.mktemp("fuzz-home"),
        database_url=database_url,
        redis_url=TEST_REDIS_URL,
        redis_prefix=f"tesai-test-{run_id}-fuzz-{secrets.token_hex(3)}:",
        broker_url=None,
        rate_limit_enabled=False,
        log_json=False,
        log_level="CRITICAL",
    )


@pytest.fixture(scope="module")
async def fuzz_users(fuzz_settings: Settings) -> AsyncIterator[dict[str, str]]:
    """Emails of a customer+provider and an admin, created through the account services;
    every table is emptied after the module."""
    runtime = await open_runtime(fuzz_settings, run_periodic=False)
    tag = secrets.token_hex(4)
    emails = {"member": f"member-{tag}@example.com", "admin": f"admin-{tag}@example.com"}
    try:
        await create_user_with_headers(
            runtime, emails["member"], ("customer", "provider"), password=PASSWORD
        )
        await create_user_with_headers(
            runtime, emails["admin"], ("customer", "provider", "admin"), password=PASSWORD
        )
    finally:
        await runtime.close()
    yield emails
    engine = create_engine(fuzz_settings)
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    await engine.dispose()


@contextmanager
def serve(app: FastAPI) -> Iterator[LiveServer]:
    """Run ``app`` (lifespan included) with uvicorn in a thread on a free port, recording
    the traceback of every unhandled exception."""
    sock = _free_socket()
    server = LiveServer(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    original = app.exception_handlers.get(Exception)

    async def record_and_answer(request: Request, exc: Exception) -> Any:
        server.tracebacks.append("".join(traceback.format_exception(exc)))
        if original is None:
            raise exc
        return await original(request, exc)

    app.add_exception_handler(Exception, record_and_answer)
    uv = uvicorn.Server(uvicorn.Config(app, log_level="critical", access_log=False))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)
    try:
        yield server
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def live_server(fuzz_settings: Settings, fuzz_users: dict[str, str]) -> Iterator[LiveServer]:
    with serve(create_app(fuzz_settings)) as server:
        yield server


@dataclass
class Finding:
    caller: str
    operation: str
    curl: str
    status: int
    message: str
    body: str
    traceback: str | None


def _login(http: requests.Session, base_url: str, email: str) -> dict[str, str]:
    """Access-token headers for ``email`` (argon2 makes this the slow step: do it rarely)."""
    response = http.post(
        f"{base_url}/api/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=30
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _fuzz_operation(
    operation: Any,
    caller: str,
    headers: dict[str, str],
    server: LiveServer,
    http: requests.Session,
    statuses: Counter[int] | None = None,
    checks: list[Any] | None = None,
) -> list[Finding]:
    findings: list[Finding] = []
    strategy = st.one_of(
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        if len(findings) >= 3:  # enough to route the bug; keep the run short
            return
        seen = len(server.tracebacks)
        if headers:
            # Schemathesis fills the declared security schemes with made-up credentials; a
            # made-up X-API-Key would win over the real token, so drop them for a signed-in
            # caller (the anonymous caller keeps them: bad credentials must be 401s).
            case.headers = {
                name: value
                for name, value in (case.headers or {}).items()
                if name.lower() not in ("authorization", "x-api-key")
            }
        sent = {**(case.headers or {}), **headers}
        response = case.call(base_url=server.base_url, session=http, headers=headers, timeout=30)
        if statuses is not None:
            statuses[response.status_code] += 1
        try:
            case.validate_response(
                response,
                checks=checks or REST_CHECKS,
                headers=sent,
            )
        except (AssertionError, BaseExceptionGroup) as exc:
            findings.append(
                Finding(
                    caller=caller,
                    operation=operation.label,
                    curl=case.as_curl_command(headers=sent),
                    status=response.status_code,
                    message=str(exc),
                    body=response.text[:1000],
                    traceback=server.tracebacks[-1] if len(server.tracebacks) > seen else None,
                )
            )

    try:
        run()
    except (hypothesis.errors.Unsatisfiable, SerializationNotPossible) as exc:
        # The schema itself defeats generation (e.g. an unsupported media type): say so
        # loudly, but it is not an error of the API.
        SKIPPED.append(f"{operation.label} ({caller}): {type(exc).__name__}: {exc}")
    return findings


def _report(findings: list[Finding]) -> str:
    lines = [
        "# Fuzz findings (tests/test_openapi_fuzz.py)",
        "",
        f"Run at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; "
        f"{len(findings)} failing example(s).",
        "",
    ]
    for f in findings:
        lines += [
            f"## {f.operation} (caller: {f.caller}) → {f.status}",
            "",
            f.message.strip(),
            "",
            "```",
            f.curl,
            "```",
            "",
            "Response body:",
            "```",
            f.body,
            "```",
        ]
        if f.traceback:
            lines += ["", "Server traceback:", "```", f.traceback.rstrip(), "```"]
        lines.append("")
    return "\n".join(lines)


def test_graphql_fields_answer_without_server_errors(
    live_server: LiveServer, fuzz_users: dict[str, str], http: requests.Session
) -> None:
    """Every GraphQL query field, generated by schemathesis from introspection, anonymous
    and signed in: no 5xx and no ``internal`` error code."""
    schema = schemathesis.graphql.from_url(f"{live_server.base_url}/graphql")
    headers = _login(http, live_server.base_url, fuzz_users["admin"])
    findings: list[Finding] = []
    fields = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        fields += 1
        for caller, caller_headers in (("anonymous", {}), ("admin", headers)):
            findings += _fuzz_operation(
                operation, caller, caller_headers, live_server, http, checks=GRAPHQL_CHECKS
            )
    assert fields >= 2, "the GraphQL schema lost its fields"
    assert not findings, "\n" + _report(findings)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def test_every_operation_answers_without_5xx_and_with_problem_json(
    live_server: LiveServer, fuzz_users: dict[str, str], http: requests.Session
) -> None:
    openapi = http.get(f"{live_server.base_url}/api/openapi.json", timeout=30)
    assert openapi.status_code == 200
    schema = schemathesis.openapi.from_dict(openapi.json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5, "the OpenAPI document lost its operations"

    findings: list[Finding] = []
    statuses: dict[str, Counter[int]] = {"anonymous": Counter(), "signed in": Counter()}
    sessions: dict[str, dict[str, str]] = {}
    started = time.monotonic()
    for operation in operations:
        t0 = time.monotonic()
        user = "admin" if operation.path.startswith("/api/v1/internal") else "member"
        findings += _fuzz_operation(
            operation, "anonymous", {}, live_server, http, statuses["anonymous"]
        )
        headers = sessions.get(user)
        # An example may have ended the session (logout): sign in again when it has.
        me = http.get(f"{live_server.base_url}/api/v1/auth/me", headers=headers, timeout=30)
        if headers is None or me.status_code != 200:
            headers = sessions[user] = _login(http, live_server.base_url, fuzz_users[user])
        findings += _fuzz_operation(
            operation, user, headers, live_server, http, statuses["signed in"]
        )
        print(f"{operation.label}: {time.monotonic() - t0:.1f} s")
    print(f"{len(operations)} operations fuzzed in {time.monotonic() - started:.0f} s")
    for caller, counts in statuses.items():
        print(f"{caller}: " + ", ".join(f"{n}× {code}" for code, n in sorted(counts.items())))

    for line in SKIPPED:
        print(f"NOT FUZZED: {line}")
    report = _report(findings)
    if SKIPPED:
        report += "\n## Not fuzzed (inputs could not be generated)\n\n"
        report += "\n".join(f"- {line}" for line in SKIPPED) + "\n"
    if str(FINDINGS) not in ("", "."):
        FINDINGS.write_text(report)
    assert not findings, "\n" + report
    # A run where credentials never worked would prove little: signed-in examples must
    # reach the handlers (2xx), not stop at 401.
    signed_in = statuses["signed in"]
    assert sum(n for code, n in signed_in.items() if code < 300) > len(operations) // 2, signed_in


def test_the_harness_reports_server_errors_and_bare_error_bodies() -> None:
    """Guard against a fuzz run that cannot fail: a toy API with a 500 on some inputs and
    a 400 that is not problem+json must both be reported, with the traceback."""
    toy = FastAPI(openapi_url="/openapi.json")
    install_error_handlers(toy)

    @toy.get("/boom")
    async def boom(n: int) -> dict[str, int]:
        if n > 3:
            raise RuntimeError("toy failure")
        return {"n": n}

    @toy.get("/bare")
    async def bare() -> JSONResponse:
        return JSONResponse({"error": "no"}, status_code=400)

    with serve(toy) as server, requests.Session() as http:
        schema = schemathesis.openapi.from_dict(http.get(server.base_url + "/openapi.json").json())
        found = {
            f.operation: f
            for operation in (r.ok() for r in schema.get_all_operations())
            for f in _fuzz_operation(operation, "anonymous", {}, server, http)
        }
    assert found["GET /boom"].status == 500
    assert "toy failure" in (found["GET /boom"].traceback or "")
    assert "not problem+json" in found["GET /bare"].message
