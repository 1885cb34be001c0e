"""Structured logs: one JSON object per line on stdout, ready for ELK/Graylog.

Our own code logs through structlog (``structlog.get_logger(__name__)``); libraries that use
the standard ``logging`` module (uvicorn, Celery, SQLAlchemy) are routed through the same
processors, so every line has the same shape. Context bound with
``structlog.contextvars.bind_contextvars`` (the request id, a task's name and id) appears on
every line logged while it is bound.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import Processor

from tesai.settings import Settings


def _orjson_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


@dataclass
class _Output:
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    json: bool = True
    level: int = logging.INFO


_output = _Output()
_access = structlog.get_logger("tesai.access")


def access_log(**fields: Any) -> None:
    """Write the access-log line of one request (event ``request``).

    The hottest log line of the API, so in JSON mode it skips structlog's processor chain
    and writes the same shape directly: the bound context, ``fields``, level, logger and
    an ISO timestamp.
    """
    out = _output
    if out.level > logging.INFO:
        return
    if not out.json:
        _access.info("request", **fields)
        return
    line = structlog.contextvars.get_contextvars()
    line.update(fields)
    line["event"] = "request"
    line["level"] = "info"
    line["logger"] = "tesai.access"
    line["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    out.stream.write(orjson.dumps(line, default=str).decode() + "\n")
    out.stream.flush()


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library root logger from ``settings``.

    ``stream`` defaults to stdout; tests pass their own to read the lines back.
    """
    out = stream or sys.stdout
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    _output.stream, _output.json, _output.level = out, settings.log_json, level
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if settings.log_json:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        # Structured tracebacks without frame locals: locals would copy secrets (URLs with
        # passwords, tokens) into the logs.
        exc: list[Processor] = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        exc = []
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *exc, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(out),
        # Caching would pin loggers created before a later configure_logging call (tests).
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exc,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_tesai", False):
            root.removeHandler(old)
    handler._tesai = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's own access log would duplicate ours (see RequestContextMiddleware).
    logging.getLogger("uvicorn.access").disabled = True
