"""The map of the API: every router, grouped by audience.

- ``/api/v1/public``   no authentication: health, pool statistics, prices
- ``/api/v1/auth``     sign-in flows (password, wallet, OIDC), token refresh
- ``/api/v1/customer`` customers (user JWT or API key)
- ``/api/v1/provider`` providers (user JWT or API key)
- ``/api/v1/agent``    agents (device credentials only)
- ``/api/v1/notifications`` any signed-in user (customer or provider): their notifications
- ``/api/v1/internal`` admins: cluster management, analytics, monitoring
- ``/graphql``         read models
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from tesai.accounts.router import router as accounts_router
from tesai.analytics.router import router as analytics_router
from tesai.audit.router import router as audit_router
from tesai.auth.router import router as auth_router
from tesai.billing.router import router as billing_router
from tesai.billing.spend_cap_router import router as spend_cap_router
from tesai.clusters.proxy_router import router as ray_proxy_router
from tesai.clusters.router import router as clusters_router
from tesai.devices.router import router as devices_router
from tesai.graphql import mount_graphql
from tesai.health.router import router as health_router
from tesai.notifications.router import router as notifications_router
from tesai.ops.router import router as ops_router
from tesai.payments.router import router as payments_router


def mount_routes(app: FastAPI) -> None:
    app.include_router(health_router)
    v1 = APIRouter(prefix="/api/v1")
    v1.include_router(auth_router)
    v1.include_router(accounts_router)
    v1.include_router(audit_router)
    v1.include_router(analytics_router)
    v1.include_router(devices_router)
    v1.include_router(clusters_router)
    v1.include_router(ray_proxy_router)
    v1.include_router(billing_router)
    v1.include_router(spend_cap_router)
    v1.include_router(payments_router)
    v1.include_router(notifications_router)
    v1.include_router(ops_router)
    app.include_router(v1)
    mount_graphql(app)
