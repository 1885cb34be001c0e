"""What a failed ``ray start`` says: a stable reason code, whether another try on the same
device is worth it, and Ray's own lines for the control plane.

``ray start`` often prints the symptom, not the cause, so the verdict reads its output and the
node's Ray log files together:

- a dashboard module that died prints ``Module MetricsHead failed to start. Received EOF from
  pipe.`` on the CLI; why it died is only in ``logs/dashboard_MetricsHead.log`` (e.g.
  ``OSError: … AF_UNIX path length cannot exceed 107 bytes``: the temp dir is too deep);
- a head whose GCS port another cluster's GCS holds fails with ``Failed to start the grpc
  server. The specified port is …`` after its CLI has talked to that other GCS, which answers
  ``InvalidAuthToken``: a port clash, not a token problem. Only a worker can meet a real token
  rejection (a head's own GCS has its token).

Reasons the device is not to blame for — the host too loaded for Ray's fixed startup waits,
a port taken between our check and Ray's bind, a dashboard module that died — are
``retryable``: the agent tries once more (with fresh ports) before reporting the failure.

Pure: strings in, ``StartFailure`` / text out; ``read_session_logs`` is the one file reader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tesai.protocol.v1 import MAX_NODE_MESSAGE

REASON_RAY_START_FAILED: Final = "ray_start_failed"
"""Anything not recognised below: not retried (it may be the device's fault)."""
REASON_RAY_START_TIMEOUT: Final = "ray_start_timeout"
"""``ray start`` or one of Ray's own startup waits ran out of time: an overloaded host."""
REASON_RAY_AUTH_FAILED: Final = "ray_auth_failed"
"""The head's GCS rejected this worker's token (wrong or missing)."""
REASON_RAY_PORT_IN_USE: Final = "ray_port_in_use"
"""A port of the node's block was taken by another process before Ray bound it."""
REASON_RAY_DASHBOARD_FAILED: Final = "ray_dashboard_failed"
"""A process of the head's dashboard (Jobs and state APIs) died while starting."""
REASON_RAY_TEMP_DIR_TOO_LONG: Final = "ray_temp_dir_too_long"
"""Ray's unix socket paths below the node's temp dir would pass the ``AF_UNIX`` limit."""

RETRYABLE: Final = frozenset(
    {REASON_RAY_START_TIMEOUT, REASON_RAY_PORT_IN_USE, REASON_RAY_DASHBOARD_FAILED}
)
"""Failures that are not the device's fault: worth one more ``ray start`` on it."""

MESSAGE_LIMIT: Final = MAX_NODE_MESSAGE
"""Characters of Ray's lines kept with a failure (the wire's ``NodeState.message`` bound)."""
_LINES_PER_FILE: Final = 3
_CLI_LINES: Final = 12
_LINE_CHARS: Final = 400
_LOG_TAIL_BYTES: Final = 16 * 1024
_MAX_LOG_FILES: Final = 40

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_AUTH = ("InvalidAuthToken", "AuthenticationError")
_PORT_CLASH = ("Address already in use", "Failed to start the grpc server", "Failed to bind")
_OVERLOADED = ("timed out during startup", "failed to start. Timeout after")
_MODULE_DIED = "failed to start. Received EOF from pipe"
_SOCKET_TOO_LONG = "AF_UNIX path length"
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception)\b.*:")
_ERROR_LINE = re.compile(
    r"(?:^\[[\d\- :,.]+ [EC] \d+ \d+\])"  # Ray's C++ log: [2026-… E 123 123]
    r"|(?:^[EF]\d{4} )"  # gRPC / absl: E1207 18:29:01.733 …
    r"|(?:\s(?:ERROR|CRITICAL)\s)"  # Python logging
    r"|(?:Check failed)"
)


@dataclass(frozen=True, slots=True)
class StartFailure:
    """Why ``ray start`` failed: a stable code and whether another try is worth it."""

    reason: str
    retryable: bool


def classify(role: str, output: str, logs: Mapping[str, str]) -> StartFailure:
    """The reason of a failed ``ray start`` of a ``role`` node from its CLI output and its
    Ray log files (name → text)."""
    text = "\n".join([output, *logs.values()])
    if _SOCKET_TOO_LONG in text:
        reason = REASON_RAY_TEMP_DIR_TOO_LONG
    elif any(s in text for s in _PORT_CLASH) or (role == "head" and any(s in text for s in _AUTH)):
        reason = REASON_RAY_PORT_IN_USE
    elif any(s in text for s in _AUTH):
        reason = REASON_RAY_AUTH_FAILED
    elif any(s in text for s in _OVERLOADED):
        reason = REASON_RAY_START_TIMEOUT
    elif _MODULE_DIED in text:
        reason = REASON_RAY_DASHBOARD_FAILED
    else:
        reason = REASON_RAY_START_FAILED
    return StartFailure(reason, reason in RETRYABLE)


def _clean(line: str, token: str) -> str:
    # NUL would make the wire's bounded JSON refuse the whole heartbeat carrying the result.
    line = _ANSI.sub("", line).replace("\x00", "").rstrip()
    if token:
        line = line.replace(token, "[token]")
    return line[:_LINE_CHARS]


def headline(output: str) -> str:
    """The raised exception's line of ``ray start`` output (else its last line)."""
    lines = [ln.strip() for ln in _ANSI.sub("", output).strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if _EXCEPTION_LINE.match(ln):
            return ln[:_LINE_CHARS]
    return (lines[-1] if lines else "ray start failed")[:_LINE_CHARS]


def _is_frame(line: str) -> bool:
    """A traceback frame, its source line or a caret line: noise in a short report."""
    s = line.strip()
    return (
        not s
        or s.startswith(('File "', "Traceback (most recent call last)"))
        or set(s) <= {"^", "~", " "}
        or line.startswith("    ")
    )


def _error_lines(text: str) -> list[str]:
    return [
        ln
        for ln in text.splitlines()
        if _ERROR_LINE.search(ln) or _EXCEPTION_LINE.match(ln.strip())
    ]


def _log_order(name: str) -> tuple[int, str]:
    """The dashboard's modules first (their logs hold the cause of a dashboard failure),
    then the GCS, the raylet and the rest."""
    for rank, prefix in enumerate(("dashboard_", "dashboard", "gcs_server", "raylet")):
        if name.startswith(prefix):
            return rank, name
    return 9, name


_STAMP = re.compile(r"^\[[^\]]*\]\s*|^\d{4}-\d\d-\d\d [\d:,.]+\s+")


def _collapse(lines: list[str]) -> list[str]:
    """Runs of one message that differ only in their timestamp (Ray retrying once a second)
    as their last line and a count."""
    out: list[str] = []
    last_key, run = None, 0
    for ln in lines:
        key = _STAMP.sub("", ln)
        if key == last_key:
            run += 1
            out[-1] = f"{ln} (×{run})"
        else:
            last_key, run = key, 1
            out.append(ln)
    return out


def failure_message(
    output: str, logs: Mapping[str, str], token: str, limit: int = MESSAGE_LIMIT
) -> str:
    """Ray's own account of a failed start, at most ``limit`` characters, token redacted.

    The CLI's exception line first, then the last error lines of each Ray log file that has
    any (``name: line``), then as much of the end of the CLI output (without traceback frames,
    repeated retries collapsed) as still fits.
    """
    first = headline(output)
    lines = [_clean(f"ray start: {first}", token)]
    for name in sorted(logs, key=_log_order):
        for ln in _error_lines(logs[name])[-_LINES_PER_FILE:]:
            lines.append(_clean(f"{name}: {ln.strip()}", token))
    lines = list(dict.fromkeys(lines))  # the same line from two files once
    tail = [_clean(ln, token) for ln in _ANSI.sub("", output).splitlines() if not _is_frame(ln)]
    tail = [ln for ln in _collapse(tail) if ln.strip() != first][-_CLI_LINES:]
    size = sum(len(ln) + 1 for ln in lines)
    kept: list[str] = []
    if tail:
        marker = "--- end of ray start output:"
        room = limit - size - len(marker) - 1
        for ln in reversed(tail):
            if len(ln) + 1 > room:
                break
            kept.insert(0, ln)
            room -= len(ln) + 1
        if kept:
            lines += [marker, *kept]
    return "\n".join(lines)[:limit]


def read_session_logs(temp_dir: Path) -> dict[str, str]:
    """The tail of each log file of the node's latest Ray session (``name → text``); empty
    when Ray got no further than creating its temp dir."""
    logs = temp_dir / "session_latest" / "logs"
    if not logs.is_dir():
        sessions = sorted(temp_dir.glob("session_2*"))
        if not sessions:
            return {}
        logs = sessions[-1] / "logs"
    out: dict[str, str] = {}
    try:
        files = sorted(p for p in logs.iterdir() if p.suffix in (".log", ".err", ".out"))
    except OSError:
        return {}
    for path in files[:_MAX_LOG_FILES]:
        try:
            with path.open("rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(size - _LOG_TAIL_BYTES, 0))
                data = f.read()
        except OSError:
            continue
        if data.strip():
            out[path.name] = data.decode("utf-8", errors="replace")
    return out


# --- the temp dir's depth ------------------------------------------------------------------------

AF_UNIX_PATH_MAX: Final = 107
"""Bytes of a unix socket path on Linux (``sun_path`` is 108 with its NUL; macOS: 103)."""
_SESSION_DIR: Final = len("/session_2026-12-07_18-21-30_567726_")
"""Ray's session dir below the temp dir, before the ``ray start`` process's PID."""
LONGEST_SOCKET: Final = {"head": "/sockets/dash_MetricsHead", "worker": "/sockets/plasma_store"}
"""The longest unix socket name Ray 2.60 creates in a session, per role (a head's dashboard
serves each module over ``sockets/dash_<Module>``; MetricsHead is the longest name)."""


def longest_socket_path(temp_dir: Path, role: str, pid_digits: int) -> int:
    """Bytes of the longest unix socket path Ray will create below ``temp_dir``.

    Ray names the session dir after the ``ray start`` process's PID, so the same temp dir can
    start with a 4-digit PID and fail with a 5-digit one: the check uses the most digits a
    PID can have on this host.
    """
    name = LONGEST_SOCKET.get(role, LONGEST_SOCKET["head"])
    return len(str(temp_dir).encode()) + _SESSION_DIR + pid_digits + len(name)
