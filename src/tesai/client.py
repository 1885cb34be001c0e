"""A small typed HTTP client for the TES AI API, used by the CLI.

Credentials saved by ``tesai login`` live in ``<user config dir>/tesai/credentials.json``
(mode 0600). ``TesaiClient()`` without arguments uses them and, when the access token has
expired, refreshes it once with the stored refresh token (saving the new pair).

Errors come back as ``ApiError`` carrying the server's problem+json ``code`` and detail.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import platformdirs
from pydantic import BaseModel


class ApiError(Exception):
    """The server answered with an error (problem+json)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        super().__init__(f"{status} {code}: {detail}")


class NotLoggedIn(Exception):
    """No stored credentials; run `tesai login` first."""


class Credentials(BaseModel):
    server: str
    access_token: str
    refresh_token: str
    expires_at: float
    """Unix time at which the access token expires."""


def credentials_path() -> Path:
    return Path(platformdirs.user_config_dir("tesai", appauthor=False)) / "credentials.json"


def load_credentials() -> Credentials | None:
    path = credentials_path()
    try:
        return Credentials.model_validate_json(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def save_credentials(credentials: Credentials) -> Path:
    """Write the credentials file with mode 0600 (created so, never world-readable)."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(credentials.model_dump_json())
    tmp.replace(path)
    return path


def delete_credentials() -> bool:
    try:
        credentials_path().unlink()
    except FileNotFoundError:
        return False
    return True


def _raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        code, detail = str(body.get("code", "error")), str(body.get("detail", ""))
    except (ValueError, AttributeError):
        code, detail = "error", response.text[:200]
    raise ApiError(response.status_code, code, detail)


class DeferredTransport(httpx.BaseTransport):
    """httpx's own transport, made at the first request: the verifying TLS one (with the CA
    bundle, whose loading costs tens of milliseconds at every CLI call) only for an https
    URL, a plain one for http. Every https request is verified as with httpx's default."""

    def __init__(self) -> None:
        self._plain: httpx.HTTPTransport | None = None
        self._tls: httpx.HTTPTransport | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            if self._tls is None:
                self._tls = httpx.HTTPTransport()
            return self._tls.handle_request(request)
        if self._plain is None:
            # Never used for TLS: an https URL always takes the verifying transport above.
            self._plain = httpx.HTTPTransport(verify=False)
        return self._plain.handle_request(request)

    def close(self) -> None:
        for transport in (self._plain, self._tls):
            if transport is not None:
                transport.close()


class TesaiClient:
    """``TesaiClient(server, token)``, or ``TesaiClient()`` for the stored login."""

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._credentials: Credentials | None = None
        if server is None:
            self._credentials = load_credentials()
            if self._credentials is None:
                raise NotLoggedIn("Not logged in: run `tesai login --server URL --email …`")
            server = self._credentials.server
            token = token or self._credentials.access_token
        self.server = server.rstrip("/")
        self.token = token
        self._http = httpx.Client(
            base_url=self.server, timeout=timeout_s, transport=transport or DeferredTransport()
        )

    def __enter__(self) -> TesaiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The caller's headers (e.g. ``Idempotency-Key``) with this client's Authorization."""
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**(extra or {}), **auth}

    def _refresh_stored(self) -> bool:
        creds = self._credentials
        if creds is None:
            return False
        response = self._http.post(
            "/api/v1/auth/refresh", json={"refresh_token": creds.refresh_token}
        )
        if not response.is_success:
            return False
        self._credentials = self._store(response.json())
        self.token = self._credentials.access_token
        return True

    def _store(self, tokens: dict[str, Any]) -> Credentials:
        credentials = Credentials(
            server=self.server,
            access_token=tokens["access_token"],
            refresh_token=tokens["refresh_token"],
            expires_at=time.time() + int(tokens["expires_in"]),
        )
        save_credentials(credentials)
        return credentials

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return the decoded JSON (None for 204). Raises ``ApiError``."""
        if self._credentials is not None and self._credentials.expires_at < time.time() + 10:
            self._refresh_stored()
        extra = kwargs.pop("headers", None)
        response = self._http.request(method, path, headers=self._headers(extra), **kwargs)
        if response.status_code == 401 and self._refresh_stored():
            response = self._http.request(method, path, headers=self._headers(extra), **kwargs)
        _raise_for_problem(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header of this client (empty without a token)."""
        return self._headers()

    @contextlib.contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response (logs, follow mode); raises ``ApiError`` on an error status."""
        extra = kwargs.pop("headers", None)
        with self._http.stream(method, path, headers=self._headers(extra), **kwargs) as response:
            if not response.is_success:
                response.read()
                _raise_for_problem(response)
            yield response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def login(self, email: str, password: str) -> Credentials:
        """Password login; stores and returns the credentials. Raises ``ApiError``."""
        response = self._http.post(
            "/api/v1/auth/login", json={"email": email, "password": password}
        )
        _raise_for_problem(response)
        self._credentials = self._store(response.json())
        self.token = self._credentials.access_token
        return self._credentials

    def logout(self) -> None:
        """End the stored session on the server (best effort) and forget it locally."""
        creds = self._credentials
        try:
            if creds is not None:
                self._http.post("/api/v1/auth/logout", json={"refresh_token": creds.refresh_token})
        except httpx.HTTPError:
            pass
        finally:
            delete_credentials()
            self._credentials = None
            self.token = None


def dumps(data: Any) -> str:
    """JSON for `--json` output."""
    return json.dumps(data, indent=2, default=str)
