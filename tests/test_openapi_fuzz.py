"""Schemathesis against every operation in /api/openapi.json: no 5xx, errors are problem+json.

The app runs as a real HTTP server (uvicorn, in a thread, on a free port) built from test
settings, so it talks to this session's database and Redis prefix. Every operation is
fuzzed with schema-valid and schema-invalid inputs three ways: without credentials, as a
customer+provider user, and as an admin on ``/api/v1/internal`` routes (a fresh login per
operation, so an example that logs out does not blind the rest).

All operations run even when some fail; failures (operation, request as curl, response and
the server traceback) are printed and written to ``FUZZ_FINDINGS`` (default
``/work/notes/fuzz_findings.md`` when that folder exists). ``TESAI_FUZZ_EXAMPLES`` sets the
examples per operation and caller (default 20).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import uvicorn
from fastapi import Request
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from sqlalchemy import text

from tesai.app import create_app
from tesai.db import create_engine
from tesai.models import metadata
from tesai.runtime import open_runtime
from tesai.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.fixtures.auth import create_user_with_headers

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("TESAI_FUZZ_EXAMPLES", "20"))
_NOTES = Path("/work/notes")
FINDINGS = Path(
    os.environ.get("FUZZ_FINDINGS", str(_NOTES / "fuzz_findings.md") if _NOTES.is_dir() else "")
)
PASSWORD = "fuzz-" + secrets.token_urlsafe(12)


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


@pytest.fixture(scope="module")
def live_server(fuzz_settings: Settings, fuzz_users: dict[str, str]) -> Iterator[LiveServer]:
    app = create_app(fuzz_settings)
    sock = _free_socket()
    server = LiveServer(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    original = app.exception_handlers[Exception]

    async def record_and_answer(request: Request, exc: Exception) -> Any:
        server.tracebacks.append("".join(traceback.format_exception(exc)))
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
    response = http.post(
        f"{base_url}/api/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=30
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _fuzz_operation(
    operation: Any, caller: str, headers: dict[str, str], server: LiveServer, http: requests.Session
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
        sent = {**(case.headers or {}), **headers}
        response = case.call(base_url=server.base_url, session=http, headers=headers, timeout=30)
        try:
            case.validate_response(
                response, checks=[not_a_server_error, problem_json], headers=sent
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

    run()
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


def test_every_operation_answers_without_5xx_and_with_problem_json(
    live_server: LiveServer, fuzz_users: dict[str, str]
) -> None:
    http = requests.Session()
    openapi = http.get(f"{live_server.base_url}/api/openapi.json", timeout=30)
    assert openapi.status_code == 200
    schema = schemathesis.openapi.from_dict(openapi.json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5, "the OpenAPI document lost its operations"

    findings: list[Finding] = []
    for operation in operations:
        internal = operation.path.startswith("/api/v1/internal")
        user = "admin" if internal else "member"
        findings += _fuzz_operation(operation, "anonymous", {}, live_server, http)
        headers = _login(http, live_server.base_url, fuzz_users[user])
        findings += _fuzz_operation(operation, user, headers, live_server, http)

    report = _report(findings)
    if str(FINDINGS) not in ("", "."):
        FINDINGS.write_text(report if findings else report + "\nNo failures.\n")
    assert not findings, "\n" + report
