"""What every resolver can reach: the request, its unit of work and the caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.fastapi import BaseContext

from tesai.accounts.models import User
from tesai.auth.deps import OptionalPrincipal, require_role
from tesai.auth.principal import Principal
from tesai.db import SessionDep
from tesai.errors import Unauthorized
from tesai.runtime import Runtime


class GraphQLContext(BaseContext):
    """Per request. ``principal`` is None for anonymous callers (public fields only)."""

    def __init__(self, runtime: Runtime, session: AsyncSession, principal: Principal | None):
        super().__init__()
        self.runtime = runtime
        self.principal = principal
        self._session = session
        self._turn = asyncio.Lock()

    @asynccontextmanager
    async def db(self) -> AsyncIterator[AsyncSession]:
        """The request's unit of work, to one resolver at a time.

        graphql-core resolves the fields of a selection concurrently (``{ offers pool }``
        awaits both resolvers together), and a SQLAlchemy session must never be used by two
        tasks at once (it failed every such query). Taking turns on the one session keeps a
        request to one pooled connection however many fields (or aliases) it asks for.
        """
        async with self._turn:
            yield self._session

    def require_principal(self) -> Principal:
        """The caller; raises ``Unauthorized`` for anonymous callers."""
        if self.principal is None:
            raise Unauthorized("Authentication required")
        return self.principal

    def require_user(self) -> User:
        """The signed-in user; raises ``Unauthorized`` for anonymous callers."""
        return self.require_principal().user

    async def require_role(self, role: str) -> User:
        """The user when they hold ``role`` — the very check REST routes use (403
        ``missing_role``; an API key needs the ``admin`` scope for admin fields)."""
        return await require_role(role)(self.require_principal())


async def get_context(
    request: Request, session: SessionDep, principal: OptionalPrincipal
) -> GraphQLContext:
    """Authenticate exactly as REST does when credentials are sent (bad ones → 401
    problem+json); without credentials the caller is anonymous."""
    return GraphQLContext(request.app.state.runtime, session, principal)
