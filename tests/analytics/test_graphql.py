"""The analytics field group over GraphQL: same reports and rules as REST."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from tesai.analytics.rollup import rollup
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tests.analytics.conftest import H0, Market
from tests.fixtures.auth import MakeUser


def report_query(name: str) -> str:
    since, until = (H0 - timedelta(hours=1)).isoformat(), (H0 + timedelta(hours=3)).isoformat()
    return (
        f'query {{ analytics {{ report(name: "{name}", since: "{since}", until: "{until}", '
        'model: "A100") { name grain columns rows } } }'
    )


async def gql(client: httpx.AsyncClient, query: str, headers: dict[str, str] | None = None) -> Any:
    r = await client.post("/graphql", json={"query": query}, headers=headers or {})
    assert r.status_code == 200
    return r.json()


async def test_public_and_admin_reports(
    client: httpx.AsyncClient, runtime: Runtime, market: Market, make_user: MakeUser
) -> None:
    await rollup(runtime.sessionmaker, now=utcnow() + timedelta(hours=1))
    body = await gql(client, report_query("supply_demand"))
    report = body["data"]["analytics"]["report"]
    assert report["grain"] == "hour"
    assert report["rows"][0]["gpus_rented"] == 1.0
    assert report["rows"][0]["utilisation_pct"] == 50.0
    rest = await client.get(
        "/api/v1/public/analytics/supply_demand",
        params={"since": (H0 - timedelta(hours=1)).isoformat(),
                "until": (H0 + timedelta(hours=3)).isoformat(), "model": "A100"},
    )  # fmt: skip
    assert rest.json()["rows"] == report["rows"]

    anonymous = await gql(client, report_query("mtbf"))
    assert anonymous["errors"][0]["extensions"]["code"] == "unauthorized"
    _, customer = await make_user(roles=("customer",))
    denied = await gql(client, report_query("mtbf"), customer)
    assert denied["errors"][0]["extensions"]["status"] == 403
    _, admin = await make_user(roles=("admin",))
    allowed = await gql(client, report_query("mtbf"), admin)
    assert "errors" not in allowed
    assert {r["device_id"] for r in allowed["data"]["analytics"]["report"]["rows"]} == {
        str(market.d1),
        str(market.d2),
    }
    names = await gql(client, "{ analytics { reports { name public } } }", admin)
    assert len(names["data"]["analytics"]["reports"]) == 8
    public = await gql(client, "{ analytics { reports { name public } } }")
    assert all(r["public"] for r in public["data"]["analytics"]["reports"])


async def test_bad_parameters_are_client_errors(client: httpx.AsyncClient) -> None:
    body = await gql(
        client, '{ analytics { report(name: "supply_demand", grain: "week") { name } } }'
    )
    assert body["errors"][0]["extensions"]["status"] == 422
    body = await gql(client, '{ analytics { report(name: "nope") { name } } }')
    assert body["errors"][0]["extensions"]["code"] == "report_not_found"
