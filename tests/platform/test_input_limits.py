"""Input no handler can store or parse is refused at the edge with 422 problem+json.

Each named field was a 500 before: a JSON value nested past orjson's recursion limit (254
levels) or the JSON parser's (about 1,000), or a NUL character PostgreSQL cannot store in
``text``/``jsonb``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fixtures.auth import MakeUser
from tests.platform.conftest import MakeClient


def nested(levels: int, leaf: Any = 1) -> Any:
    """``{"a": {"a": … leaf}}``: ``levels`` objects deep."""
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def raw_nested(levels: int) -> bytes:
    """The same as JSON text, built without a recursive encoder."""
    return b'{"a":' * levels + b"1" + b"}" * levels


def assert_refused(response: httpx.Response, *, status: int = 422) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == status


@pytest.fixture
async def client(make_client: MakeClient) -> httpx.AsyncClient:
    return await make_client()


@pytest.fixture
async def customer(make_user: MakeUser) -> dict[str, str]:
    _, headers = await make_user(roles=("customer",))
    return headers


@pytest.fixture
async def admin(make_user: MakeUser) -> dict[str, str]:
    _, headers = await make_user(roles=("customer", "admin"))
    return headers


def jobs_url() -> str:
    return f"/api/v1/clusters/{uuid.uuid4()}/jobs"


async def test_job_with_runtime_env_nested_254_levels_is_422(
    client: httpx.AsyncClient, customer: dict[str, str]
) -> None:
    body = b'{"entrypoint": "python x.py", "runtime_env": ' + raw_nested(254) + b"}"
    r = await client.post(
        jobs_url(), content=body, headers={**customer, "content-type": "application/json"}
    )
    assert_refused(r)
    assert "nested deeper" in r.json()["detail"]


async def test_job_with_runtime_env_past_the_field_limit_is_422(
    client: httpx.AsyncClient, customer: dict[str, str]
) -> None:
    """Within what the body check lets through, the field's own limit (32) still holds."""
    r = await client.post(
        jobs_url(),
        json={"entrypoint": "python x.py", "runtime_env": nested(40)},
        headers=customer,
    )
    assert_refused(r)
    assert r.json()["errors"][0]["loc"][-1] == "runtime_env"
    big = {"env_vars": {f"K{i}": "v" * 100 for i in range(1_000)}}
    r = await client.post(
        jobs_url(), json={"entrypoint": "python x.py", "runtime_env": big}, headers=customer
    )
    assert_refused(r)


async def test_job_with_an_integer_past_64_bits_in_runtime_env_is_422(
    client: httpx.AsyncClient, customer: dict[str, str]
) -> None:
    r = await client.post(
        jobs_url(),
        json={"entrypoint": "python x.py", "runtime_env": {"n": 10**30}},
        headers=customer,
    )
    assert_refused(r)


async def test_a_shallow_runtime_env_passes_validation(
    client: httpx.AsyncClient, customer: dict[str, str]
) -> None:
    r = await client.post(
        jobs_url(),
        json={"entrypoint": "python x.py", "runtime_env": nested(30), "metadata": {"k": "v"}},
        headers=customer,
    )
    assert r.status_code == 404, r.text  # validated; then no such cluster


@pytest.mark.parametrize(
    "body",
    [
        {"entrypoint": "python x.py\u0000; rm -rf /"},
        {"entrypoint": "python x.py", "metadata": {"team": "a\u0000b"}},
        {"entrypoint": "python x.py", "metadata": {"te\u0000am": "a"}},
        {"entrypoint": "python x.py", "runtime_env": {"env_vars": {"A": "\u0000"}}},
    ],
    ids=["entrypoint", "metadata-value", "metadata-key", "runtime_env"],
)
async def test_job_with_nul_in_a_string_is_422(
    client: httpx.AsyncClient, customer: dict[str, str], body: dict[str, Any]
) -> None:
    r = await client.post(jobs_url(), json=body, headers=customer)
    assert_refused(r)
    assert "NUL" in r.json()["detail"]


async def test_cluster_name_with_nul_is_422(
    client: httpx.AsyncClient, customer: dict[str, str]
) -> None:
    r = await client.post(
        "/api/v1/clusters",
        json={"name": "train\u0000ing", "request": {"nodes": 1, "duration_s": 3600}},
        headers=customer,
    )
    assert_refused(r)


async def test_admin_reason_query_with_nul_is_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    r = await client.post(
        f"/api/v1/internal/clusters/{uuid.uuid4()}/terminate?reason=abuse%00", headers=admin
    )
    assert_refused(r)
    assert r.json()["detail"].startswith("query:")


async def test_graphql_variables_nested_990_levels_are_422(client: httpx.AsyncClient) -> None:
    body = b'{"query": "{ pool { gpusOnline } }", "variables": ' + raw_nested(990) + b"}"
    r = await client.post("/graphql", content=body, headers={"content-type": "application/json"})
    assert_refused(r)


async def test_an_escaped_backslash_before_u0000_is_text_not_nul(
    client: httpx.AsyncClient,
) -> None:
    """``"\\\\u0000"`` is a backslash and the letters u0000: storable, so let through."""
    r = await client.post(
        "/api/v1/test-echo/json",
        content=b'{"path": "C:\\\\u0000"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text


async def test_nul_in_a_form_body_or_a_path_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/test-echo/raw",
        content=b"a=1&b=%00",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_refused(r)
    r = await client.get("/api/v1/test-items/1%00")
    assert_refused(r)


async def test_deep_json_sent_in_chunks_without_length_is_422(
    client: httpx.AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a":' * 500
        yield b"1" + b"}" * 500

    r = await client.post(
        "/api/v1/test-echo/json", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_refused(r)


async def test_other_bodies_stream_through_unread(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/test-echo/raw",
        content=b"\x00" * 1000 + b"[" * 1000,
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 2000}


@pytest.mark.parametrize("amount", ["1000000", True, 1000000.0], ids=["string", "bool", "float"])
async def test_money_fields_take_only_json_integers(
    client: httpx.AsyncClient, make_user: MakeUser, amount: Any
) -> None:
    _, headers = await make_user(roles=("customer", "provider"))
    refused = [
        ("/api/v1/clusters", {"budget_micro": amount, "request": {"nodes": 1, "duration_s": 60}}),
        ("/api/v1/provider/devices", {"name": "box", "price_per_gpu_hour_micro": amount}),
        ("/api/v1/customer/deposits", {"amount_micro": amount}),
        (
            "/api/v1/quotes",
            {"nodes": 1, "duration_s": 3600, "max_price_per_gpu_hour_micro": amount},
        ),
    ]
    for path, body in refused:
        r = await client.post(path, json=body, headers=headers)
        assert_refused(r)
        assert any("micro" in ".".join(e["loc"]) for e in r.json()["errors"]), (path, r.text)
