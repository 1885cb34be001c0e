"""A small but real OpenID Connect provider for tests, served by uvicorn on a free port.

Implements discovery, an auto-approving /authorize (code flow with PKCE S256 and nonce),
/token (client_secret_basic or _post; returns an RS256 ID token) and /jwks. ``next_user``
decides who "logs in"; ``misbehave`` makes it issue a bad ID token to test rejection.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CLIENT_ID = "tesai-test"
CLIENT_SECRET = "test-secret"


@dataclass
class LocalOidcProvider:
    issuer: str = ""
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    kid: str = field(default_factory=lambda: secrets.token_hex(4))
    next_user: dict[str, Any] = field(
        default_factory=lambda: {
            "sub": "user-1",
            "email": "oidc-user@example.com",
            "email_verified": True,
        }
    )
    misbehave: str | None = None
    """None, ``wrong_aud``, ``wrong_nonce``, ``wrong_key`` or ``expired``."""
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_requests: int = 0

    def jwks(self) -> dict[str, Any]:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    async def discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != CLIENT_ID or q.get("code_challenge_method") != "S256":
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "nonce": q.get("nonce"),
            "challenge": q.get("code_challenge"),
            "redirect_uri": q.get("redirect_uri"),
            "user": dict(self.next_user),
        }
        target = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q.get('state', '')})}"
        return RedirectResponse(target, status_code=302)

    def _client_ok(self, request: Request, form: dict[str, str]) -> bool:
        auth = request.headers.get("authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            return user == CLIENT_ID and password == CLIENT_SECRET
        return form.get("client_id") == CLIENT_ID and form.get("client_secret") == CLIENT_SECRET

    async def token(self, request: Request) -> Response:
        self.token_requests += 1
        form = {k: str(v) for k, v in (await request.form()).items()}
        grant = self.codes.pop(form.get("code", ""), None)
        if not self._client_ok(request, form) or grant is None:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if challenge != grant["challenge"] or form.get("redirect_uri") != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": "someone-else" if self.misbehave == "wrong_aud" else CLIENT_ID,
            "iat": now,
            "exp": now - 10 if self.misbehave == "expired" else now + 300,
            "nonce": "not-the-nonce" if self.misbehave == "wrong_nonce" else grant["nonce"],
            **grant["user"],
        }
        key = self.key
        if self.misbehave == "wrong_key":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        id_token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.kid})
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            }
        )

    async def jwks_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.jwks())

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
                Route("/jwks", self.jwks_endpoint),
            ]
        )


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serve_asgi(app: Any, sock: socket.socket) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on ``sock``; yields its base URL."""
    config = uvicorn.Config(app, log_level="warning", lifespan="auto")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@contextmanager
def serve_oidc_provider() -> Iterator[LocalOidcProvider]:
    """Run a provider on 127.0.0.1:<free port> in a thread until the block ends."""
    sock = free_socket()
    provider = LocalOidcProvider(issuer=f"http://127.0.0.1:{sock.getsockname()[1]}")
    with serve_asgi(provider.app(), sock):
        yield provider
