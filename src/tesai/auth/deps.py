"""Who may call a route: ``CurrentUser`` and the role/scope aliases.

Usage in a router::

    @router.get("/clusters")
    async def list_clusters(user: CustomerUser, session: SessionDep) -> ...

    @router.post("/clusters", dependencies=[Depends(require_scope("clusters"))])

Credentials: ``Authorization: Bearer <access JWT>``, ``Authorization: Bearer tesai_…`` or
``X-API-Key: tesai_…``. No or bad credentials → 401; a missing role or scope → 403. The
``User`` is a detached snapshot (see ``tesai.auth.principal``). A user session holds every
scope; an API key only its own, and an admin route needs the ``admin`` scope on a key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from tesai.accounts.models import User
from tesai.auth.errors import MissingRole, MissingScope
from tesai.auth.principal import (
    API_KEY_PREFIX,
    Principal,
    authenticate_access_token,
    authenticate_api_key,
)
from tesai.errors import Unauthorized
from tesai.runtime import Runtime

# Declared for OpenAPI (so docs and clients know the schemes); parsing is ours.
_bearer = HTTPBearer(auto_error=False, description="Access JWT or an API key tesai_…")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key tesai_…")


def request_ip(request: Request) -> str | None:
    """The peer address: the connection's, or a trusted reverse proxy's ``X-Forwarded-For``
    (``Settings.forwarded_allow_ips``, applied by uvicorn)."""
    return request.client.host if request.client else None


async def current_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    """Authenticate the request; raises ``Unauthorized`` (401) without valid credentials."""
    runtime: Runtime = request.app.state.runtime
    if api_key:
        principal = await authenticate_api_key(runtime, api_key)
    elif bearer is not None and bearer.credentials:
        token = bearer.credentials
        if token.startswith(API_KEY_PREFIX):
            principal = await authenticate_api_key(runtime, token)
        else:
            principal = await authenticate_access_token(runtime, token)
    else:
        raise Unauthorized("Authentication required")
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def current_user(principal: CurrentPrincipal) -> User:
    return principal.user


def require_role(role: str) -> Callable[[Principal], Awaitable[User]]:
    """A dependency returning the user when they hold ``role``; else 403."""

    async def check(principal: CurrentPrincipal) -> User:
        if role not in principal.user.roles:
            raise MissingRole(f"This needs the {role} role", role=role)
        if role == "admin" and not principal.has_scope("admin"):
            raise MissingScope("This API key lacks the admin scope", scope="admin")
        return principal.user

    check.__name__ = f"require_{role}"
    return check


def require_scope(*scopes: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through user sessions and API keys holding every scope."""

    async def check(principal: CurrentPrincipal) -> Principal:
        for scope in scopes:
            if not principal.has_scope(scope):
                raise MissingScope(f"This API key lacks the {scope} scope", scope=scope)
        return principal

    check.__name__ = "require_scope_" + "_".join(scopes)
    return check


CurrentUser = Annotated[User, Depends(current_user)]
CustomerUser = Annotated[User, Depends(require_role("customer"))]
ProviderUser = Annotated[User, Depends(require_role("provider"))]
AdminUser = Annotated[User, Depends(require_role("admin"))]


# async: a plain def would cost every request a trip through the thread pool.
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def optional_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal | None:
    """The principal when credentials are given (401 if they are bad), else None."""
    if not api_key and (bearer is None or not bearer.credentials):
        return None
    return await current_principal(request, bearer, api_key)


OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]
