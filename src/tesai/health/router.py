"""Liveness and readiness probes, and the Prometheus scrape endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from tesai.errors import problem, problem_response
from tesai.observability.metrics import render

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 3.0
"""A dependency that does not answer within this long counts as unreachable."""


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


async def _check(probe: Callable[[], Awaitable[Any]]) -> str:
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT_S)
    except TimeoutError:
        return "error: timeout"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


@router.get(
    "/readyz",
    responses={503: {"description": "a dependency is unreachable (problem+json with checks)"}},
)
async def readyz(request: Request) -> JSONResponse:
    """The database, cache and broker (when configured) are reachable."""
    rt = request.app.state.runtime

    async def database() -> None:
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    probes: dict[str, Callable[[], Awaitable[Any]]] = {"database": database, "cache": rt.cache.ping}
    ping = getattr(rt.tasks, "ping", None)
    if ping is not None:
        probes["broker"] = ping
    results = await asyncio.gather(*(_check(p) for p in probes.values()))
    checks = dict(zip(probes, results, strict=True))
    failed = sorted(name for name, result in checks.items() if result != "ok")
    if failed:
        return problem_response(
            problem(503, "unavailable", "Not ready: " + ", ".join(failed), checks=checks)
        )
    return JSONResponse({"status": "ok", "checks": checks})


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus exposition of this process (or of all, in multiprocess mode)."""
    body, content_type = render()
    return Response(body, media_type=content_type)
