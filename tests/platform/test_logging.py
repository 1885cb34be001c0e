"""Structured JSON logs: one object per line, context on every line, no secrets from frames."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog
from fastapi import FastAPI, Request

from tesai.observability.logging import (
    LIMITS,
    LineSink,
    configure_logging,
    drain_logs,
    redact_text,
    secret_key,
)
from tesai.settings import Settings
from tests.platform.conftest import MakeClient


@pytest.fixture
def json_lines(settings: Settings) -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging(settings.model_copy(update={"log_json": True}), stream=out)
    try:
        yield out
    finally:
        configure_logging(settings)


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_bound_context_on_structlog_and_stdlib_lines(json_lines: io.StringIO) -> None:
    tokens = structlog.contextvars.bind_contextvars(request_id="rid-1")
    try:
        structlog.get_logger("tests").info("ours", n=1)
        logging.getLogger("some.library").warning("theirs %s", "x")
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    ours, theirs = _lines(json_lines)
    assert ours["event"] == "ours"
    assert ours["n"] == 1
    assert ours["request_id"] == "rid-1"
    assert theirs["event"] == "theirs x"
    assert theirs["logger"] == "some.library"
    assert theirs["request_id"] == "rid-1"
    assert theirs["level"] == "warning"


def test_exceptions_are_structured_without_frame_locals(json_lines: io.StringIO) -> None:
    def connect() -> None:
        database_url = "postgresql://user:hunter2@db/tesai"
        raise ConnectionError(f"cannot reach {database_url.split('@')[1]}")

    try:
        connect()
    except ConnectionError:
        structlog.get_logger("tests").exception("connect_failed")
    [line] = _lines(json_lines)
    assert line["exception"][0]["exc_type"] == "ConnectionError"
    assert "hunter2" not in json_lines.getvalue()


def test_level_filters(settings: Settings) -> None:
    out = io.StringIO()
    configure_logging(
        settings.model_copy(update={"log_json": True, "log_level": "WARNING"}), stream=out
    )
    try:
        structlog.get_logger("tests").info("hidden")
        structlog.get_logger("tests").warning("shown")
    finally:
        configure_logging(settings)
    assert [line["event"] for line in _lines(out)] == ["shown"]


DEVICE_TOKEN = "tesai_dev_" + "s3cr3t" * 6
API_KEY = "tesai_abcd1234_" + "k3y" * 10
JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
SECRETS = (DEVICE_TOKEN, API_KEY, JWT, "hunter2", "cookie-value-123")


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(levels):
        value = {"a": value, "pad": ["y" * 100] * 50}
    return value


def _console(settings: Settings) -> io.StringIO:
    out = io.StringIO()
    configure_logging(settings.model_copy(update={"log_json": False}), stream=out)
    return out


@pytest.mark.parametrize("json_mode", [True, False], ids=["json", "console"])
def test_huge_nested_value_and_secret_headers_render_bounded_redacted_and_fast(
    settings: Settings, json_mode: bool
) -> None:
    """The shape of the record that froze `tesai up`: a value nested thousands of levels
    deep (past any recursion limit) next to request headers with credentials."""
    out = io.StringIO()
    configure_logging(settings.model_copy(update={"log_json": json_mode}), stream=out)
    headers = [
        (b"authorization", f"Bearer {DEVICE_TOKEN}".encode()),
        (b"x-api-key", API_KEY.encode()),
        (b"cookie", b"session=cookie-value-123"),
    ]
    try:
        started = time.perf_counter()
        structlog.get_logger("tests").error(
            "job_failed",
            runtime_env=_nested(5_000),
            rows=list(range(100_000)),
            blob="z" * 5_000_000,
            headers=headers,
            request_headers={"Authorization": f"Bearer {JWT}", "X-Api-Key": API_KEY},
            password="hunter2",
            database_url="postgresql://tesai:hunter2@db:5432/tesai",
            note=f"retrying with token={DEVICE_TOKEN} and {API_KEY}",
        )
        logging.getLogger("some.library").warning("sent %s", {"headers": dict(headers)})
        elapsed = time.perf_counter() - started
    finally:
        configure_logging(settings)
    text = out.getvalue()
    assert elapsed < 0.5, f"rendering took {elapsed:.2f} s"
    assert len(text) < 2 * 40_000, f"{len(text)} characters logged"
    for secret in SECRETS:
        assert secret not in text
    assert "job_failed" in text
    assert "[REDACTED]" in text
    assert "postgresql://tesai:[REDACTED]@db:5432/tesai" in text
    if json_mode:
        first, second = _lines(out)
        assert first["password"] == "[REDACTED]"
        assert first["request_headers"]["Authorization"] == "[REDACTED]"
        assert first["headers"][0] == ["authorization", "[REDACTED]"]
        assert first["rows"][-1] == "…99968 more"
        assert second["logger"] == "some.library"


def _fail_with_secrets_in_locals() -> None:
    device_token = DEVICE_TOKEN  # noqa: F841 - a frame local that must never be logged
    body = _nested(300)  # noqa: F841
    raise ValueError("runtime_env too deep")


def test_console_tracebacks_never_render_frame_locals(settings: Settings) -> None:
    """The console renderer used rich tracebacks with every frame's locals: a request's
    headers, credentials and a 254-level body became minutes of rendering."""
    out = _console(settings)
    try:
        started = time.perf_counter()
        try:
            _fail_with_secrets_in_locals()
        except ValueError:
            structlog.get_logger("tests").exception("unhandled_error")
        try:
            _fail_with_secrets_in_locals()
        except ValueError:
            logging.getLogger("some.server").exception("Exception in ASGI application")
        elapsed = time.perf_counter() - started
    finally:
        configure_logging(settings)
    text = out.getvalue()
    assert elapsed < 0.5
    assert DEVICE_TOKEN not in text
    assert "device_token" not in text  # no frame's variables at all
    assert "╭" not in text  # nor rich's boxes
    assert text.count("ValueError: runtime_env too deep") == 2
    assert "_fail_with_secrets_in_locals" in text
    assert len(text) < 20_000


def test_a_recursion_error_traceback_is_cut_to_its_innermost_frames(settings: Settings) -> None:
    def down(n: int) -> int:
        return down(n + 1) + 1

    out = _console(settings)
    try:
        try:
            down(0)
        except RecursionError:
            structlog.get_logger("tests").exception("too_deep")
    finally:
        configure_logging(settings)
    text = out.getvalue()
    assert "RecursionError" in text
    assert len(text) <= LIMITS.exception + 2_000


class _Blocked(io.StringIO):
    """An output that stalls like a full pipe nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return super().write(text)


def test_a_stalled_output_never_blocks_the_logging_caller() -> None:
    stream = _Blocked()
    sink = LineSink(stream, max_buffered=10_000)
    started = time.perf_counter()
    for i in range(1_000):
        sink.write(f"line {i:04d} {'x' * 80}\n")
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"writes waited {elapsed:.2f} s for the output"
    stream.release.set()
    assert sink.drain(5)
    written = stream.getvalue()
    assert written.startswith("line 0000")
    assert '"event":"log_lines_dropped"' in written  # counted, not silently lost
    assert written.count("line ") < 1_000


def test_background_writer_writes_every_line_in_order(settings: Settings) -> None:
    out = io.StringIO()
    configure_logging(settings.model_copy(update={"log_json": True}), stream=out, background=True)
    try:
        for i in range(500):
            structlog.get_logger("tests").info("numbered", i=i)
        drain_logs()
    finally:
        configure_logging(settings)
    assert [line["i"] for line in _lines(out)] == list(range(500))


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("Authorization", True),
        ("proxy-authorization", True),
        ("Cookie", True),
        ("set-cookie", True),
        ("X-Api-Key", True),
        ("api_key", True),
        ("refresh_token", True),
        ("device_token", True),
        ("password", True),
        ("client_secret", True),
        ("private_key", True),
        ("jwt_private_key_file", True),
        ("key", True),
        ("idempotency_key", False),
        ("api_key_id", False),
        ("token_type", False),
        ("request_id", False),
        ("path", False),
    ],
)
def test_secret_keys_by_rule(name: str, secret: bool) -> None:
    assert secret_key(name) is secret


def test_secret_text_by_rule() -> None:
    text = redact_text(
        f"Authorization: Bearer {JWT}; key {API_KEY}; dev {DEVICE_TOKEN}; "
        "url redis://:hunter2@cache:6379/0; callback ?code=1&token=abc123secret&x=1"
    )
    for secret in (JWT, API_KEY, DEVICE_TOKEN, "hunter2", "abc123secret"):
        assert secret not in text
    assert "redis://:[REDACTED]@cache:6379/0" in text
    assert "code=1" in text


async def test_a_500_with_a_device_credential_and_a_deep_value_logs_bounded_and_redacted(
    make_client: MakeClient, settings: Settings
) -> None:
    """The request that froze `tesai up`, end to end: its handler fails holding the
    request (headers with a device credential) and a value nested 5,000 levels deep."""

    def setup(app: FastAPI) -> None:
        async def explode(request: Request) -> None:
            headers = dict(request.headers)  # noqa: F841 - frame locals a renderer could show
            runtime_env = _nested(5_000)  # noqa: F841
            raise RuntimeError("orjson: recursion limit reached")

        app.add_api_route("/api/v1/test-explode", explode, methods=["POST"])

    client = await make_client(setup, log_json=False)
    out = _console(settings)
    try:
        started = time.perf_counter()
        with pytest.raises(RuntimeError):
            await client.post(
                "/api/v1/test-explode", headers={"Authorization": f"Bearer {DEVICE_TOKEN}"}
            )
        elapsed = time.perf_counter() - started
    finally:
        configure_logging(settings)
    text = out.getvalue()
    assert elapsed < 1.0, f"the failing request took {elapsed:.2f} s"
    assert DEVICE_TOKEN not in text
    assert "RuntimeError: orjson: recursion limit reached" in text
    assert len(text) < 40_000
