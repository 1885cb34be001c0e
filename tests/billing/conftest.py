"""Fixtures for money tests: plain users made through the accounts service."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable

import pytest

from tesai.accounts import service as accounts
from tesai.runtime import Runtime

NewUser = Callable[..., Awaitable[uuid.UUID]]


@pytest.fixture
def new_user(runtime: Runtime) -> NewUser:
    """``await new_user(roles=("customer",))`` → the id of a committed user."""

    async def make(roles: tuple[str, ...] = ("customer",)) -> uuid.UUID:
        async with runtime.sessionmaker() as session, session.begin():
            user = await accounts.create_user(
                session, email=f"m-{secrets.token_hex(5)}@example.com", roles=roles
            )
            return user.id

    return make
