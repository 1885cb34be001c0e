"""The API process serves the built web console at "/" with an SPA fallback."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tesai.console import IMMUTABLE, REVALIDATE, console_file, mount_console
from tesai.errors import install_error_handlers
from tesai.settings import OIDCProvider, Settings
from tests.fixtures.auth import MakeUser


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><div id=root></div>")
    (tmp_path / "assets" / "index-abc123.js").write_text("console.log(1)")
    (tmp_path / "robots.txt").write_text("User-agent: *")
    (tmp_path.parent / "secret.txt").write_text("no")
    return tmp_path


def console_app(dist: Path, **settings: object) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/api/v1/thing")
    async def thing() -> dict[str, int]:
        return {"ok": 1}

    mount_console(app, Settings(**settings), dist)  # type: ignore[arg-type]
    return app


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_spa_routes_fall_back_to_index(dist: Path) -> None:
    async with client_for(console_app(dist)) as c:
        for path in ("/", "/app/clusters/123", "/pool", "/provider"):
            r = await c.get(path)
            assert r.status_code == 200, path
            assert r.text.startswith("<!doctype html>")
            assert r.headers["content-type"].startswith("text/html")
            assert r.headers["cache-control"] == REVALIDATE


async def test_assets_are_cached_forever_and_other_files_revalidated(dist: Path) -> None:
    async with client_for(console_app(dist)) as c:
        asset = await c.get("/assets/index-abc123.js")
        assert asset.status_code == 200
        assert asset.text == "console.log(1)"
        assert asset.headers["cache-control"] == IMMUTABLE
        assert "javascript" in asset.headers["content-type"]
        robots = await c.get("/robots.txt")
        assert robots.headers["cache-control"] == REVALIDATE
        missing = await c.get("/assets/index-old.js")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"


async def test_api_paths_keep_their_answers(dist: Path) -> None:
    async with client_for(console_app(dist)) as c:
        assert (await c.get("/api/v1/thing")).json() == {"ok": 1}
        unknown = await c.get("/api/v1/nope")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == "application/problem+json"
        assert (await c.get("/graphql/x")).status_code == 404
        assert (await c.get("/metrics")).status_code == 404
        # Other methods on app paths are not swallowed by the fallback.
        assert (await c.post("/app/clusters")).status_code in (404, 405)


async def test_no_path_escapes_dist(dist: Path) -> None:
    assert console_file(dist, "/../secret.txt") is None
    assert console_file(dist, "/assets/../../secret.txt") is None
    assert (
        console_file(dist, "/assets/index-abc123.js") == (dist / "assets/index-abc123.js").resolve()
    )
    async with client_for(console_app(dist)) as c:
        r = await c.get("/%2e%2e/secret.txt")
        assert r.text != "no"


async def test_missing_build_says_how_to_build(tmp_path: Path) -> None:
    async with client_for(console_app(tmp_path / "nothing")) as c:
        r = await c.get("/")
        assert r.status_code == 200
        assert "make web" in r.text


async def test_console_config_lists_oidc_providers(dist: Path) -> None:
    app = console_app(
        dist,
        oidc_providers=[
            OIDCProvider(name="google", issuer="https://accounts.google.com", client_id="x")
        ],
    )
    async with client_for(app) as c:
        body = (await c.get("/api/v1/public/console")).json()
        assert body["oidc_providers"] == ["google"]


async def test_full_app_serves_console_with_security_headers(client: httpx.AsyncClient) -> None:
    r = await client.get("/app/deploy")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert (await client.get("/api/v1/nope")).status_code == 404


async def test_public_device_page_is_404_or_422_for_unknown_or_bad_ids(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.get("/api/v1/public/devices/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert (await client.get("/api/v1/public/devices/not-a-uuid")).status_code == 422


async def test_public_device_page_shows_no_owner_data(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    _, provider = await make_user(roles=("provider",))
    r = await client.post(
        "/api/v1/provider/devices",
        json={"name": "secret-rig-name", "region": "eu-west", "country": "DE"},
        headers=provider,
    )
    assert r.status_code == 201, r.text
    device_id = r.json()["device"]["id"]
    page = await client.get(f"/api/v1/public/devices/{device_id}")
    assert page.status_code == 200
    body = page.json()
    assert body["region"] == "eu-west"
    assert body["uptime_30d_pct"] is None  # nothing recorded yet: not 0 %
    assert all(day["uptime_pct"] == 0 for day in body["uptime_by_day"])
    assert "secret-rig-name" not in page.text
    assert "provider_id" not in body
