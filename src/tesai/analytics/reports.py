"""Reports computed with pandas from the rollup tables (never from raw rows).

Every report takes ``ReportParams`` (a window, a grain, optional GPU model and region
filters, a row limit) and returns a ``pandas.DataFrame`` whose columns are the report's
contract for JSON, CSV, Parquet, GraphQL and the CLI. SQL does the first reduction (filter by
the indexed ``(grain, start)`` and sum); pandas does the rest (rates, weighted quantiles,
pivots, rankings), so a report reads at most a few hundred thousand rollup rows.

Money is integer micro-USDC; prices are per unit-hour (a GPU, or a CPU-only machine) at the
providers' prices, before the platform fee.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import pandas as pd
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.analytics.errors import ReportNotFound, ReportParamsInvalid
from tesai.analytics.rollup import ALL_REGIONS, PRICE_BUCKET_BASE, SETTLE_KINDS
from tesai.kit.time import utcnow

GRAIN_SECONDS = {"hour": 3600, "day": 86400}
MAX_WINDOW = timedelta(days=400)
MAX_HOURLY_WINDOW = timedelta(days=31)
DEFAULT_WINDOW = timedelta(days=7)
MAX_LIMIT = 10_000
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
OUTCOMES = ("started", "completed", "failed", "degraded", "self_healed")


@dataclass(frozen=True)
class ReportParams:
    since: datetime
    until: datetime
    grain: str
    gpu_model: str | None = None
    region: str | None = None
    limit: int = 1000


def _floor(t: datetime, grain: str) -> datetime:
    t = t.astimezone(UTC)
    t = t.replace(minute=0, second=0, microsecond=0)
    return t.replace(hour=0) if grain == "day" else t


def make_params(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    grain: str | None = None,
    gpu_model: str | None = None,
    region: str | None = None,
    limit: int | None = None,
    now: datetime | None = None,
) -> ReportParams:
    """Checked parameters: the default window is the last 7 days; the default grain is
    ``hour`` up to 3 days and ``day`` beyond. Raises ``ReportParamsInvalid`` (422)."""
    for name, t in (("since", since), ("until", until)):
        if t is not None and t.tzinfo is None:
            raise ReportParamsInvalid(f"'{name}' needs a time zone (e.g. 2026-01-01T00:00Z)")
        if t is not None and not EARLIEST <= t <= LATEST:
            raise ReportParamsInvalid(f"'{name}' must lie between 2000 and 2200")
    until = until or (now or utcnow())
    since = since or until - DEFAULT_WINDOW
    if since >= until:
        raise ReportParamsInvalid("'since' must be before 'until'")
    if until - since > MAX_WINDOW:
        raise ReportParamsInvalid(f"The window may span at most {MAX_WINDOW.days} days")
    if grain is None:
        grain = "hour" if until - since <= timedelta(days=3) else "day"
    if grain not in GRAIN_SECONDS:
        raise ReportParamsInvalid("'grain' must be 'hour' or 'day'")
    if grain == "hour" and until - since > MAX_HOURLY_WINDOW:
        raise ReportParamsInvalid(
            f"Hourly reports span at most {MAX_HOURLY_WINDOW.days} days; use grain=day"
        )
    limit = 1000 if limit is None else limit
    if not 1 <= limit <= MAX_LIMIT:
        raise ReportParamsInvalid(f"'limit' must be between 1 and {MAX_LIMIT}")
    for name, value in (("model", gpu_model), ("region", region)):
        if value is not None and not 1 <= len(value) <= 128:
            raise ReportParamsInvalid(f"'{name}' must be 1 to 128 characters")
    if region == ALL_REGIONS:
        raise ReportParamsInvalid("Leave 'region' out for all regions")
    return ReportParams(_floor(since, grain), until, grain, gpu_model, region, limit)


async def _frame(session: AsyncSession, sql: str, params: dict[str, Any]) -> pd.DataFrame:
    result = await session.execute(text(sql), params)
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _filters(p: ReportParams, model_col: str, region_col: str) -> tuple[str, dict[str, Any]]:
    sql = ""
    args: dict[str, Any] = {}
    if p.gpu_model is not None:
        sql += f" AND {model_col} = :model"
        args["model"] = p.gpu_model
    if p.region is not None:
        sql += f" AND {region_col} = :region"
        args["region"] = p.region
    return sql, args


def _window(p: ReportParams) -> dict[str, Any]:
    return {"grain": p.grain, "since": p.since, "until": p.until}


def _no_filters(p: ReportParams, report: str) -> None:
    if p.gpu_model is not None or p.region is not None:
        raise ReportParamsInvalid(f"'{report}' cannot be filtered by model or region")


def _ratio(num: pd.Series, den: pd.Series, scale: float = 1.0) -> pd.Series:
    out = (num.astype("float64") * scale / den.astype("float64").replace(0.0, np.nan)).round(3)
    return out


async def _market(session: AsyncSession, p: ReportParams) -> pd.DataFrame:
    where, args = _filters(p, "gpu_model", "region")
    return await _frame(
        session,
        f"""
SELECT start AS period, gpu_model, region, up_device_s, up_gpu_s, rented_gpu_s, provider_micro,
       faults
FROM analytics_market WHERE grain = :grain AND start >= :since AND start < :until{where}
ORDER BY start, gpu_model, region""",  # noqa: S608
        _window(p) | args,
    )


async def supply_demand(session: AsyncSession, p: ReportParams) -> pd.DataFrame:
    """Per period, GPU model and region: devices and GPUs online (verified, averaged over
    the period), GPUs rented, utilisation %."""
    df = await _market(session, p)
    secs = GRAIN_SECONDS[p.grain]
    out = df[["period", "gpu_model", "region"]].copy()
    out["devices_online"] = (df["up_device_s"].astype("float64") / secs).round(3)
    out["gpus_online"] = (df["up_gpu_s"].astype("float64") / secs).round(3)
    out["gpus_rented"] = (df["rented_gpu_s"].astype("float64") / secs).round(3)
    out["utilisation_pct"] = _ratio(df["rented_gpu_s"], df["up_gpu_s"], 100.0)
    return out


async def utilisation(session: AsyncSession, p: ReportParams) -> pd.DataFrame:
    """Per GPU model and region over the whole window: GPU-hours online and rented, %."""
    df = await _market(session, p)
    g = df.groupby(["gpu_model", "region"], as_index=False)[["up_gpu_s", "rented_gpu_s"]].sum()
    out = g[["gpu_model", "region"]].copy()
    out["gpu_hours_online"] = (g["up_gpu_s"].astype("float64") / 3600).round(3)
    out["gpu_hours_rented"] = (g["rented_gpu_s"].astype("float64") / 3600).round(3)
    out["utilisation_pct"] = _ratio(g["rented_gpu_s"], g["up_gpu_s"], 100.0)
    return out.sort_values(["gpu_model", "region"], ignore_index=True)


def bucket_price(bucket: pd.Series) -> pd.Series:
    """Representative price (micro-USDC per unit-hour) of histogram buckets: their midpoint."""
    prices = np.round(np.power(PRICE_BUCKET_BASE, bucket.to_numpy(dtype="float64") + 0.5))
    return pd.Series(prices.astype("int64"), index=bucket.index)


QUANTILES = {"p10": 0.10, "median": 0.50, "p90": 0.90}

# The histogram is summed over regions (unless filtered) and cumulated per period and model
# in SQL; only the buckets where a quantile is crossed come back (≤ 3 rows per group), so the
# report's cost does not grow with the number of buckets.
_PRICE_CROSSINGS = """
WITH h AS (
  SELECT start, gpu_model, bucket, sum(gpu_s) AS w FROM analytics_prices
  WHERE grain = :grain AND start >= :since AND start < :until{where}
  GROUP BY start, gpu_model, bucket
), c AS (
  SELECT start, gpu_model, bucket, w,
         sum(w) OVER (PARTITION BY start, gpu_model ORDER BY bucket) AS cum,
         sum(w) OVER (PARTITION BY start, gpu_model) AS total
  FROM h
), q AS (SELECT * FROM unnest(CAST(:names AS text[]), CAST(:qs AS float8[])) AS q(name, q))
SELECT c.start AS period, c.gpu_model, q.name, c.bucket, CAST(c.total AS bigint) AS total
FROM c JOIN q ON c.cum >= q.q * c.total AND c.cum - c.w < q.q * c.total"""


async def price_index(session: AsyncSession, p: ReportParams) -> pd.DataFrame:
    """Per period and GPU model: median and spread (p10–p90) of the price per GPU-hour paid,
    weighted by GPU-seconds sold, and the mean (money ÷ GPU-hours).

    Prices come from a histogram in 2 % buckets: quantiles are within 1 % of the exact ones.
    """
    where, args = _filters(p, "gpu_model", "region")
    if p.region is None:
        where += f" AND region = '{ALL_REGIONS}'"
    keys = ["period", "gpu_model"]
    crossings = await _frame(
        session,
        _PRICE_CROSSINGS.format(where=where),
        _window(p) | args | {"names": list(QUANTILES), "qs": list(QUANTILES.values())},
    )
    cols = [*keys, "gpu_hours", "median_micro", "p10_micro", "p90_micro", "spread_pct"]
    if crossings.empty:
        return pd.DataFrame(columns=[*cols, "mean_micro"])
    crossings["price"] = bucket_price(crossings["bucket"])
    wide = crossings.pivot_table(index=[*keys, "total"], columns="name", values="price")
    wide = wide.reset_index()
    out = wide[keys].copy()
    out["gpu_hours"] = (wide["total"].astype("float64") / 3600).round(3)
    for name in ("median", "p10", "p90"):
        out[f"{name}_micro"] = wide[name].astype("int64")
    out["spread_pct"] = _ratio(out["p90_micro"] - out["p10_micro"], out["median_micro"], 100.0)
    market = await _market(session, p)
    m = market.groupby(keys, as_index=False)[["provider_micro", "rented_gpu_s"]].sum()
    m["mean_micro"] = _ratio(m["provider_micro"], m["rented_gpu_s"], 3600.0).round(0)
    out = out.merge(m[[*keys, "mean_micro"]], on=keys, how="left")
    out["mean_micro"] = out["mean_micro"].astype("Int64")
    return out.sort_values(keys, ignore_index=True)


async def revenue(session: AsyncSession, p: ReportParams) -> pd.DataFrame:
    """Per period: what customers paid for usage, the platform's fees, providers' earnings,
    deposits credited."""
    _no_filters(p, "revenue")
    df = await _frame(
        session,
        """
SELECT start AS period, tx_kind, account_kind, credit_micro, debit_micro
FROM analytics_ledger WHERE grain = :grain AND start >= :since AND start < :until""",
        _window(p),
    )
    settle = df["tx_kind"].isin(SETTLE_KINDS)
    net = df["credit_micro"] - df["debit_micro"]
    parts = {
        "revenue_micro": (settle & (df["account_kind"] == "customer_held"), -net),
        "platform_fees_micro": (settle & (df["account_kind"] == "platform_fees"), net),
        "provider_earnings_micro": (settle & (df["account_kind"] == "provider_earnings"), net),
        "deposits_micro": (
            (df["tx_kind"] == "deposit") & (df["account_kind"] == "customer_available"),
            net,
        ),
    }
    out = pd.DataFrame({"period": sorted(df["period"].unique())})
    for name, (mask, values) in parts.items():
        s = values[mask].groupby(df["period"][mask]).sum().rename(name)
        out = out.merge(s, left_on="period", right_index=True, how="left")
        out[name] = out[name].fillna(0).astype("int64")
    return out


async def provider_earnings(session: AsyncSession, p: ReportParams) -> pd.DataFrame:
    """Providers ranked by earnings credited in the window, with their rented GPU-hours."""
    _no_filters(p, "provider_earnings")
    args = {"since": _floor(p.since, "day"), "until": p.until}
    earned = await _frame(
        session,
        """
SELECT provider_id, CAST(sum(earned_micro) AS bigint) AS earned_micro
FROM analytics_provider_daily WHERE day >= :since AND day < :until GROUP BY provider_id""",
        args,
    )
    rented = await _frame(
        session,
        """
SELECT provider_id, CAST(sum(rented_s) AS bigint) AS rented_s
FROM analytics_device_daily WHERE day >= :since AND day < :until GROUP BY provider_id""",
        args,
    )
    df = earned.merge(rented, on="provider_id", how="outer")
    df["earned_micro"] = df["earned_micro"].fillna(0).astype("int64")
    df["rented_node_hours"] = (df["rented_s"].fillna(0).astype("float64") / 3600).round(3)
    df = df.sort_values(["earned_micro", "rented_node_hours"], ascending=False).head(p.limit)
    df = await _with_names(session, df)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df[["rank", "provider_id", "display_name", "earned_micro", "rented_node_hours"]]


async def _with_names(session: AsyncSession, df: pd.DataFrame) -> pd.DataFrame:
    ids = [str(i) for i in df["provider_id"]]
    names = await _frame(
        session,
        "SELECT id AS provider_id, display_name FROM users WHERE id = ANY(CAST(:ids AS uuid[]))",
        {"ids": ids},
    )
    out = df.merge(names, on="provider_id", how="left")
    out["provider_id"] = out["provider_id"].astype(str)
    out["display_name"] = out["display_name"].fillna("")
    return out.reset_index(drop=True)


_DEVICE_TOTALS = """
(SELECT device_id, provider_id, sum(up_s) AS up_s, sum(rented_s) AS rented_s,
        sum(faults) AS faults, sum(faults_rented) AS faults_rented
 FROM analytics_device_daily WHERE day >= :since AND day < :until
 GROUP BY device_id, provider_id) x
JOIN devices d ON d.id = x.device_id"""


async def _device_totals(
    session: AsyncSession, p: ReportParams, select: str, tail: str
) -> pd.DataFrame:
    """Per-device totals over the window (filtered by the device's model and region),
    reduced further by ``select … tail`` in SQL so only the report's rows come back."""
    where, args = _filters(p, "coalesce(d.gpu_model, 'cpu')", "coalesce(d.region, 'unknown')")
    return await _frame(
        session,
        f"SELECT {select} FROM {_DEVICE_TOTALS} WHERE true{where} {tail}",  # noqa: S608
        {"since": _floor(p.since, "day"), "until": p.until, "limit": p.limit} | args,
    )


def _mtbf_hours(up_s: pd.Series, faults: pd.Series) -> pd.Series:
    """Uptime hours per fault; no fault → the uptime itself is a lower bound, so NaN."""
    return _ratio(up_s, faults, 1 / 3600)


async def provider_reliability(session: AsyncSession, p: ReportParams) -> pd.DataFrame:
    """Providers ranked by faults per 1,000 device-hours up (fewest first), then by uptime."""
    g = await _device_totals(
        session,
        p,
        "x.provider_id, count(*) AS devices, sum(x.up_s) AS up_s, sum(x.faults) AS faults, "
        "sum(x.faults_rented) AS faults_rented",
        "GROUP BY x.provider_id HAVING sum(x.up_s) > 0",
    )
    g["up_hours"] = (g["up_s"].astype("float64") / 3600).round(3)
    g["faults_per_1000h"] = _ratio(g["faults"], g["up_s"], 3_600_000.0).fillna(0.0)
    g["mtbf_hours"] = _mtbf_hours(g["up_s"], g["faults"])
    g = g[g["up_s"] > 0].sort_values(["faults_per_1000h", "up_hours"], ascending=[True, False])
    g = await _with_names(session, g.head(p.limit))
    g.insert(0, "rank", range(1, len(g) + 1))
    g["faults"] = g["faults"].astype("int64")
    g["faults_rented"] = g["faults_rented"].astype("int64")
    return g[
        [
            "rank", "provider_id", "display_name", "devices", "up_hours", "faults",
            "faults_rented", "faults_per_1000h", "mtbf_hours",
        ]
    ]  # fmt: skip


async def mtbf(session: AsyncSession, p: ReportParams) -> pd.DataFrame:
    """Per device: hours up, faults and mean time between failures (least reliable first)."""
    df = await _device_totals(
        session,
        p,
        "x.device_id, x.provider_id, coalesce(d.gpu_model, 'cpu') AS gpu_model, "
        "coalesce(d.region, 'unknown') AS region, x.up_s, x.faults, x.faults_rented",
        "AND (x.up_s > 0 OR x.faults > 0) ORDER BY x.up_s / nullif(x.faults, 0) NULLS LAST, "
        "x.faults DESC, x.up_s DESC LIMIT :limit",
    )
    df["up_hours"] = (df["up_s"].astype("float64") / 3600).round(3)
    df["mtbf_hours"] = _mtbf_hours(df["up_s"], df["faults"])
    df["faults"] = df["faults"].astype("int64")
    df["faults_rented"] = df["faults_rented"].astype("int64")
    df = df.sort_values(
        ["mtbf_hours", "faults", "up_hours"], ascending=[True, False, False], na_position="last"
    ).head(p.limit)
    df["device_id"] = df["device_id"].astype(str)
    df["provider_id"] = df["provider_id"].astype(str)
    cols = ["device_id", "provider_id", "gpu_model", "region", "up_hours", "faults",
            "faults_rented", "mtbf_hours"]  # fmt: skip
    return df[cols].reset_index(drop=True)


async def cluster_outcomes(session: AsyncSession, p: ReportParams) -> pd.DataFrame:
    """Per period and GPU model: clusters started, completed, failed, degraded, self-healed."""
    if p.region is not None:
        raise ReportParamsInvalid("'cluster_outcomes' cannot be filtered by region")
    where, args = _filters(p, "gpu_model", "gpu_model")
    df = await _frame(
        session,
        f"""
SELECT start AS period, gpu_model, outcome, clusters FROM analytics_cluster_outcomes
WHERE grain = :grain AND start >= :since AND start < :until{where}""",  # noqa: S608
        _window(p) | args,
    )
    wide = df.pivot_table(
        index=["period", "gpu_model"], columns="outcome", values="clusters", aggfunc="sum"
    )
    wide = wide.reindex(columns=list(OUTCOMES)).fillna(0).astype("int64")
    wide.columns.name = None
    return wide.reset_index()


ReportFn = Callable[[AsyncSession, ReportParams], Awaitable[pd.DataFrame]]


@dataclass(frozen=True)
class Report:
    name: str
    fn: ReportFn
    public: bool
    """Platform-wide aggregates with no per-customer or per-provider data."""

    @property
    def description(self) -> str:
        return (self.fn.__doc__ or "").split("\n\n")[0].replace("\n", " ")


REPORTS: dict[str, Report] = {
    r.name: r
    for r in (
        Report("supply_demand", supply_demand, public=True),
        Report("utilisation", utilisation, public=True),
        Report("price_index", price_index, public=True),
        Report("cluster_outcomes", cluster_outcomes, public=True),
        Report("revenue", revenue, public=False),
        Report("provider_earnings", provider_earnings, public=False),
        Report("provider_reliability", provider_reliability, public=False),
        Report("mtbf", mtbf, public=False),
    )
}
PUBLIC_REPORTS = tuple(n for n, r in REPORTS.items() if r.public)


async def run_report(
    session: AsyncSession, name: str, params: ReportParams, *, public: bool = False
) -> pd.DataFrame:
    """The report's frame. Raises ``ReportNotFound`` (404) for an unknown name or, when
    ``public``, a report that is not public; ``ReportParamsInvalid`` (422)."""
    report = REPORTS.get(name)
    if report is None or (public and not report.public):
        raise ReportNotFound(f"No report named {name!r}")
    return await report.fn(session, params)


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready rows: timestamps as ISO 8601, missing values as None, plain ints/floats."""
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[col]):
            out[col] = [t.isoformat() for t in out[col]]
    out = out.astype(object).where(out.notna(), None)
    return cast(list[dict[str, Any]], out.to_dict("records"))
