"""Network protection middleware: rate limits, request body limit, input limits, security
headers.

All pure ASGI (no ``BaseHTTPMiddleware``): these run on every request and the API has a
throughput budget. Order in ``create_app`` (outermost first): request context (id, log,
metrics) → security headers → CORS → rate limits → body limit → input limits → routes; so a
429, 413 or 422 is still logged, counted, carries the request id and the CORS headers a
browser needs to read it.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tesai.errors import InvalidInput, NotFound, PayloadTooLarge, RateLimited, problem_response
from tesai.kit.cache import Bucket
from tesai.protocol.freeform import (
    MAX_BODY_DEPTH,
    NUL_MESSAGE,
    raw_json_problem,
    urlencoded_problem,
)
from tesai.settings import Settings

log = structlog.get_logger(__name__)

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapes are never rate limited: an orchestrator must always reach them."""

_PRINCIPAL_HEADERS = (b"authorization", b"x-api-key")


class RateLimitMiddleware:
    """Token buckets per client IP and per principal, both checked in one cache round trip
    (``runtime.cache.take_tokens``: a token from each, or from neither when one is empty).

    The principal key is a SHA-256 of the ``Authorization`` or ``X-API-Key`` header value,
    taken without validating it: validation is the auth dependency's job, and hashing keeps
    this check cheap. An unauthenticated request only spends its IP's tokens. Behind a
    reverse proxy, ``Settings.forwarded_allow_ips`` names it so that the client IP is the real
    one. When the cache is unreachable requests pass (fail open) and a warning is logged;
    ``/readyz`` reports the cache as down.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.ip_rate = settings.rate_limit_per_ip
        self.ip_burst = settings.rate_limit_per_ip_burst
        self.principal_rate = settings.rate_limit_per_principal
        self.principal_burst = settings.rate_limit_per_principal_burst

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        cache = scope["app"].state.runtime.cache
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        credential: bytes | None = None
        for name, value in scope["headers"]:
            if name in _PRINCIPAL_HEADERS:
                credential = value
                break
        buckets = [Bucket(f"rl:ip:{ip}", self.ip_rate, self.ip_burst)]
        if credential is not None:
            principal = hashlib.sha256(credential).hexdigest()[:32]
            buckets.append(Bucket(f"rl:p:{principal}", self.principal_rate, self.principal_burst))
        try:
            result = await cache.take_tokens(buckets)
        except Exception as exc:
            log.warning("rate_limit_unavailable", error=type(exc).__name__)
            await self.app(scope, receive, send)
            return
        if not result.allowed:
            error = RateLimited(result.retry_after_s)
            response = problem_response(error.to_problem(scope["path"]), error.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body without Content-Length grows past the limit.

    An ``HTTPException`` so FastAPI re-raises it from body parsing (other exceptions there
    become a 400) and the error handlers render it as problem+json 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body is larger than {limit} bytes")


RAY_PROXY_PATH = re.compile(r"^/api/v1/clusters/[0-9a-fA-F-]{36}/ray(/|$)")
"""The Ray proxy (``tesai.clusters.proxy_router``)."""
RAY_PACKAGE_UPLOAD = re.compile(r"^/api/v1/clusters/[0-9a-fA-F-]{36}/ray/api/packages/")
"""Where Ray's tooling uploads ``--working-dir`` and ``py_modules`` packages (``PUT``)."""


class BodySizeLimitMiddleware:
    """Rejects request bodies over the limit with 413 problem+json: ``max_bytes``, or
    ``upload_max_bytes`` for a package upload through the Ray proxy (which streams it to the
    head, never holding it whole).

    A declared Content-Length over the limit is refused before the app runs. A body without
    one (chunked) is counted as it is read and refused once it passes the limit.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, upload_max_bytes: int | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes

    def _limit(self, scope: Scope) -> int:
        if (
            self.upload_max_bytes is not None
            and scope["method"] == "PUT"
            and RAY_PACKAGE_UPLOAD.match(scope["path"])
        ):
            return self.upload_max_bytes
        return self.max_bytes

    async def _reject(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        error = PayloadTooLarge(f"Request body is larger than {limit} bytes")
        await problem_response(error.to_problem(scope["path"]))(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        for name, value in scope["headers"]:
            if name == b"content-length":
                # The HTTP server enforces the declared length, so nothing more to count.
                if not value.isdigit() or int(value) > limit:
                    await self._reject(scope, receive, send, limit)
                else:
                    await self.app(scope, receive, send)
                return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._reject(scope, receive, send, limit)


_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _body_kind(scope: Scope) -> str | None:
    """``json`` or ``form`` for the bodies our handlers parse; None for others (uploads,
    octet streams), which are passed through unread. FastAPI parses a body without a
    Content-Type as JSON, so that counts as JSON."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            if media == b"application/json" or media.endswith(b"+json"):
                return "json"
            if media == b"application/x-www-form-urlencoded":
                return "form"
            return None
    return "json"


class InputLimitsMiddleware:
    """Refuses with 422 problem+json, before any parser or handler runs, input that nothing
    behind it could parse or store safely:

    - a NUL character in the path, the query string (``%00``) or a JSON or form body
      (``\\u0000``, ``%00``): PostgreSQL cannot store NUL in ``text`` or ``jsonb``, and the
      failure came back as a 500 from wherever the value was first written;
    - a JSON body nested deeper than ``max_depth``: the JSON parsers (FastAPI's, strawberry's)
      recurse once per level and raised ``RecursionError`` (a 500) near 1,000 levels.

    One rule for every route, so a new field or query parameter cannot forget it. A JSON or
    form body is read in full first (the body limit outside bounds it) and handed on
    unchanged; other bodies stream through unread. Free-form fields also carry their own,
    tighter limits (``tesai.protocol.freeform.BoundedJson``).

    Bodies under ``nul_allowed`` (the agent API) may hold NUL: hardware probes and Ray
    output carry it, a refused heartbeat would take a device offline, and the devices
    domain removes it before storing (``devices.agents.without_nul``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_depth: int = MAX_BODY_DEPTH,
        nul_allowed: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_depth = max_depth
        self.nul_allowed = nul_allowed

    async def _reject(self, scope: Scope, receive: Receive, send: Send, problem: str) -> None:
        error = InvalidInput(problem)
        await problem_response(error.to_problem(scope["path"]))(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"]:
            await self._reject(scope, receive, send, f"path: {NUL_MESSAGE}")
            return
        problem = urlencoded_problem(scope["query_string"])
        if problem is not None:
            await self._reject(scope, receive, send, f"query: {problem}")
            return
        # The Ray proxy parses no body: it streams each to the head unread (a package
        # upload is a zip, full of NUL bytes, and may be far larger than a JSON body).
        bodyless = scope["method"] in _BODYLESS_METHODS or RAY_PROXY_PATH.match(scope["path"])
        kind = None if bodyless else _body_kind(scope)
        if kind is None:
            await self.app(scope, receive, send)
            return

        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if kind == "json":
            allow_nul = bool(self.nul_allowed) and scope["path"].startswith(self.nul_allowed)
            problem = raw_json_problem(body, max_depth=self.max_depth, allow_nul=allow_nul)
        else:
            problem = urlencoded_problem(body)
        if problem is not None:
            await self._reject(scope, receive, send, f"body: {problem}")
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


DEFAULT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
"""For the single-page console served from the same origin as the API it calls."""


def console_csp(settings: Settings) -> str:
    """DEFAULT_CSP, letting the console also reach the public Solana RPC (wallet payments)."""
    rpc = urlsplit(settings.public_solana_rpc_url)
    if rpc.scheme not in ("http", "https") or not rpc.netloc:
        return DEFAULT_CSP
    origin = f"{rpc.scheme}://{rpc.netloc.rpartition('@')[2]}"  # never a credential
    return DEFAULT_CSP.replace("connect-src 'self'", f"connect-src 'self' {origin}")


DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net "
    "https://unpkg.com; style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net "
    "https://unpkg.com; img-src 'self' data: https://fastapi.tiangolo.com; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
"""Swagger UI and GraphiQL load their scripts from a CDN and use inline scripts."""

DOCS_PREFIXES = ("/api/docs", "/graphql")


def security_headers(settings: Settings, csp: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"strict-origin-when-cross-origin"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"content-security-policy", csp.encode()),
    ]
    if settings.public_url.startswith("https://"):
        headers.append((b"strict-transport-security", b"max-age=63072000; includeSubDomains"))
    return headers


class SecurityHeadersMiddleware:
    """Adds the security headers to every response (a relaxed CSP on the API docs pages)."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.headers = security_headers(
            settings, settings.content_security_policy or console_csp(settings)
        )
        self.docs_headers = security_headers(settings, DOCS_CSP)
        # Ray's own dashboard UI on its isolated origin: framing refused, nothing of ours
        # to protect there beyond that (see DashboardOriginMiddleware).
        self.dashboard_host = (settings.dashboard_host or "").encode()
        self.dashboard_headers = security_headers(settings, "frame-ancestors 'none'")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(DOCS_PREFIXES):
            extra = self.docs_headers
        elif self.dashboard_host and _host(scope) == self.dashboard_host:
            extra = self.dashboard_headers
        else:
            extra = self.headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _host(scope: Scope) -> bytes:
    return bytes(dict(scope["headers"]).get(b"host", b"")).lower()


class DashboardOriginMiddleware:
    """On the dashboard origin (``Settings.dashboard_origin``) only the Ray proxy answers:
    the console, the API and their cookies never share an origin with pages that come from
    a provider's machine (``tesai.clusters.dashboard``)."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.host = (settings.dashboard_host or "").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self.host
            or scope["type"] != "http"
            or RAY_PROXY_PATH.match(scope["path"])
            or _host(scope) != self.host
        ):
            await self.app(scope, receive, send)
            return
        error = NotFound("The dashboard origin serves clusters' Ray dashboards only")
        await problem_response(error.to_problem(scope["path"]))(scope, receive, send)
