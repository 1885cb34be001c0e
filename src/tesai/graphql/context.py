"""What every resolver can reach: the request, its unit of work and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.fastapi import BaseContext

from tesai.accounts.models import User
from tesai.auth.deps import current_principal
from tesai.auth.errors import MissingRole, MissingScope
from tesai.auth.principal import Principal
from tesai.db import SessionDep
from tesai.errors import Unauthorized
from tesai.runtime import Runtime

_bearer = HTTPBearer(auto_error=False)
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


class GraphQLContext(BaseContext):
    """Per request. ``principal`` is None for anonymous callers (public fields only)."""

    def __init__(self, runtime: Runtime, session: AsyncSession, principal: Principal | None):
        super().__init__()
        self.runtime = runtime
        self.session = session
        self.principal = principal

    def require_user(self) -> User:
        """The signed-in user; raises ``Unauthorized`` for anonymous callers."""
        if self.principal is None:
            raise Unauthorized("Authentication required")
        return self.principal.user

    def require_role(self, role: str) -> User:
        """The user when they hold ``role`` (and an API key its scope, for admin), like REST."""
        user = self.require_user()
        if role not in user.roles:
            raise MissingRole(f"This needs the {role} role", role=role)
        assert self.principal is not None
        if role == "admin" and not self.principal.has_scope("admin"):
            raise MissingScope("This API key lacks the admin scope", scope="admin")
        return user


async def get_context(
    request: Request,
    session: SessionDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> GraphQLContext:
    """Authenticate exactly as REST does when credentials are sent (bad ones → 401
    problem+json); without credentials the caller is anonymous."""
    principal = None
    if api_key or (bearer is not None and bearer.credentials):
        principal = await current_principal(request, bearer, api_key)
    return GraphQLContext(request.app.state.runtime, session, principal)
