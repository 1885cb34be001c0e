"""Errors that reach HTTP clients, and how they are rendered.

Every error leaves the API as RFC 9457 ``application/problem+json`` with a stable ``code``::

    AppError (500 internal)            base: message, status, code, extra fields
    ├── BadRequest (400 bad_request)
    │   └── InvalidInput (422 invalid_input)  request validation (FastAPI/pydantic)
    ├── Unauthorized (401 unauthorized)        missing or bad credentials
    │   └── TokenInvalid (401 token_invalid)   expired, wrong aud/typ/alg, revoked
    ├── Forbidden (403 forbidden)              authenticated but not allowed
    ├── NotFound (404 not_found)               also for objects of another tenant
    ├── Conflict (409 conflict)                state or idempotency clash
    ├── PayloadTooLarge (413 payload_too_large)
    ├── RateLimited (429 rate_limited)         carries Retry-After
    └── ServiceUnavailable (503 unavailable)
        └── Overloaded (503 overloaded)        carries Retry-After: busy, not broken

Load is never a 500: a request that finds the database pool exhausted (SQLAlchemy's pool
timeout) is answered ``Overloaded``, like any other bounded queue that is full.

Domain modules subclass these with their own ``code`` (e.g. ``join_token_used``).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"

log = structlog.get_logger(__name__)


class AppError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(
        self, message: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        self.message = message or HTTPStatus(self.status).phrase
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.message)

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        return problem(self.status, self.code, self.message, instance=instance, **self.extra)


class BadRequest(AppError):
    status = 400
    code = "bad_request"


class InvalidInput(BadRequest):
    status = 422
    code = "invalid_input"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"}, **extra)


class TokenInvalid(Unauthorized):
    code = "token_invalid"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"


class RateLimited(AppError):
    status = 429
    code = "rate_limited"

    def __init__(self, retry_after_s: float, message: str | None = None) -> None:
        seconds = max(1, int(retry_after_s + 0.999))
        super().__init__(
            message or f"Too many requests; retry in {seconds} s",
            headers={"Retry-After": str(seconds)},
            retry_after=seconds,
        )


class ServiceUnavailable(AppError):
    status = 503
    code = "unavailable"


class Overloaded(ServiceUnavailable):
    """A bounded resource (database pool, password hashing) is busy: retry shortly."""

    code = "overloaded"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 2) -> None:
        super().__init__(
            message or f"The service is busy; retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
            retry_after=retry_after_s,
        )


def problem(
    status: int, code: str, detail: str, *, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://tesai.dev/problems/{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return body


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=body["status"], media_type=PROBLEM_JSON, headers=headers)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
}


def _jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        out.append(
            {
                "loc": [str(p) for p in err.get("loc", ())],
                "msg": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
        )
    return out


def install_error_handlers(app: FastAPI) -> None:
    async def on_app_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AppError)
        return problem_response(exc.to_problem(request.url.path), exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = _jsonable_errors(exc.errors())
        first: dict[str, Any] = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"])
        detail = f"{where}: {first['msg']}" if where else str(first["msg"])
        return problem_response(
            problem(422, "invalid_input", detail, instance=request.url.path, errors=errors)
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        code = _STATUS_CODES.get(status, "error" if status < 500 else "internal")
        detail = str(exc.detail) if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        return problem_response(
            problem(status, code, detail, instance=request.url.path), dict(exc.headers or {})
        )

    async def on_pool_timeout(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database_pool_exhausted", path=request.url.path)
        error = Overloaded("The database is busy; retry shortly")
        return problem_response(error.to_problem(request.url.path), error.headers)

    async def on_unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path)
        return problem_response(
            problem(500, "internal", "Internal server error", instance=request.url.path)
        )

    app.add_exception_handler(AppError, on_app_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(PoolTimeout, on_pool_timeout)
    app.add_exception_handler(Exception, on_unhandled)
