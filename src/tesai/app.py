"""The FastAPI application: middleware, error handlers, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tesai import __version__
from tesai.api import mount_routes
from tesai.errors import install_error_handlers
from tesai.runtime import Runtime, open_runtime
from tesai.settings import Settings, get_settings


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the API. ``runtime`` may be given by tests or `tesai up`; else it is opened
    in the lifespan from ``settings`` and closed on shutdown."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        rt = runtime or await open_runtime(settings)
        app.state.runtime = rt
        try:
            yield
        finally:
            if owned:
                await rt.close()

    app = FastAPI(
        title="TES AI",
        version=__version__,
        summary="Rent secured Ray clusters from a pool of providers' GPUs.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    mount_routes(app)
    return app
