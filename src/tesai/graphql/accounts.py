"""Read models of the accounts domain: ``me``."""

from __future__ import annotations

from datetime import datetime

import strawberry

from tesai.accounts.models import User
from tesai.graphql.context import GraphQLContext


@strawberry.type(name="User")
class UserType:
    """A user as they see themselves."""

    id: strawberry.ID
    email: str | None
    display_name: str
    roles: list[str]
    created_at: datetime | None


def user_type(user: User) -> UserType:
    return UserType(
        id=strawberry.ID(str(user.id)),
        email=user.email,
        display_name=user.display_name,
        roles=user.roles,
        created_at=user.created_at,
    )


def resolve_me(info: strawberry.Info[GraphQLContext, None]) -> UserType:
    return user_type(info.context.require_user())


@strawberry.type
class Query:
    me: UserType = strawberry.field(
        resolver=resolve_me, description="The signed-in user (needs credentials)."
    )
