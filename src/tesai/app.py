"""The FastAPI application: middleware, error handlers, lifespan.

Middleware, outermost first (all pure ASGI; see ``tesai.middleware``): request context
(request id, access log, metrics) → security headers → CORS (only with an allowlist) →
rate limits (when enabled) → body size limit → input limits (NUL, JSON depth) → routes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from tesai import __version__
from tesai.api import mount_routes
from tesai.console import mount_console
from tesai.errors import install_error_handlers
from tesai.middleware import (
    BodySizeLimitMiddleware,
    DashboardOriginMiddleware,
    InputLimitsMiddleware,
    RateLimitMiddleware,
    SecurityHeadersMiddleware,
)
from tesai.observability.business import with_business_metrics
from tesai.observability.logging import configure_logging
from tesai.observability.metrics import multiprocess_dir, update_pool_gauges
from tesai.observability.middleware import RequestContextMiddleware
from tesai.openapi import install_openapi
from tesai.protocol.v1 import AGENT_API_PREFIX
from tesai.runtime import Runtime, open_runtime
from tesai.settings import Settings, get_settings


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the API. ``runtime`` may be given by tests or `tesai up`; else it is opened
    in the lifespan from ``settings`` and closed on shutdown."""
    settings = settings or get_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        rt = runtime or await open_runtime(settings)
        app.state.runtime = rt
        # With several server processes a scrape reaches one of them; each keeps its own
        # pool gauges fresh in the shared multiprocess directory instead.
        refresher = asyncio.create_task(_refresh_pool_gauges()) if multiprocess_dir() else None
        try:
            yield
        finally:
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            if owned:
                await rt.close()

    app = FastAPI(
        title="TES AI",
        version=__version__,
        summary="Rent secured Ray clusters from a pool of providers' GPUs.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=with_business_metrics(lifespan),
    )
    app.state.settings = settings
    install_error_handlers(app)
    mount_routes(app)
    install_openapi(app)
    mount_console(app, settings)  # last: its catch-all serves the web console
    install_middleware(app, settings)
    return app


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Add the HTTP middleware stack; the last added runs first."""
    app.add_middleware(InputLimitsMiddleware, nul_allowed=(AGENT_API_PREFIX,))
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        upload_max_bytes=settings.ray_upload_max_bytes,
    )
    if settings.rate_limit_enabled:
        app.add_middleware(RateLimitMiddleware, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(DashboardOriginMiddleware, settings=settings)
    app.add_middleware(SecurityHeadersMiddleware, settings=settings)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)


async def _refresh_pool_gauges(every_s: float = 2.0) -> None:
    while True:
        update_pool_gauges()
        await asyncio.sleep(every_s)
