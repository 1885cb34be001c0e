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
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import Processor

from tesai.settings import Settings


def _orjson_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library root logger from ``settings``.

    ``stream`` defaults to stdout; tests pass their own to read the lines back.
    """
    out = stream or sys.stdout
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if settings.log_json:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        exc: list[Processor] = [structlog.processors.dict_tracebacks]
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
