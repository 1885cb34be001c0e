"""GraphQL at /graphql: same credentials as REST, limits, and errors that are never 500s."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import event

from graphql import GraphQLError
from tesai.auth.errors import MissingRole
from tesai.devices import keys
from tesai.devices.schemas import PoolGroup, PoolStats
from tesai.graphql.errors import classify
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tests.fixtures.auth import MakeUser

ME = "query { me { id email displayName roles createdAt } }"


async def gql(
    client: httpx.AsyncClient, query: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post("/graphql", json={"query": query}, headers=headers or {})


def codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors") or []]


async def test_me_with_access_token(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user, headers = await make_user(roles=("customer", "provider"))
    response = await gql(client, ME, headers)
    assert response.status_code == 200
    body = response.json()
    assert "errors" not in body
    me = body["data"]["me"]
    assert me["id"] == str(user.id)
    assert me["email"] == user.email
    assert me["roles"] == ["customer", "provider"]


async def test_me_with_api_key_in_either_header(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user, headers = await make_user()
    created = await client.post(
        "/api/v1/auth/api-keys", json={"name": "graphql", "scopes": ["read"]}, headers=headers
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    for key_headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
        body = (await gql(client, ME, key_headers)).json()
        assert body["data"]["me"]["id"] == str(user.id), body


async def test_me_without_credentials_is_an_unauthorized_error(client: httpx.AsyncClient) -> None:
    response = await gql(client, ME)
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    assert codes(body) == ["unauthorized"]
    assert body["errors"][0]["path"] == ["me"]


async def test_bad_credentials_are_rejected_like_rest(client: httpx.AsyncClient) -> None:
    for headers in (
        {"Authorization": "Bearer not-a-jwt"},
        {"X-API-Key": "tesai_nope_nope"},
    ):
        response = await gql(client, ME, headers)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] in {"token_invalid", "api_key_invalid", "unauthorized"}


async def test_too_deep_query_is_rejected_before_running(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    _, headers = await make_user()
    deep = "query { me { " + "a { " * 10 + "b" + " }" * 10 + " } }"
    response = await gql(client, deep, headers)
    assert response.status_code < 500
    body = response.json()
    assert body.get("data") is None
    messages = [e["message"] for e in body["errors"]]
    assert any("exceeds maximum operation depth" in m for m in messages), messages
    assert set(codes(body)) == {"invalid_query"}


async def test_too_many_aliases_is_rejected(client: httpx.AsyncClient) -> None:
    query = "query { " + " ".join(f"a{i}: __typename" for i in range(50)) + " }"
    response = await gql(client, query)
    assert response.status_code < 500
    body = response.json()
    assert body.get("data") is None
    assert codes(body) == ["invalid_query"]


async def test_invalid_queries_are_errors_not_500s(client: httpx.AsyncClient) -> None:
    for query in ("query { me {", "query { nope }", "{ me { roles { x } } }", "mutation { x }"):
        response = await gql(client, query)
        assert response.status_code < 500, query
        body = response.json()
        assert body["errors"], query
        assert set(codes(body)) == {"invalid_query"}, (query, body)


async def test_malformed_http_requests_get_problem_json(client: httpx.AsyncClient) -> None:
    cases = [
        client.post("/graphql", json={"variables": {}}),
        client.post("/graphql", content=b"{not json", headers={"Content-Type": "application/json"}),
        client.get("/graphql", params={"query": "{ __typename }", "variables": "[oops"}),
    ]
    for pending in cases:
        response = await pending
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "bad_request"


async def test_introspection_is_not_limited_by_depth(client: httpx.AsyncClient) -> None:
    query = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType "
    query += "{ ofType { ofType { name } } } } } } } } } } }"
    body = (await gql(client, query)).json()
    assert "errors" not in body, body


async def test_oversized_document_is_rejected(client: httpx.AsyncClient) -> None:
    query = "query { " + " ".join("__typename" for _ in range(3000)) + " }"
    response = await gql(client, query)
    assert response.status_code < 500
    body = response.json()
    assert body.get("data") is None
    assert codes(body) == ["invalid_query"]


async def test_pool_is_public_and_matches_rest(client: httpx.AsyncClient) -> None:
    query = """{ pool { gpusOnline gpuDevicesOnline cpuDevicesOnline cpuCoresOnline
        byModelRegion { gpuModel region devices gpus minPricePerGpuHourMicro } } }"""
    body = (await gql(client, query)).json()
    assert "errors" not in body, body
    rest = (await client.get("/api/v1/public/pool")).json()
    pool = body["data"]["pool"]
    assert pool["gpusOnline"] == rest["gpus_online"]
    assert pool["cpuDevicesOnline"] == rest["cpu_devices_online"]
    assert len(pool["byModelRegion"]) == len(rest["by_model_region"])


async def test_pool_groups_carry_large_prices(client: httpx.AsyncClient, runtime: Runtime) -> None:
    """Read through the devices service (its cached answer here); money is ``MicroUSDC``,
    which holds amounts past GraphQL's 32-bit ``Int``."""
    stats = PoolStats(
        gpus_online=8,
        gpu_devices_online=1,
        cpu_devices_online=0,
        cpu_cores_online=0,
        avg_gpu_utilization_pct=12.5,
        avg_cpu_percent=None,
        by_model_region=[
            PoolGroup(
                gpu_model="NVIDIA H100 80GB HBM3",
                region="eu-west",
                devices=1,
                gpus=8,
                avg_utilization_pct=12.5,
                min_price_per_gpu_hour_micro=5_000_000_000,
            )
        ],
        computed_at=utcnow(),
    )
    await runtime.cache.set(keys.POOL, stats.model_dump_json(), ttl_s=60)
    query = "{ pool { gpusOnline byModelRegion { gpuModel region gpus minPricePerGpuHourMicro } } }"
    body = (await gql(client, query)).json()
    assert body == {
        "data": {
            "pool": {
                "gpusOnline": 8,
                "byModelRegion": [
                    {
                        "gpuModel": "NVIDIA H100 80GB HBM3",
                        "region": "eu-west",
                        "gpus": 8,
                        "minPricePerGpuHourMicro": 5_000_000_000,
                    }
                ],
            }
        }
    }


def test_unexpected_resolver_errors_are_masked() -> None:
    leaked = GraphQLError("boom", path=["pool"], original_error=RuntimeError("dsn=secret"))
    masked = classify(leaked)
    assert masked.message == "Internal server error"
    assert masked.extensions == {"code": "internal"}
    assert masked.path == ["pool"]
    refused = classify(GraphQLError("x", original_error=MissingRole("Needs admin", role="admin")))
    assert refused.message == "Needs admin"
    assert refused.extensions == {"code": "missing_role", "status": 403, "role": "admin"}


OFFERS_AND_POOL = """{
  offers(minGpus: 0) { offers { deviceId pricePerGpuHourMicro } groups { gpuModel } }
  pool { gpusOnline byModelRegion { gpuModel } }
}"""


async def test_two_database_fields_in_one_query_both_answer(client: httpx.AsyncClient) -> None:
    """Both resolvers ran at once on the request's one session: 'Internal server error'
    ten times in ten."""
    for _ in range(10):
        response = await gql(client, OFFERS_AND_POOL)
        body = response.json()
        assert "errors" not in body, body
        assert body["data"]["offers"]["offers"] == []
        assert body["data"]["pool"]["gpusOnline"] == 0


async def test_many_aliased_database_fields_share_one_connection(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """Fifteen fields of one query must not take fifteen pooled connections."""
    pool = runtime.engine.sync_engine.pool
    while pool.checkedout():  # type: ignore[attr-defined] # the metrics refresher's start-up query
        await asyncio.sleep(0.01)
    held = {"now": 0, "peak": 0}

    def checkout(*_: Any) -> None:
        held["now"] += 1
        held["peak"] = max(held["peak"], held["now"])

    def checkin(*_: Any) -> None:
        held["now"] -= 1

    query = "{ " + " ".join(f"o{i}: offers {{ offers {{ deviceId }} }}" for i in range(15)) + " }"
    event.listen(pool, "checkout", checkout)
    event.listen(pool, "checkin", checkin)
    try:
        body = (await gql(client, query)).json()
    finally:
        event.remove(pool, "checkout", checkout)
        event.remove(pool, "checkin", checkin)
    assert "errors" not in body, body
    assert len(body["data"]) == 15
    assert held["peak"] == 1


@pytest.mark.parametrize("price", ['"1000000"', "true", "1000000.0"])
async def test_money_arguments_take_only_integers(client: httpx.AsyncClient, price: str) -> None:
    query = f"{{ offers(maxPricePerGpuHourMicro: {price}) {{ offers {{ deviceId }} }} }}"
    body = (await gql(client, query)).json()
    assert body["data"] is None
    assert codes(body) == ["invalid_query"]
    variables = {"p": orjson.loads(price)}
    response = await client.post(
        "/graphql",
        json={
            "query": "query($p: MicroUSDC) "
            "{ offers(maxPricePerGpuHourMicro: $p) { groups { gpuModel } } }",
            "variables": variables,
        },
    )
    assert codes(response.json()) == ["invalid_query"], response.text
    ok = await gql(client, "{ offers(maxPricePerGpuHourMicro: 1000000) { groups { gpuModel } } }")
    assert "errors" not in ok.json()
