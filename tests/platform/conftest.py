"""Fixtures for the platform tests: apps built from adjusted settings, with test routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI, Request

from tesai.app import create_app
from tesai.runtime import Runtime
from tesai.settings import Settings

log = structlog.get_logger("tests.platform")

MakeClient = Callable[..., Awaitable[httpx.AsyncClient]]


def add_test_routes(app: FastAPI) -> None:
    """Routes that exist only in these tests: a body echo and a templated path."""

    async def echo_raw(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    async def echo_json(payload: dict[str, Any]) -> dict[str, int]:
        return {"keys": len(payload)}

    async def item(item_id: int) -> dict[str, int]:
        log.info("item_read", item_id=item_id)
        return {"id": item_id}

    app.add_api_route("/api/v1/test-echo/raw", echo_raw, methods=["POST"])
    app.add_api_route("/api/v1/test-echo/json", echo_json, methods=["POST"])
    app.add_api_route("/api/v1/test-items/{item_id}", item, methods=["GET"])


@pytest.fixture
async def make_client(settings: Settings, runtime: Runtime) -> AsyncIterator[MakeClient]:
    """``await make_client(setup=None, **settings_overrides)``: a client of a fresh app on the
    test runtime; ``setup(app)`` may add routes."""
    async with AsyncExitStack() as stack:

        async def make(
            setup: Callable[[FastAPI], None] | None = None, **overrides: Any
        ) -> httpx.AsyncClient:
            app = create_app(settings.model_copy(update=overrides), runtime=runtime)
            add_test_routes(app)
            if setup is not None:
                setup(app)
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )

        yield make
