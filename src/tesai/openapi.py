"""The published OpenAPI document: FastAPI's, with the errors every operation can answer.

FastAPI declares only successes and a 422 whose body (``HTTPValidationError``) is not what
the API sends. Every error leaves as ``application/problem+json`` (``tesai.errors``), so
each operation gets, in that media type:

- ``default``: any other error (500 ``internal``, 503 ``unavailable``/``overloaded`` with
  ``Retry-After``);
- ``422`` (``ValidationProblem``, with the per-field ``errors``) wherever there is input,
  ``413`` wherever there is a body, ``401``/``403`` wherever credentials are declared,
  ``404`` wherever the path names an object, and ``429`` (``Retry-After``) wherever rate
  limits apply.

Responses a route declares itself keep their description; their body becomes a problem.
Generated clients (``web/src/api``) then type error bodies instead of guessing.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from fastapi import FastAPI

from tesai.errors import PROBLEM_JSON
from tesai.middleware import EXEMPT_PATHS

_PROBLEM_REF: Final = "#/components/schemas/Problem"
_VALIDATION_REF: Final = "#/components/schemas/ValidationProblem"
_UNUSED_AFTER: Final = ("HTTPValidationError", "ValidationError")

PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "title": "Problem",
    "description": "An error, as RFC 9457 problem details; ``code`` is stable.",
    "type": "object",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string", "description": "https://tesai.dev/problems/<code>"},
        "title": {"type": "string", "description": "The HTTP status phrase."},
        "status": {"type": "integer", "description": "The HTTP status."},
        "code": {"type": "string", "description": "Machine-readable error code."},
        "detail": {"type": "string", "description": "What went wrong, for people."},
        "instance": {"type": "string", "description": "The request path."},
        "retry_after": {
            "type": "integer",
            "description": "Seconds to wait before retrying (429 and 503; also Retry-After).",
        },
    },
    "additionalProperties": True,
}

VALIDATION_PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "title": "ValidationProblem",
    "description": "422 invalid_input: the request did not pass validation.",
    "allOf": [
        {"$ref": _PROBLEM_REF},
        {
            "type": "object",
            "properties": {
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["loc", "msg", "type"],
                        "properties": {
                            "loc": {"type": "array", "items": {"type": "string"}},
                            "msg": {"type": "string"},
                            "type": {"type": "string"},
                        },
                    },
                }
            },
        },
    ],
}

_RETRY_AFTER: Final = {
    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
}
_DESCRIPTIONS: Final = {
    "401": "Missing or invalid credentials.",
    "403": "Authenticated, but not allowed (missing role or scope).",
    "404": "No such object (or one of another account).",
    "413": "The request body is too large.",
    "422": "Invalid input.",
    "429": "Too many requests; retry after Retry-After seconds.",
    "default": "Any other error: 500 internal, 503 unavailable (with Retry-After).",
}
_METHODS: Final = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def _problem(description: str, ref: str = _PROBLEM_REF) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": {"$ref": ref}}}}


def _errors_of(path: str, operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The problem responses ``operation`` can give, by status."""
    out: dict[str, dict[str, Any]] = {}
    if operation.get("parameters") or operation.get("requestBody"):
        out["422"] = _problem(_DESCRIPTIONS["422"], _VALIDATION_REF)
    if operation.get("requestBody"):
        out["413"] = _problem(_DESCRIPTIONS["413"])
    if operation.get("security"):
        out["401"] = _problem(_DESCRIPTIONS["401"])
        out["403"] = _problem(_DESCRIPTIONS["403"])
    if "{" in path:
        out["404"] = _problem(_DESCRIPTIONS["404"])
    if path not in EXEMPT_PATHS:
        out["429"] = {**_problem(_DESCRIPTIONS["429"]), "headers": _RETRY_AFTER}
    out["default"] = _problem(_DESCRIPTIONS["default"])
    return out


def _status_order(item: tuple[str, Any]) -> tuple[int, str]:
    status = item[0]
    return (int(status), "") if status.isdigit() else (1000, status)


def with_error_responses(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` with problem+json error responses on every operation."""
    doc = copy.deepcopy(document)
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status, response in _errors_of(path, operation).items():
                declared = responses.get(status)
                if declared is None or status == "422":
                    responses[status] = response
                else:
                    declared["content"] = response["content"]
            for status, declared in responses.items():
                if status.isdigit() and int(status) >= 400 and "content" not in declared:
                    declared["content"] = _problem("")["content"]
            operation["responses"] = dict(sorted(responses.items(), key=_status_order))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas["ValidationProblem"] = VALIDATION_PROBLEM_SCHEMA
    for name in _UNUSED_AFTER:
        schemas.pop(name, None)
    return doc


def install_openapi(app: FastAPI) -> None:
    """Serve ``with_error_responses`` of FastAPI's document (built once, on first use)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_error_responses(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
