"""GraphQL errors that say what REST would: ``extensions.code`` is the problem ``code``.

Applied to every result the HTTP view sends (``schema._Router.process_result``), which
also sees parse errors that schema extensions do not.

``AppError`` raised in a resolver keeps its message and gains ``code`` and ``status``;
query errors (syntax, unknown field, depth/token/alias limits) get ``code:
invalid_query``; anything else is logged and masked as ``internal`` so no detail leaks.
"""

from __future__ import annotations

import structlog
from strawberry.types import ExecutionResult

from graphql import GraphQLError
from tesai.errors import AppError

log = structlog.get_logger(__name__)


def classify(error: GraphQLError) -> GraphQLError:
    """The error as the client should see it."""
    original = error.original_error
    if isinstance(original, AppError):
        extensions = {"code": original.code, "status": original.status, **original.extra}
        message = original.message
    elif original is None or isinstance(original, GraphQLError):
        extensions = {"code": "invalid_query"}
        message = error.message
    else:
        log.error(
            "graphql_unhandled_error",
            path=error.path,
            exc_info=(type(original), original, original.__traceback__),
        )
        extensions = {"code": "internal"}
        message = "Internal server error"
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={**(error.extensions or {}), **extensions},
    )


def classify_result(result: ExecutionResult) -> ExecutionResult:
    """``result`` with every error rewritten through ``classify``."""
    if result.errors:
        result.errors = [classify(e) for e in result.errors]
    return result
