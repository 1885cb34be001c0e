"""The web console: the built single-page app (``web/`` → ``dist/``) served at ``/``.

Files under ``dist/`` are served as they are; any other GET that is not an API path
falls back to ``index.html`` so the app's own router handles it. Hashed assets
(``/assets/*``) are cached for a year; ``index.html`` is revalidated on every load so a
new release is picked up at once. Without a build, ``/`` says how to make one.

``GET /api/v1/public/console`` tells the app which sign-in methods this server offers and
which Solana RPC and token its wallet payments use;
``GET /api/v1/public/devices/{id}`` is a machine's public page (``tesai.console.public``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel
from starlette.routing import Match, Route
from starlette.types import Scope

from tesai import __version__
from tesai.console.public import router as public_devices_router
from tesai.errors import NotFound
from tesai.settings import Settings

DIST = Path(__file__).parent / "dist"
"""Where ``npm run build`` (``make web``) writes the console."""

API_PREFIXES = ("/api/", "/graphql", "/healthz", "/readyz", "/metrics")
"""Paths that never fall back to the app: an unknown API path stays a 404 problem."""

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>TES AI</title></head>
<body><main><h1>TES AI API is running</h1>
<p>The web console has not been built. Build it with <code>make web</code>
(needs Node.js 20+; or <code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>),
then reload. The API reference is at <a href="/api/docs">/api/docs</a>.</p></main></body></html>
"""


class ConsoleConfig(BaseModel):
    version: str
    oidc_providers: list[str]
    """Names for ``/api/v1/auth/oidc/{name}/login``."""
    public_url: str
    solana_rpc_url: str
    """Solana JSON-RPC endpoint the browser may call (a recent blockhash for wallet payments)."""
    usdc_mint: str
    usdc_decimals: int
    """Decimals of the payment token, for the wallet's checked transfer."""


def _is_api(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in {"/api", "/graphql"}


class ConsoleRoute(Route):
    """Catch-all GET route that steps aside for API paths and other methods, so those
    keep their 404/405 problem answers."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or _is_api(scope["path"])
        ):
            return Match.NONE, {}
        return super().matches(scope)


def console_file(dist: Path, path: str) -> Path | None:
    """The file under ``dist`` for a URL path, or None (also for paths escaping ``dist``)."""
    rel = path.lstrip("/")
    if not rel:
        return None
    candidate = (dist / rel).resolve()
    root = dist.resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def mount_console(app: FastAPI, settings: Settings, dist: Path = DIST) -> None:
    """Serve the console from ``dist`` at ``/``; add after every API route."""
    config = ConsoleConfig(
        version=__version__,
        oidc_providers=[p.name for p in settings.oidc_providers],
        public_url=settings.public_url,
        solana_rpc_url=settings.public_solana_rpc_url,
        usdc_mint=settings.usdc_mint,
        usdc_decimals=settings.usdc_decimals,
    )
    router = APIRouter(prefix="/api/v1/public", tags=["public"])

    @router.get("/console")
    async def console_config() -> ConsoleConfig:
        """What the web console needs to know about this server (sign-in methods, Solana RPC)."""
        return config

    app.include_router(router)
    app.include_router(public_devices_router)

    async def serve(request: Request) -> Response:
        path = request.url.path
        file = console_file(dist, path)
        if file is not None:
            cache = IMMUTABLE if path.startswith("/assets/") else REVALIDATE
            return FileResponse(file, headers={"Cache-Control": cache})
        if path.startswith("/assets/"):
            # A stale page asking for an asset of an older release: a real 404, not the app.
            raise NotFound("No such asset")
        index = dist / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT, status_code=200, headers={"Cache-Control": REVALIDATE})
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": REVALIDATE})

    app.router.routes.append(
        ConsoleRoute("/{path:path}", serve, methods=["GET", "HEAD"], include_in_schema=False)
    )
