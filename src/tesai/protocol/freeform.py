"""Limits on free-form JSON: how deep, how large, and no NUL characters.

Free-form fields (a job's ``runtime_env``, a command result's ``data``, Ray's pending
demand) are stored in JSONB and logged; unchecked, one small request could carry a value
nested hundreds of levels deep (past orjson's and the JSON parser's recursion limits: a 500
and a traceback the size of the value) or a NUL character, which PostgreSQL cannot store in
``text`` or ``jsonb``. Two checks, both answering 422 instead:

- ``BoundedJson`` / ``json_limits``: a pydantic annotation for every free-form field —
  depth, serialised size, NUL, and values orjson (hence the database) can encode (the agent
  protocol's fields let NUL through: the devices domain strips it, see ``protocol.v1``);
- ``raw_json_problem`` and ``urlencoded_problem``: the same rules over a raw request body,
  before any parser runs (``tesai.middleware.InputLimitsMiddleware``).

Part of the wire contract: the agent validates its commands with the same types.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

import numpy as np
import orjson
from pydantic import AfterValidator, Field

MAX_JSON_DEPTH: Final = 32
"""Deepest nesting of objects and arrays inside one free-form field."""
MAX_JSON_BYTES: Final = 64 * 1024
"""Largest free-form field, serialised as JSON."""
MAX_BODY_DEPTH: Final = 64
"""Deepest nesting of a whole JSON request body (a free-form field sits a few levels down)."""

NUL_MESSAGE: Final = "NUL characters (\\u0000) are not accepted"


def json_problem(
    value: Any, *, max_depth: int, max_bytes: int, allow_nul: bool = False
) -> str | None:
    """Why ``value`` (decoded JSON) may not be stored, or None when it may.

    Iterative, so a value nested deeper than the interpreter's recursion limit is refused
    like any other.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not allow_nul and "\x00" in item:
                return NUL_MESSAGE
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return f"nested deeper than {max_depth} levels"
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if not allow_nul and isinstance(key, str) and "\x00" in key:
                    return NUL_MESSAGE
                stack.append((child, depth + 1))
    try:
        size = len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError as exc:  # integers past 64 bits, non-JSON types
        return f"not storable as JSON: {exc}"
    if size > max_bytes:
        return f"larger than {max_bytes} bytes as JSON"
    return None


def json_limits(
    *, max_depth: int = MAX_JSON_DEPTH, max_bytes: int = MAX_JSON_BYTES, allow_nul: bool = False
) -> AfterValidator:
    """A validator for ``Annotated[<json type>, json_limits(...)]``: refuses (422) values
    deeper than ``max_depth``, larger than ``max_bytes`` serialised, that orjson cannot
    encode, or (unless ``allow_nul``) holding a NUL."""

    def check(value: Any) -> Any:
        problem = json_problem(value, max_depth=max_depth, max_bytes=max_bytes, allow_nul=allow_nul)
        if problem is not None:
            raise ValueError(problem)
        return value

    return AfterValidator(check)


BoundedJson = Annotated[
    dict[str, Any],
    json_limits(),
    Field(
        description=(
            f"A JSON object: at most {MAX_JSON_DEPTH} levels deep and {MAX_JSON_BYTES} "
            "bytes serialised; no NUL characters."
        )
    ),
]
"""A free-form JSON object with the default limits."""


# --- raw request bodies ----------------------------------------------------------------------

# A JSON string, escapes included (the unrolled form: linear, no backtracking).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DELTA = np.zeros(256, dtype=np.int32)
_DELTA[list(b"[{")] = 1
_DELTA[list(b"]}")] = -1
# The escape \u0000 itself, not an escaped backslash followed by the text u0000: an odd run
# of backslashes (the lookbehind starts the run at its first backslash; linear time).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _nesting(brackets: bytes) -> int:
    """The deepest nesting of a string of ``[]{}`` (unclosed ones count): a running sum,
    in numpy because an attacker's body may hold a million brackets."""
    steps = _DELTA[np.frombuffer(brackets, dtype=np.uint8)]
    return int(np.cumsum(steps).max(initial=0))


def raw_json_problem(
    body: bytes, *, max_depth: int = MAX_BODY_DEPTH, allow_nul: bool = False
) -> str | None:
    """Why a raw JSON request body is refused before parsing, or None.

    Refuses NUL (raw, or as ``\\u0000`` unless ``allow_nul``) and nesting deeper than
    ``max_depth``: Python's JSON parser recurses once per level and fails past about 1,000
    levels with a ``RecursionError`` (a 500), and nothing we store needs more than
    ``MAX_BODY_DEPTH``. Invalid JSON is left to the parser (its own 422).
    """
    if b"\x00" in body:
        return NUL_MESSAGE  # invalid in JSON text in any case
    if not allow_nul and b"u0000" in body and _NUL_ESCAPE.search(body):
        return NUL_MESSAGE
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return None
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if _nesting(brackets) > max_depth:
        return f"JSON nested deeper than {max_depth} levels"
    return None


def urlencoded_problem(data: bytes) -> str | None:
    """Why a query string or form body is refused (a NUL, raw or ``%00``), or None."""
    if b"\x00" in data or b"%00" in data:
        return NUL_MESSAGE
    return None
