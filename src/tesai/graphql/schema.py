"""The schema: every domain's ``Query`` merged, with limits, mounted at ``/graphql``."""

from __future__ import annotations

from functools import partial
from typing import Any

import strawberry
from cross_web import HTTPException  # strawberry's own HTTP error type (its dependency)
from fastapi import FastAPI, Request
from fastapi.responses import Response
from strawberry.extensions import (
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
)
from strawberry.fastapi import GraphQLRouter
from strawberry.http import GraphQLHTTPResponse
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.unset import UNSET

from graphql import GraphQLError
from tesai.errors import problem, problem_response
from tesai.graphql import accounts, analytics, offers, pool
from tesai.graphql.context import get_context
from tesai.graphql.errors import classify_result
from tesai.graphql.scalars import SCALARS

DOMAIN_QUERIES: tuple[type, ...] = (accounts.Query, analytics.Query, offers.Query, pool.Query)
"""One ``Query`` per domain module; add yours here."""

MAX_DEPTH = 8
"""Deepest selection nesting accepted (introspection fields are not counted)."""
MAX_TOKENS = 2_000
"""Largest document accepted, in lexer tokens; bounds parse and validation cost."""
MAX_ALIASES = 20
"""Most aliases in one document; stops one query from asking for a field 1,000 times."""

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # classify() logs the unexpected ones; client mistakes are not server errors.
        return None


def build_schema() -> strawberry.Schema:
    query = merge_types("Query", DOMAIN_QUERIES)
    # Factories, not instances: strawberry gives each request its own extension objects
    # (the parse cache itself is shared, keyed by its size).
    return Schema(
        query=query,
        config=StrawberryConfig(scalar_map=SCALARS),
        extensions=[
            partial(QueryDepthLimiter, max_depth=MAX_DEPTH),
            partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
            partial(MaxAliasesLimiter, max_alias_count=MAX_ALIASES),
            partial(ParserCache, maxsize=256),
        ],
    )


class _Router(GraphQLRouter[Any, None]):
    """Answers malformed HTTP requests (no query, bad JSON) with problem+json."""

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        try:
            return await super().run(request, context=context, root_value=root_value)
        except HTTPException as exc:
            if not isinstance(request, Request):
                raise
            code = _HTTP_CODES.get(exc.status_code, "bad_request")
            response: Response = problem_response(
                problem(exc.status_code, code, exc.reason, instance=request.url.path)
            )
            return response

    async def process_result(self, request: Any, result: ExecutionResult) -> GraphQLHTTPResponse:
        return await super().process_result(request, classify_result(result))


def mount_graphql(app: FastAPI) -> None:
    """Serve the schema at ``/graphql``; outside production a browser also gets GraphiQL."""
    settings = getattr(app.state, "settings", None)
    ide = settings is None or settings.environment != "production"
    router = _Router(
        build_schema(),
        context_getter=get_context,
        graphql_ide="graphiql" if ide else None,
        subscription_protocols=(),
        include_in_schema=False,
    )
    app.include_router(router, prefix="/graphql")
