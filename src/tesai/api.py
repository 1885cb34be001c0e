"""The map of the API: every router, grouped by audience.

- ``/api/v1/public``   no authentication: health, pool statistics, prices
- ``/api/v1/auth``     sign-in flows (password, wallet, OIDC), token refresh
- ``/api/v1/customer`` customers (user JWT or API key)
- ``/api/v1/provider`` providers (user JWT or API key)
- ``/api/v1/agent``    agents (device credentials only)
- ``/api/v1/internal`` admins: cluster management, analytics, monitoring
- ``/graphql``         read models
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from tesai.health.router import router as health_router


def mount_routes(app: FastAPI) -> None:
    app.include_router(health_router)
    v1 = APIRouter(prefix="/api/v1")
    app.include_router(v1)
