"""Heartbeats with free-form JSON nested too deep: 422, nothing stored.

``command_results[].data`` and ``nodes[].pending_demand`` are stored and logged as they
come; nested past orjson's limit, each beat used to be a 500 (and, with the console log, a
traceback the size of the value). NUL is the agent API's one exception to the NUL rule:
hardware and Ray output carry it, so it is removed, not refused.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson

from tests.devices.conftest import Pool, beat
from tests.platform.test_input_limits import assert_refused, nested, raw_nested


def _node(**extra: Any) -> dict[str, Any]:
    return {"cluster_id": str(uuid.uuid4()), "role": "head", "state": "running", **extra}


def _result(data: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "ok": True, "data": data}


async def test_heartbeat_with_deep_free_form_json_is_422(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined()
    refused = [
        beat(command_results=[_result(nested(40))]),
        beat(command_results=[_result({"log": "x" * 70_000})]),
        beat(nodes=[_node(pending_demand=[nested(10)])]),
    ]
    for body in refused:
        r = await client.post("/api/v1/agent/heartbeat", json=body, headers=joined.headers)
        assert_refused(r)
    # Past the JSON parser's own limits: refused before it runs.
    for field, deep in (
        (b'"command_results": [{"id": "%s", "ok": true, "data": ' % str(uuid.uuid4()).encode(),
         raw_nested(300) + b"}]"),
        (b'"nodes": [{"cluster_id": "%s", "role": "head", "state": "running", '
         b'"pending_demand": [' % str(uuid.uuid4()).encode(), raw_nested(1_000) + b"]}]"),
    ):  # fmt: skip
        body = orjson.dumps(beat(2))[:-1] + b", " + field + deep + b"}"
        r = await client.post(
            "/api/v1/agent/heartbeat",
            content=body,
            headers={**joined.headers, "content-type": "application/json"},
        )
        assert_refused(r)


async def test_heartbeat_with_ordinary_json_and_nul_from_hardware_is_accepted(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined()
    body = beat(
        3,
        command_results=[_result({"ray": {"version": "2.60.0", "log": "a\u0000b"}})],
        nodes=[_node(pending_demand=[{"GPU": 1.0, "CPU": 4.0}])],
        reason="nvml: GPU\u0000\u0000",
    )
    r = await client.post("/api/v1/agent/heartbeat", json=body, headers=joined.headers)
    assert r.status_code == 200, r.text
