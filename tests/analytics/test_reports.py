"""Reports from the rollups of the hand-computed market, and their parameter checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from tesai.analytics.errors import ReportNotFound, ReportParamsInvalid
from tesai.analytics.reports import make_params, run_report
from tesai.analytics.rollup import rollup
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tests.analytics.conftest import H0, Market

DAY = H0.replace(hour=0)


@pytest.fixture
async def rolled(runtime: Runtime, market: Market) -> Market:
    await rollup(runtime.sessionmaker, now=utcnow() + timedelta(hours=1))
    return market


async def report(runtime: Runtime, name: str, **kw: object) -> pd.DataFrame:
    kw.setdefault("since", H0 - timedelta(hours=1))
    kw.setdefault("until", H0 + timedelta(hours=3))
    async with runtime.sessionmaker() as s:
        return await run_report(s, name, make_params(**kw))  # type: ignore[arg-type]


async def test_supply_demand_and_utilisation(runtime: Runtime, rolled: Market) -> None:
    df = await report(runtime, "supply_demand")
    first = df.iloc[0].to_dict()
    assert first == {
        "period": pd.Timestamp(H0), "gpu_model": "A100", "region": "eu-west",
        "devices_online": 1.0, "gpus_online": 2.0, "gpus_rented": 1.0, "utilisation_pct": 50.0,
    }  # fmt: skip
    assert len(df) == 3
    util = await report(runtime, "utilisation", region="us-east")
    assert util.to_dict("records") == [
        {"gpu_model": "A100", "region": "us-east", "gpu_hours_online": 0.5,
         "gpu_hours_rented": 0.25, "utilisation_pct": 50.0},
    ]  # fmt: skip


async def test_price_index(runtime: Runtime, rolled: Market) -> None:
    df = await report(runtime, "price_index", gpu_model="A100")
    h0 = df[df["period"] == pd.Timestamp(H0)].iloc[0]
    # 3,600 GPU-s at 1.80 and 600 at 3.60: median 1.80, p90 3.60, mean 2.4 USDC / 4200 s.
    assert abs(h0["median_micro"] - 1_800_000) / 1_800_000 < 0.011
    assert abs(h0["p10_micro"] - 1_800_000) / 1_800_000 < 0.011
    assert abs(h0["p90_micro"] - 3_600_000) / 3_600_000 < 0.011
    assert h0["mean_micro"] == round(2_400_000 * 3600 / 4200)
    assert h0["gpu_hours"] == round(4200 / 3600, 3)


async def test_money_and_leaderboards(runtime: Runtime, rolled: Market) -> None:
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    window = {"since": today - timedelta(days=1), "until": utcnow() + timedelta(hours=1)}
    rev = await report(runtime, "revenue", grain="day", **window)
    assert rev[["revenue_micro", "platform_fees_micro", "provider_earnings_micro",
                "deposits_micro"]].sum().to_dict() == {
        "revenue_micro": 2_640_000, "platform_fees_micro": 240_000,
        "provider_earnings_micro": 2_400_000, "deposits_micro": 10_000_000,
    }  # fmt: skip
    earn = await report(runtime, "provider_earnings", **window)
    assert earn[["rank", "display_name", "earned_micro"]].to_dict("records") == [
        {"rank": 1, "display_name": "Alpha", "earned_micro": 2_400_000}
    ]
    rel = await report(runtime, "provider_reliability", since=DAY, until=DAY + timedelta(days=1))
    r = rel.iloc[0].to_dict()
    assert (r["devices"], r["up_hours"], r["faults"], r["faults_rented"]) == (3, 1.667, 2, 1)
    assert r["mtbf_hours"] == round(6000 / 3600 / 2, 3)


async def test_mtbf_and_cluster_outcomes(runtime: Runtime, rolled: Market) -> None:
    df = await report(runtime, "mtbf", since=DAY, until=DAY + timedelta(days=1))
    got = df[["device_id", "up_hours", "faults", "mtbf_hours"]].to_dict("records")
    assert got[:2] == [
        {"device_id": str(rolled.d2), "up_hours": 0.5, "faults": 1, "mtbf_hours": 0.5},
        {"device_id": str(rolled.d1), "up_hours": 1.0, "faults": 1, "mtbf_hours": 1.0},
    ]
    assert got[2]["device_id"] == str(rolled.d3)
    assert pd.isna(got[2]["mtbf_hours"])
    out = await report(runtime, "cluster_outcomes")
    assert out.to_dict("records") == [
        {"period": pd.Timestamp(H0), "gpu_model": "A100", "started": 1, "completed": 1,
         "failed": 0, "degraded": 1, "self_healed": 1},
        {"period": pd.Timestamp(H0), "gpu_model": "cpu", "started": 0, "completed": 0,
         "failed": 1, "degraded": 0, "self_healed": 0},
    ]  # fmt: skip


async def test_unknown_report_and_public_restriction(runtime: Runtime) -> None:
    params = make_params()
    async with runtime.sessionmaker() as s:
        with pytest.raises(ReportNotFound):
            await run_report(s, "nope", params)
        with pytest.raises(ReportNotFound):
            await run_report(s, "revenue", params, public=True)
        with pytest.raises(ReportParamsInvalid):
            await run_report(s, "revenue", make_params(gpu_model="A100"))


@pytest.mark.parametrize(
    "kw",
    [
        {"since": datetime(2026, 2, 1, tzinfo=UTC), "until": datetime(2026, 1, 1, tzinfo=UTC)},
        {"since": datetime(2024, 1, 1, tzinfo=UTC), "until": datetime(2026, 1, 1, tzinfo=UTC)},
        {"since": datetime(2026, 1, 1), "until": datetime(2026, 1, 2, tzinfo=UTC)},
        {"grain": "week"},
        {"grain": "hour", "since": datetime(2025, 1, 1, tzinfo=UTC),
         "until": datetime(2025, 3, 1, tzinfo=UTC)},
        {"limit": 0},
        {"until": datetime(1, 1, 1, tzinfo=UTC)},
        {"since": datetime(9999, 12, 31, tzinfo=UTC)},
        {"gpu_model": ""},
    ],
)  # fmt: skip
def test_bad_params(kw: dict[str, object]) -> None:
    with pytest.raises(ReportParamsInvalid):
        make_params(**kw)  # type: ignore[arg-type]


def test_default_window_and_grain() -> None:
    now = datetime(2026, 3, 10, 12, 34, tzinfo=UTC)
    p = make_params(now=now)
    assert (p.since, p.until, p.grain) == (datetime(2026, 3, 3, tzinfo=UTC), now, "day")
    short = make_params(since=now - timedelta(hours=5), until=now)
    assert (short.since, short.grain) == (datetime(2026, 3, 10, 7, tzinfo=UTC), "hour")
