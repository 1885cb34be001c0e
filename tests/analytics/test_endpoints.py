"""Admin and public analytics endpoints: access, problem+json, CSV and Parquet exports."""

from __future__ import annotations

import io
from datetime import timedelta

import httpx
import pandas as pd
import pytest

from tesai.analytics.rollup import rollup
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tests.analytics.conftest import H0, Market
from tests.fixtures.auth import MakeUser

WINDOW = {
    "since": (H0 - timedelta(hours=1)).isoformat(),
    "until": (H0 + timedelta(hours=3)).isoformat(),
}


@pytest.fixture
async def admin(make_user: MakeUser) -> dict[str, str]:
    return (await make_user(roles=("admin",)))[1]


@pytest.fixture
async def rolled(runtime: Runtime, market: Market) -> Market:
    await rollup(runtime.sessionmaker, now=utcnow() + timedelta(hours=1))
    return market


async def test_admin_only(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    _, customer = await make_user(roles=("customer",))
    _, provider = await make_user(roles=("provider",))
    for headers in (customer, provider):
        r = await client.get("/api/v1/internal/analytics/revenue", headers=headers)
        assert r.status_code == 403
        assert r.headers["content-type"] == "application/problem+json"
    r = await client.get("/api/v1/internal/analytics/revenue")
    assert r.status_code == 401


async def test_admin_report_json(
    client: httpx.AsyncClient, admin: dict[str, str], rolled: Market
) -> None:
    listed = await client.get("/api/v1/internal/analytics", headers=admin)
    assert {r["name"] for r in listed.json()} >= {"revenue", "mtbf", "price_index"}
    r = await client.get(
        "/api/v1/internal/analytics/supply_demand",
        params=WINDOW | {"model": "A100", "region": "eu-west"},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["grain"] == "hour"
    assert body["columns"][:3] == ["period", "gpu_model", "region"]
    assert body["rows"] == [
        {"period": H0.isoformat(), "gpu_model": "A100", "region": "eu-west",
         "devices_online": 1.0, "gpus_online": 2.0, "gpus_rented": 1.0,
         "utilisation_pct": 50.0},
    ]  # fmt: skip
    r = await client.get(
        "/api/v1/internal/analytics/provider_earnings",
        params={"since": (utcnow() - timedelta(days=1)).isoformat()},
        headers=admin,
    )
    assert r.json()["rows"][0]["earned_micro"] == 2_400_000
    assert r.json()["rows"][0]["provider_id"] == str(rolled.provider.id)


async def test_public_reports_have_no_per_user_data(
    client: httpx.AsyncClient, rolled: Market
) -> None:
    listed = (await client.get("/api/v1/public/analytics")).json()
    assert {r["name"] for r in listed} == {
        "supply_demand", "utilisation", "price_index", "cluster_outcomes",
    }  # fmt: skip
    for name in ("revenue", "provider_earnings", "provider_reliability", "mtbf"):
        r = await client.get(f"/api/v1/public/analytics/{name}")
        assert r.status_code == 404
        assert r.json()["code"] == "report_not_found"
    ids = {str(rolled.provider.id), str(rolled.customer.id), str(rolled.d1), str(rolled.d2)}
    for item in listed:
        r = await client.get(f"/api/v1/public/analytics/{item['name']}", params=WINDOW)
        assert r.status_code == 200, r.text
        assert r.json()["rows"], item["name"]
        assert not any(i in r.text for i in ids)
        assert "Alpha" not in r.text
        assert not {"provider_id", "device_id", "customer_id"} & set(r.json()["columns"])


@pytest.mark.parametrize(
    "params",
    [
        {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        {"since": "2026-01-01T00:00:00"},
        {"since": "yesterday"},
        {"grain": "week"},
        {"format": "xlsx"},
        {"limit": "0"},
        {"model": ""},
        {"grain": "hour", "since": "2025-01-01T00:00:00Z", "until": "2025-06-01T00:00:00Z"},
    ],
)
async def test_bad_parameters_are_4xx_problems(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    r = await client.get("/api/v1/public/analytics/supply_demand", params=params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"


async def test_unknown_report_is_404(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    r = await client.get("/api/v1/internal/analytics/nope", headers=admin)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


async def test_csv_and_parquet_parse_back(
    client: httpx.AsyncClient, admin: dict[str, str], rolled: Market
) -> None:
    base = "/api/v1/internal/analytics/mtbf"
    params = {"since": H0.isoformat(), "until": (H0 + timedelta(days=1)).isoformat()}
    as_json = (await client.get(base, params=params, headers=admin)).json()
    csv = await client.get(base, params=params | {"format": "csv"}, headers=admin)
    assert csv.status_code == 200
    assert csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv.headers["content-disposition"].startswith('attachment; filename="tesai-mtbf-')
    assert csv.headers["content-disposition"].endswith('.csv"')
    from_csv = pd.read_csv(io.StringIO(csv.text))
    assert list(from_csv.columns) == as_json["columns"]
    assert list(from_csv["device_id"]) == [r["device_id"] for r in as_json["rows"]]
    pq = await client.get(base, params=params | {"format": "parquet"}, headers=admin)
    assert pq.headers["content-type"] == "application/vnd.apache.parquet"
    assert pq.headers["content-disposition"].endswith('.parquet"')
    from_pq = pd.read_parquet(io.BytesIO(pq.content))
    assert from_pq["faults"].tolist() == [r["faults"] for r in as_json["rows"]]
    assert from_pq["up_hours"].tolist() == [r["up_hours"] for r in as_json["rows"]]
    public_pq = await client.get(
        "/api/v1/public/analytics/supply_demand", params=WINDOW | {"format": "parquet"}
    )
    frame = pd.read_parquet(io.BytesIO(public_pq.content))
    assert frame["period"].iloc[0] == pd.Timestamp(H0)
    assert frame["utilisation_pct"].iloc[0] == 50.0
