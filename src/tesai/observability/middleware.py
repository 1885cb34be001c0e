"""The outermost HTTP middleware: request id, access log line, request metrics.

Pure ASGI (no ``BaseHTTPMiddleware``): it wraps ``send`` once and does its bookkeeping when
the request ends, which keeps the cost per request to a few microseconds.
"""

from __future__ import annotations

import os
import re
import time

import structlog
from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tesai.observability.logging import access_log
from tesai.observability.metrics import HTTP_DURATION, HTTP_IN_FLIGHT

REQUEST_ID_HEADER = b"x-request-id"
# A client-supplied id is echoed only when it is short and plain, so it cannot forge log
# fields or smuggle header content.
_VALID_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            return value.decode("ascii") if _VALID_ID.fullmatch(value) else None
    return None


def route_template(scope: Scope) -> str:
    """The path template of the route that answered (bounded label values)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


class RequestContextMiddleware:
    """Gives every request an id (the client's ``X-Request-ID`` or a new one), echoes it,
    binds it to structlog's context for every line logged while the request runs, and
    records the access log line and the latency histogram when the request ends."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        # Histogram children by label values: labels() takes a lock and builds a key on
        # every call; the set of keys is bounded (routes × methods × status classes).
        self._histograms: dict[tuple[str, str, int], Histogram] = {}

    def _histogram(self, route: str, method: str, status: int) -> Histogram:
        key = (route, method, status // 100)
        child = self._histograms.get(key)
        if child is None:
            child = HTTP_DURATION.labels(route, method, f"{status // 100}xx")
            self._histograms[key] = child
        return child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or os.urandom(16).hex()
        id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            HTTP_IN_FLIGHT.dec()
            elapsed = time.perf_counter() - start
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self._histogram(route_template(scope), method, status).observe(elapsed)
            if self.access_log:
                client = scope.get("client")
                access_log(
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                    client=client[0] if client else None,
                )
            structlog.contextvars.reset_contextvars(**tokens)
