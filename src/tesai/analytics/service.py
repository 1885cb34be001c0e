"""What the analytics endpoints, GraphQL and the CLI share: checked parameters in, a report
(as JSON rows or an exported file) out."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from tesai.analytics.export import Export, export
from tesai.analytics.reports import REPORTS, make_params, records, run_report
from tesai.analytics.schemas import ReportInfo, ReportOut


def list_reports(*, public: bool) -> list[ReportInfo]:
    return [
        ReportInfo(name=r.name, description=r.description, public=r.public)
        for r in REPORTS.values()
        if r.public or not public
    ]


async def report(
    session: AsyncSession,
    name: str,
    *,
    public: bool,
    fmt: str = "json",
    since: datetime | None = None,
    until: datetime | None = None,
    grain: str | None = None,
    gpu_model: str | None = None,
    region: str | None = None,
    limit: int | None = None,
) -> ReportOut | Export:
    """Run report ``name`` from the rollups. Raises ``ReportNotFound`` (404, also for a
    non-public report asked for publicly) and ``ReportParamsInvalid`` (422)."""
    params = make_params(
        since=since, until=until, grain=grain, gpu_model=gpu_model, region=region, limit=limit
    )
    df = await run_report(session, name, params, public=public)
    if fmt != "json":
        return export(df, fmt, name, params)
    return ReportOut(
        report=name,
        since=params.since,
        until=params.until,
        grain="day" if params.grain == "day" else "hour",
        columns=[str(c) for c in df.columns],
        rows=records(df),
    )
