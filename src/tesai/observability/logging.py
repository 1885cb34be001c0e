"""Structured logs: one JSON object per line on stdout, ready for ELK/Graylog.

Our own code logs through structlog (``structlog.get_logger(__name__)``); libraries that use
the standard ``logging`` module (uvicorn, Celery, SQLAlchemy) are routed through the same
processors, so every line has the same shape. Context bound with
``structlog.contextvars.bind_contextvars`` (the request id, a task's name and id) appears on
every line logged while it is bound.

Three rules hold for every line, whoever logs it, because one request once broke all three
(a 560-byte body nested 254 levels deep: its traceback was rendered with every frame's
locals — the request's headers and a device credential among them — into 60 MB of log,
blocking the event loop for minutes):

- **No secrets** (``redact``): values under secret-looking keys (``authorization``,
  ``cookie``, ``x-api-key``, ``*token*``, ``*password*``, ``*secret*``, ``*key``…) and
  secret-looking text anywhere (``Bearer …``, our API keys and device tokens, JWTs, the
  password of a URL, ``token=…`` in a query string) become ``[REDACTED]``. Tracebacks never
  carry frame locals.
- **Bounded** (``bound``): each string, each container, the nesting depth, the traceback and
  the whole line have a size limit, and rendering walks values iteratively within that
  budget, so its cost does not depend on what was logged.
- **Never blocking** (``LineSink``): a line is handed to a writer thread; when the output
  cannot keep up (a stalled pipe, a slow terminal) lines are dropped and counted instead of
  stalling the caller — the event loop.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import traceback
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from tesai.settings import Settings

# --- redaction --------------------------------------------------------------------------------

REDACTED: Final = "[REDACTED]"

_SECRET_KEY = re.compile(
    r"authorization|cookie|passw|secret|token|credential|jwt|api[_-]?key|private[_-]?key"
    r"|signing[_-]?key|session[_-]?id|^key$|_key$|-key$",
    re.IGNORECASE,
)
"""Keys (and header names) whose values are secret whatever they look like."""
_PUBLIC_KEY = re.compile(
    r"^(idempotency|cache|redis|public|object|partition|sort)[_-]?key$"
    r"|(_id|_ids|_prefix|_type|_kind|_count|_ttl_s|_expires_at)$",
    re.IGNORECASE,
)
"""Names the key rule would catch that are not secrets (identifiers, counts, kinds)."""

_SECRET_TEXT: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {REDACTED}"),
    (re.compile(r"\btesai_[A-Za-z0-9_-]{8,}"), REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@", re.I), rf"\1{REDACTED}@"),
    (
        # `name: value`, `name=value`, `'name': 'value'` (a header line, a query string, the
        # repr of a headers dict): the value, quoted or up to a separator.
        re.compile(
            r"(?i)\b(authorization|cookie|x-api-key|api[_-]?key|password|passwd|secret"
            r"|(?:access_|refresh_|id_|join_|device_)?token)"
            r"(['\"]?\s*[:=]\s*b?)('[^']*'|\"[^\"]*\"|[^\s,;&'\"}]+)"
        ),
        rf"\1\2{REDACTED}",
    ),
)
"""Secret-looking text anywhere: bearer credentials, our API keys and device tokens
(``tesai_…``), JWTs, a URL's password, ``token=…`` in a query string."""


def secret_key(name: str) -> bool:
    """Whether a value logged under ``name`` (a field, a dict key, a header) is a secret."""
    return bool(_SECRET_KEY.search(name)) and not _PUBLIC_KEY.search(name)


def redact_text(text: str) -> str:
    """``text`` with secret-looking parts replaced by ``[REDACTED]``."""
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


# --- bounding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """How much of one log line may be spent on what."""

    string: int = 2_048
    """Characters of one string value."""
    event: int = 4_096
    """Characters of the message (``event``)."""
    exception: int = 16_384
    """Characters of a rendered traceback (its start and its end are kept)."""
    items: int = 32
    """Entries of one dict or list."""
    depth: int = 4
    """Nesting below a top-level field."""
    line: int = 32_768
    """Characters of all the fields together, the traceback excepted."""
    frames: int = 30
    """Stack frames of a traceback (the innermost are kept)."""


LIMITS = Limits()


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[+{len(text) - limit} chars]"


def _clip_middle(text: str, limit: int) -> str:
    """Keeps the start and the end (of a traceback: where it began, what was raised)."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return f"{text[:head]}\n…[{len(text) - limit} chars cut]…\n{text[-tail:]}"


def _short(value: object) -> str:
    """A bounded text of an arbitrary object; its ``repr`` may fail or recurse."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value[:4096]).decode("utf-8", "replace")
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the log line
        return f"<{type(value).__name__}: repr failed: {type(exc).__name__}>"


_SCALARS = (bool, int, float, type(None))


class _Budget:
    """Characters left for one line; each rendered piece spends from it."""

    def __init__(self, chars: int) -> None:
        self.left = chars

    def text(self, value: str, limit: int) -> str:
        if self.left <= 0:
            return "…"
        out = redact_text(_clip(value, min(limit, self.left)))
        self.left -= len(out)
        return out


def _bounded(value: Any, budget: _Budget, limits: Limits) -> Any:
    """A JSON-ready, redacted, bounded copy of ``value`` (iterative: any depth is safe)."""
    # Each work item: (value, depth, container to put the result in, its key or None).
    root: list[Any] = [None]
    work: list[tuple[Any, int, Any, Any]] = [(value, 0, root, 0)]
    while work:
        item, depth, into, slot = work.pop()
        if isinstance(item, _SCALARS):
            out: Any = item
        elif isinstance(item, str):
            out = budget.text(item, limits.string)
        elif isinstance(item, Mapping | list | tuple | set | frozenset):
            if depth >= limits.depth or budget.left <= 0:
                out = f"<{type(item).__name__} of {len(item)}>"
            elif isinstance(item, Mapping):
                out = {}
                for n, (k, v) in enumerate(item.items()):
                    if n >= limits.items:
                        out["…"] = f"{len(item) - n} more"
                        break
                    key = budget.text(k if isinstance(k, str) else _short(k), 128)
                    if secret_key(key):
                        out[key] = REDACTED
                    else:
                        out[key] = None
                        work.append((v, depth + 1, out, key))
            else:
                seq = item if isinstance(item, list | tuple) else list(item)
                # A (name, value) pair whose name is secret: an HTTP header.
                if len(seq) == 2 and isinstance(seq[0], str | bytes) and secret_key(_short(seq[0])):
                    out = [_short(seq[0]), REDACTED]
                else:
                    out = [None] * min(len(seq), limits.items)
                    for i in range(len(out)):
                        work.append((seq[i], depth + 1, out, i))
                    if len(seq) > limits.items:
                        out.append(f"…{len(seq) - limits.items} more")
        else:
            out = budget.text(_short(item), limits.string)
        into[slot] = out
    return root[0]


def bound(
    _: WrappedLogger, __: str, event_dict: EventDict, *, limits: Limits = LIMITS
) -> EventDict:
    """Redact and bound every field of the line (a structlog processor)."""
    budget = _Budget(limits.line)
    out: EventDict = {}
    for key, value in event_dict.items():
        if key == "event" and isinstance(value, str):
            out[key] = budget.text(value, limits.event)
        elif key == "exception" and isinstance(value, str):
            out[key] = redact_text(value)  # format_exception bounded it already
        elif key == "exception":
            out[key] = _bounded(value, _Budget(limits.exception), limits)  # JSON mode's dicts
        elif secret_key(key):
            out[key] = REDACTED
        else:
            out[key] = _bounded(value, budget, limits)
    return out


def format_exception(
    _: WrappedLogger, __: str, event_dict: EventDict, *, limits: Limits = LIMITS
) -> EventDict:
    """``exc_info`` → ``exception``: a plain traceback without locals, its innermost
    ``frames`` only, cut to ``limits.exception`` characters (start and end kept)."""
    exc_info = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple) or exc_info[0] is None:
        return event_dict
    try:
        lines = traceback.TracebackException(
            exc_info[0], exc_info[1], exc_info[2], limit=-limits.frames, capture_locals=False
        ).format()
        text = "".join(_take(lines, limits.exception * 4))
    except Exception as exc:  # a broken __str__ on the exception
        text = f"{exc_info[0].__name__} (traceback failed: {type(exc).__name__})"
    event_dict["exception"] = _clip_middle(text.rstrip("\n"), limits.exception)
    return event_dict


def _take(lines: Any, chars: int) -> list[str]:
    """The first lines of a lazily formatted traceback, up to about ``chars``."""
    out: list[str] = []
    for line in lines:
        out.append(line if len(line) <= chars else _clip(line, chars))
        chars -= len(out[-1])
        if chars <= 0:
            break
    return out


def exception_dicts(limits: Limits = LIMITS) -> Processor:
    """JSON mode: ``exc_info`` → a structured ``exception`` (type, message, frames), never
    frame locals, at most ``limits.frames`` frames."""
    return structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(
            show_locals=False, max_frames=limits.frames, use_rich=False
        )
    )


# --- output -----------------------------------------------------------------------------------


class LineSink:
    """A file-like object (``write``/``flush``) whose ``write`` never waits for the output.

    Lines go to a queue that a daemon thread writes to ``stream``. When more than
    ``max_buffered`` characters are waiting, new lines are dropped, and a line saying how
    many is written once the output catches up. After ``fork`` the child starts its own
    writer thread on first use (Celery's prefork pool).
    """

    def __init__(self, stream: TextIO, *, max_buffered: int = 8 * 1024 * 1024, json: bool = True):
        self.stream = stream
        self.json = json
        self.max_buffered = max_buffered
        self.reset()

    def reset(self) -> None:
        """Start empty, without a writer thread (also in a forked child: the parent's
        thread and lock state do not survive ``fork``)."""
        self._lines: deque[str] = deque()
        self._buffered = 0
        self._dropped = 0
        self._busy = False
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def write(self, text: str) -> None:
        with self._cond:
            if self._buffered + len(text) > self.max_buffered:
                self._dropped += 1
                return
            self._lines.append(text)
            self._buffered += len(text)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tesai-log-writer", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()  # drain() may be waiting on the same condition

    def flush(self) -> None:
        """Nothing to do: the writer thread flushes after each batch."""

    def drain(self, timeout_s: float = 2.0) -> bool:
        """Wait until every queued line is written (tests, exit); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._lines and not self._busy and not self._dropped, timeout_s
            )

    def _dropped_line(self, count: int) -> str:
        if self.json:
            return orjson.dumps({"event": "log_lines_dropped", "count": count}).decode() + "\n"
        return f"log_lines_dropped count={count}\n"

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._lines) or bool(self._dropped))
                batch = "".join(self._lines)
                self._lines.clear()
                self._buffered = 0
                dropped, self._dropped = self._dropped, 0
                self._busy = True
            try:
                if dropped:
                    batch += self._dropped_line(dropped)
                self.stream.write(batch)
                self.stream.flush()
            except Exception:  # noqa: S110 - a closed stream at exit: nowhere left to tell
                pass
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


@dataclass
class _Output:
    sink: LineSink | TextIO = field(default_factory=lambda: sys.stdout)
    json: bool = True
    level: int = logging.INFO


_output = _Output()
_access = structlog.get_logger("tesai.access")


def _at_exit() -> None:
    if isinstance(_output.sink, LineSink):
        _output.sink.drain(1.0)


def _after_fork() -> None:
    if isinstance(_output.sink, LineSink):
        _output.sink.reset()


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork)


def drain_logs(timeout_s: float = 2.0) -> None:
    """Wait until the lines logged so far are written."""
    if isinstance(_output.sink, LineSink):
        _output.sink.drain(timeout_s)


def access_log(**fields: Any) -> None:
    """Write the access-log line of one request (event ``request``).

    The hottest log line of the API, so in JSON mode it skips structlog's processor chain
    and writes the same shape directly: the bound context, ``fields``, level, logger and
    an ISO timestamp. The fields are the middleware's own (method, path, status…), short
    by construction; the path is clipped all the same.
    """
    out = _output
    if out.level > logging.INFO:
        return
    if not out.json:
        _access.info("request", **fields)
        return
    line = structlog.contextvars.get_contextvars()
    line.update(fields)
    path = line.get("path")
    if isinstance(path, str) and len(path) > LIMITS.string:
        line["path"] = _clip(path, LIMITS.string)
    line["event"] = "request"
    line["level"] = "info"
    line["logger"] = "tesai.access"
    line["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    out.sink.write(orjson.dumps(line, default=str).decode() + "\n")


def _orjson_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


class _SinkHandler(logging.Handler):
    """The standard library's records, formatted by our processors, into the sink."""

    def __init__(self, sink: LineSink | TextIO) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure_logging(
    settings: Settings, *, stream: TextIO | None = None, background: bool | None = None
) -> None:
    """Configure structlog and the standard library root logger from ``settings``.

    ``stream`` defaults to stdout; tests pass their own to read the lines back. Lines are
    written by a background thread (``LineSink``) unless ``background`` is False, which is
    the default when a ``stream`` is given (tests read it right after logging).
    """
    out = stream or sys.stdout
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    use_thread = stream is None if background is None else background
    previous = _output.sink
    sink: LineSink | TextIO = out
    if use_thread:
        # One writer thread per output for the life of the process (apps built per test
        # call this again and again).
        if isinstance(previous, LineSink) and previous.stream is out:
            sink = previous
            sink.json = settings.log_json
        else:
            sink = LineSink(out, json=settings.log_json)
    if isinstance(previous, LineSink) and previous is not sink:
        previous.drain(1.0)
    _output.sink, _output.json, _output.level = sink, settings.log_json, level

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    exc: Processor
    if settings.log_json:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        exc = exception_dicts()
    else:
        # Values arrive bounded and tracebacks rendered (format_exception): the console
        # renderer's own exception formatter (rich, with frame locals) never runs.
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
        exc = format_exception
    tail: list[Processor] = [exc, bound, renderer]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(sink),  # type: ignore[arg-type]
        # Caching would pin loggers created before a later configure_logging call (tests).
        cache_logger_on_first_use=False,
    )

    handler = _SinkHandler(sink)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
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
