"""Read models of the analytics domain: ``analytics { reports report(...) }``.

The same reports as ``/api/v1/internal/analytics`` and ``/api/v1/public/analytics``: public
reports for anyone, the others for admins only (403 ``missing_role`` otherwise).
"""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from tesai.analytics import service
from tesai.analytics.reports import REPORTS
from tesai.analytics.schemas import ReportOut
from tesai.errors import AppError
from tesai.graphql.context import GraphQLContext


@strawberry.type
class AnalyticsReportInfo:
    name: str
    description: str
    public: bool


@strawberry.type
class AnalyticsReport:
    """A report: column names, then one JSON object per row (money in micro-USDC)."""

    name: str
    since: datetime
    until: datetime
    grain: str
    columns: list[str]
    rows: list[JSON]


async def resolve_reports(info: strawberry.Info[GraphQLContext, None]) -> list[AnalyticsReportInfo]:
    admin = await _is_admin(info.context)
    return [
        AnalyticsReportInfo(name=r.name, description=r.description, public=r.public)
        for r in service.list_reports(public=not admin)
    ]


async def resolve_report(
    info: strawberry.Info[GraphQLContext, None],
    name: str,
    since: datetime | None = None,
    until: datetime | None = None,
    grain: str | None = None,
    model: str | None = None,
    region: str | None = None,
    limit: int | None = None,
) -> AnalyticsReport:
    ctx = info.context
    known = REPORTS.get(name)
    if known is not None and not known.public:
        await ctx.require_role("admin")
    async with ctx.db() as session:
        out = await service.report(
            session, name, public=known is None or known.public, since=since, until=until,
            grain=grain, gpu_model=model, region=region, limit=limit,
        )  # fmt: skip
    assert isinstance(out, ReportOut)
    return AnalyticsReport(
        name=out.report,
        since=out.since,
        until=out.until,
        grain=out.grain,
        columns=out.columns,
        rows=[JSON(r) for r in out.rows],
    )


@strawberry.type
class AnalyticsQuery:
    reports: list[AnalyticsReportInfo] = strawberry.field(
        resolver=resolve_reports, description="Reports this caller may read."
    )
    report: AnalyticsReport = strawberry.field(
        resolver=resolve_report,
        description="One report over a window (default: the last 7 days).",
    )


async def _is_admin(ctx: GraphQLContext) -> bool:
    if ctx.principal is None:
        return False
    try:
        await ctx.require_role("admin")
    except AppError:
        return False
    return True


def resolve_analytics() -> AnalyticsQuery:
    return AnalyticsQuery()


@strawberry.type
class Query:
    analytics: AnalyticsQuery = strawberry.field(
        resolver=resolve_analytics,
        description="Market and fleet reports from the analytics rollups.",
    )
