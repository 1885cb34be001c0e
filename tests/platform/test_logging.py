"""Structured JSON logs: one object per line, context on every line, no secrets from frames."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog

from tesai.observability.logging import configure_logging
from tesai.settings import Settings


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
