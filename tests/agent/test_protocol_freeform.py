"""The limits on free-form JSON, as pure functions (``tesai.protocol.freeform``)."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from tesai.protocol.freeform import json_problem, raw_json_problem
from tesai.protocol.v1 import CommandResult


def nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def test_depth_limit_counts_objects_and_arrays() -> None:
    assert json_problem(nested(32), max_depth=32, max_bytes=10**6) is None
    assert json_problem(nested(33), max_depth=32, max_bytes=10**6) == (
        "nested deeper than 32 levels"
    )
    assert json_problem([[[1]]], max_depth=2, max_bytes=10**6) is not None


def test_a_value_past_the_recursion_limit_is_refused_not_crashed() -> None:
    assert json_problem(nested(100_000), max_depth=32, max_bytes=10**6) is not None


def test_size_nul_and_unstorable_values() -> None:
    assert json_problem({"k": "v" * 100}, max_depth=4, max_bytes=50) is not None
    assert json_problem({"k": "a\x00"}, max_depth=4, max_bytes=10**6) is not None
    assert json_problem({"k\x00": 1}, max_depth=4, max_bytes=10**6) is not None
    assert json_problem({"k": "a\x00"}, max_depth=4, max_bytes=10**6, allow_nul=True) is None
    assert json_problem({"n": 2**64}, max_depth=4, max_bytes=10**6) is not None


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (rb'{"a": "\u0000"}', True),
        (rb'{"a": "\\u0000"}', False),  # a backslash, then the text u0000
        (rb'{"a": "\\\u0000"}', True),  # a backslash, then NUL
        (b'{"a": "\x00"}', True),
        (b'{"a": "' + b"[" * 500 + b'"}', False),  # brackets inside a string
        (b"[" * 65 + b"]" * 65, True),
        (b"[" * 64 + b"]" * 64, False),
        (b"[" * 1000, True),  # never closed: the parser would still recurse
    ],
)
def test_raw_body_rules(body: bytes, refused: bool) -> None:
    assert (raw_json_problem(body) is not None) is refused


def test_a_megabyte_of_brackets_is_judged_quickly() -> None:
    started = time.perf_counter()
    assert raw_json_problem(b"[" * 1_000_000) is not None
    assert raw_json_problem(b"[]" * 500_000) is None
    assert raw_json_problem(b"\\" * 1_000_000 + b"u0000") is None
    assert time.perf_counter() - started < 1.0


def test_agent_results_may_hold_nul_but_not_depth() -> None:
    ok = CommandResult.model_validate({"id": "0" * 32, "ok": True, "data": {"log": "a\x00"}})
    assert ok.data == {"log": "a\x00"}
    with pytest.raises(ValidationError):
        CommandResult.model_validate({"id": "0" * 32, "ok": True, "data": nested(40)})
