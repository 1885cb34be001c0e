"""HTTP protection and observability middleware, seen from a client."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import orjson
import pytest

from tesai.observability.logging import configure_logging
from tesai.settings import Settings
from tests.platform.conftest import MakeClient

PROBLEM = "application/problem+json"


async def test_body_over_limit_with_content_length_is_413(make_client: MakeClient) -> None:
    client = await make_client(max_body_bytes=1000)
    ok = await client.post("/api/v1/test-echo/raw", content=b"x" * 1000)
    assert ok.status_code == 200
    assert ok.json() == {"received": 1000}
    r = await client.post("/api/v1/test-echo/raw", content=b"x" * 1001)
    assert r.status_code == 413
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == "payload_too_large"


async def _chunks(total: int, size: int = 256) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"y" * n


@pytest.mark.parametrize("path", ["/api/v1/test-echo/raw", "/api/v1/test-echo/json"])
async def test_chunked_body_over_limit_is_413(make_client: MakeClient, path: str) -> None:
    client = await make_client(max_body_bytes=1000)
    r = await client.post(path, content=_chunks(5000))
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == "payload_too_large"


async def test_chunked_body_under_limit_passes(make_client: MakeClient) -> None:
    client = await make_client(max_body_bytes=1000)
    r = await client.post("/api/v1/test-echo/raw", content=_chunks(900))
    assert r.status_code == 200
    assert r.json() == {"received": 900}


async def test_rate_limit_per_ip_gives_429_with_retry_after(make_client: MakeClient) -> None:
    client = await make_client(
        rate_limit_enabled=True, rate_limit_per_ip=0.5, rate_limit_per_ip_burst=3
    )
    statuses = [(await client.get("/api/v1/test-items/1")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    r = await client.get("/api/v1/test-items/1")
    assert r.status_code == 429
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 2
    assert r.headers["x-request-id"]
    # Probes are never limited.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status_code == 200


async def test_rate_limit_per_principal(make_client: MakeClient) -> None:
    client = await make_client(
        rate_limit_enabled=True,
        rate_limit_per_ip=100,
        rate_limit_per_ip_burst=100,
        rate_limit_per_principal=0.5,
        rate_limit_per_principal_burst=2,
    )
    alice = {"Authorization": "Bearer alice-token"}
    assert [(await client.get("/healthz", headers=alice)).status_code for _ in range(3)] == [
        200
    ] * 3
    codes = [
        (await client.get("/api/v1/test-items/1", headers=alice)).status_code for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    # Another credential, and the same IP without one, still pass.
    assert (await client.get("/api/v1/test-items/1", headers={"X-API-Key": "k"})).status_code == 200
    assert (await client.get("/api/v1/test-items/1")).status_code == 200


async def test_rate_limit_disabled_by_setting(make_client: MakeClient) -> None:
    client = await make_client(
        rate_limit_enabled=False, rate_limit_per_ip=0.1, rate_limit_per_ip_burst=1
    )
    codes = {(await client.get("/api/v1/test-items/1")).status_code for _ in range(5)}
    assert codes == {200}


async def test_cors_allowlist(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=["https://console.example"])
    preflight = {"Access-Control-Request-Method": "POST"}
    ok = await client.options(
        "/api/v1/test-echo/raw", headers={"Origin": "https://console.example", **preflight}
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://console.example"
    bad = await client.options(
        "/api/v1/test-echo/raw", headers={"Origin": "https://evil.example", **preflight}
    )
    assert bad.status_code == 400
    assert "access-control-allow-origin" not in bad.headers

    simple = await client.get("/api/v1/test-items/1", headers={"Origin": "https://console.example"})
    assert simple.headers["access-control-allow-origin"] == "https://console.example"
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
    other = await client.get("/api/v1/test-items/1", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


async def test_no_cors_without_allowlist(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=[])
    r = await client.get("/api/v1/test-items/1", headers={"Origin": "https://console.example"})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


async def test_security_headers_on_every_response(make_client: MakeClient) -> None:
    client = await make_client()
    for r in (await client.get("/healthz"), await client.get("/api/v1/nope")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "strict-origin-when-cross-origin"
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self';" in csp
        assert "strict-transport-security" not in r.headers
    docs = await client.get("/api/docs")
    assert "https://cdn.jsdelivr.net" in docs.headers["content-security-policy"]


async def test_hsts_when_public_url_is_https(make_client: MakeClient) -> None:
    client = await make_client(public_url="https://tes.example")
    r = await client.get("/healthz")
    assert r.headers["strict-transport-security"].startswith("max-age=")


async def test_request_id_echoed_or_generated(make_client: MakeClient) -> None:
    client = await make_client()
    r = await client.get("/healthz", headers={"X-Request-ID": "req-123.abc"})
    assert r.headers["x-request-id"] == "req-123.abc"
    generated = (await client.get("/healthz")).headers["x-request-id"]
    assert len(generated) == 32
    # An id with characters that could forge log fields is replaced.
    forged = await client.get("/healthz", headers={"X-Request-ID": 'x" evil=1'})
    assert forged.headers["x-request-id"] != 'x" evil=1'


async def test_json_log_lines_carry_the_request_id(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client()
    out = io.StringIO()
    configure_logging(settings.model_copy(update={"log_json": True}), stream=out)
    try:
        r = await client.get("/api/v1/test-items/7", headers={"X-Request-ID": "trace-77"})
        assert r.status_code == 200
    finally:
        configure_logging(settings)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    mine = [line for line in lines if line.get("request_id") == "trace-77"]
    events = {line["event"] for line in mine}
    assert {"item_read", "request"} <= events
    access = next(line for line in mine if line["event"] == "request")
    assert access["method"] == "GET"
    assert access["path"] == "/api/v1/test-items/7"
    assert access["status"] == 200
    assert access["duration_ms"] >= 0
    assert access["level"] == "info"
    assert "timestamp" in access
