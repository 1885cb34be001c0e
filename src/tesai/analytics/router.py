"""Analytics endpoints: every report for admins, platform-wide aggregates for everyone.

``GET /api/v1/internal/analytics/{name}`` (admin) and ``GET /api/v1/public/analytics/{name}``
(public reports only) take ``since``, ``until``, ``grain``, ``model``, ``region``, ``limit``
and ``format`` (``json``, ``csv`` or ``parquet``; files come as attachments).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from tesai.analytics import service
from tesai.analytics.export import Export
from tesai.analytics.schemas import Format, Grain, ReportInfo, ReportOut
from tesai.auth.deps import AdminUser, require_role
from tesai.db import SessionDep

admin_router = APIRouter(prefix="/internal/analytics", tags=["internal: analytics"])
public_router = APIRouter(prefix="/public/analytics", tags=["public"])

NamePath = Annotated[str, Path(max_length=64, pattern=r"^[a-z_]+$")]
ModelQuery = Annotated[str | None, Query(alias="model", min_length=1, max_length=128)]
RegionQuery = Annotated[str | None, Query(min_length=1, max_length=64)]
LimitQuery = Annotated[int | None, Query(ge=1, le=10_000)]
FormatQuery = Annotated[Format, Query(alias="format")]


def _respond(result: ReportOut | Export) -> ReportOut | Response:
    if isinstance(result, Export):
        return Response(
            result.body,
            media_type=result.media_type,
            headers={"Content-Disposition": f'attachment; filename="{result.filename}"'},
        )
    return result


@admin_router.get("")
async def list_admin_reports(admin: AdminUser) -> list[ReportInfo]:
    """Every report."""
    return service.list_reports(public=False)


def _report_endpoint(*, public: bool) -> Callable[..., Awaitable[ReportOut | Response]]:
    """``GET …/{name}``: the same parameters and answer for admins and for everyone; a
    public caller reaches public reports only."""

    async def report(
        name: NamePath,
        session: SessionDep,
        since: datetime | None = None,
        until: datetime | None = None,
        grain: Grain | None = None,
        gpu_model: ModelQuery = None,
        region: RegionQuery = None,
        limit: LimitQuery = None,
        fmt: FormatQuery = "json",
    ) -> ReportOut | Response:
        result = await service.report(
            session, name, public=public, fmt=fmt, since=since, until=until, grain=grain,
            gpu_model=gpu_model, region=region, limit=limit,
        )  # fmt: skip
        return _respond(result)

    return report


admin_router.get(
    "/{name}",
    response_model=ReportOut,
    dependencies=[Depends(require_role("admin"))],
    description="A report from the hourly/daily rollups (JSON, or CSV/Parquet with ``format``).",
    name="admin_report",
)(_report_endpoint(public=False))


@public_router.get("")
async def list_public_reports() -> list[ReportInfo]:
    """Reports anyone may read: platform-wide aggregates, no per-user data."""
    return service.list_reports(public=True)


public_router.get(
    "/{name}",
    response_model=ReportOut,
    description="A public report (supply and demand, utilisation, price index, cluster outcomes).",
    name="public_report",
)(_report_endpoint(public=True))


router = APIRouter()
"""Every analytics endpoint, mounted under ``/api/v1`` by ``tesai.api``."""
router.include_router(admin_router)
router.include_router(public_router)
