"""The admin area and the OIDC sign-in, in a real headless Chromium against `tesai server`.

An admin signs in through the console and works every admin page: roles, device actions
that need no agent (disable; drain and undrain an offline device), cluster lookup, an
analytics report and the audit log with a filter. The OIDC test signs in through a local
identity provider and lands back in the console with the tokens stored.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, expect

from tesai.devices.models import DeviceStatus
from tesai.devices.service import get_device, record_transition
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.auth.oidc_provider import CLIENT_ID, CLIENT_SECRET, serve_oidc_provider
from tests.fixtures.auth import MakeUser
from tests.fixtures.processes import ServerProcess
from tests.web.conftest import assert_fits, axe_check, screenshot

PASSWORD = "correct horse battery staple"


def status_of(page: Page, device: str) -> Locator:
    return page.get_by_role("row", name=re.compile(device)).locator("[data-status]").first


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_admin_pages_through_the_console(
    page: Page, server: ServerProcess, make_user: MakeUser, runtime: Runtime
) -> None:
    admin, admin_headers = await make_user(
        email="admin@example.com", roles=("admin",), password=PASSWORD
    )
    await make_user(email="target@example.com", roles=("customer",))
    _, provider = await make_user(email="prov@example.com", roles=("provider",))
    ids = {}
    for name in ("rig-a", "rig-b"):
        r = httpx.post(
            f"{server.url}/api/v1/provider/devices",
            json={"name": name, "region": "eu-west", "country": "DE"},
            headers=provider,
        )
        assert r.status_code == 201, r.text
        ids[name] = uuid.UUID(r.json()["device"]["id"])
    # rig-b's agent joined once and went away: offline, so it can be drained without an agent.
    async with runtime.sessionmaker() as s, s.begin():
        record_transition(s, await get_device(s, ids["rig-b"]), DeviceStatus.offline, "agent_left")

    # --- Sign in through the console: an admin-only account lands in the admin area.
    await page.goto("/login")
    await page.get_by_label("Email").fill("admin@example.com")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/admin$"))

    # --- Users: give the customer the provider role; it sticks across a reload.
    await expect(page.get_by_role("heading", name="Users and roles", level=1)).to_be_visible()
    await expect(page.get_by_text("3 users")).to_be_visible()
    # An account keeps at least one role: its only role cannot be unticked.
    await expect(page.get_by_label("provider role for prov@example.com")).to_be_disabled()
    await axe_check(page, "admin users")
    await page.get_by_label("provider role for target@example.com").check()
    await page.get_by_role("button", name="Save roles of target@example.com").click()
    await expect(page.get_by_role("button", name="Save roles of target@example.com")).to_be_hidden()
    await page.get_by_label("Email contains").fill("target@")
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_text("1 user", exact=True)).to_be_visible()
    await page.reload()
    await expect(page.get_by_label("provider role for target@example.com")).to_be_checked()
    await expect(page.get_by_label("customer role for target@example.com")).to_be_checked()
    await screenshot(page, "admin-users")
    users = httpx.get(
        f"{server.url}/api/v1/internal/users", params={"email": "target@"}, headers=admin_headers
    )
    assert users.json()["items"][0]["roles"] == ["customer", "provider"]

    # --- Devices: disable the pending one; drain then undrain the offline one.
    await page.get_by_role("link", name="Devices", exact=True).click()
    await expect(page.get_by_role("heading", name="Devices", level=1)).to_be_visible()
    await expect(status_of(page, "rig-a")).to_have_attribute("data-status", "pending")
    await expect(status_of(page, "rig-b")).to_have_attribute("data-status", "offline")
    await axe_check(page, "admin devices")
    await page.get_by_role("button", name="Disable rig-a").click()
    await page.get_by_role("button", name="Disable", exact=True).click()
    await expect(status_of(page, "rig-a")).to_have_attribute("data-status", "disabled")
    await page.get_by_role("button", name="Enable rig-a").click()
    # Never joined (no agent yet): back to waiting for its agent.
    await expect(status_of(page, "rig-a")).to_have_attribute("data-status", "pending")
    await page.get_by_role("button", name="Drain rig-b").click()
    await page.get_by_label("Reason for draining rig-b").fill("disk swap")
    await axe_check(page, "admin devices (drain form)")
    await page.get_by_role("button", name="Drain", exact=True).click()
    await expect(status_of(page, "rig-b")).to_have_attribute("data-status", "drained")
    await screenshot(page, "admin-devices")
    await page.get_by_role("button", name="Undrain rig-b").click()
    # Never joined for real (no agent version): back to waiting for its agent.
    await expect(status_of(page, "rig-b")).to_have_attribute("data-status", "pending")

    # --- Clusters: the lookup page, and an unknown id is reported, not a blank page.
    await page.get_by_role("link", name="Clusters", exact=True).click()
    await expect(page.get_by_text("No cluster selected")).to_be_visible()
    await expect(page.get_by_text("No clusters match")).to_be_visible()  # nobody rented yet
    await axe_check(page, "admin clusters")
    await page.get_by_label("Cluster id").fill("not-an-id")
    await expect(page.get_by_role("button", name="Look up")).to_be_disabled()
    await page.get_by_label("Cluster id").fill(str(uuid.uuid4()))
    await page.get_by_role("button", name="Look up").click()
    await expect(page.get_by_role("alert")).to_be_visible()
    await screenshot(page, "admin-clusters")

    # --- Analytics: the default report runs over the last 7 days.
    await page.get_by_role("link", name="Analytics", exact=True).click()
    await expect(page.get_by_role("heading", name="Platform analytics", level=1)).to_be_visible()
    await page.get_by_role("button", name="Run report").click()
    await expect(page.get_by_text(re.compile(r", by (hour|day); \d+ rows\."))).to_be_visible()
    await page.wait_for_load_state("networkidle")
    await axe_check(page, "admin analytics")
    await assert_fits(page, "admin analytics")
    await screenshot(page, "admin-analytics")

    # --- Audit log: the role change is there; filtering by action keeps only that action.
    await page.get_by_role("link", name="Audit log", exact=True).click()
    table = page.get_by_role("table", name="Audit events, newest first")
    await expect(table.get_by_text("admin.roles_changed")).to_be_visible()
    await expect(table.get_by_text("ops.device_drain")).to_be_visible()
    await axe_check(page, "admin audit")
    await assert_fits(page, "admin audit")
    await page.get_by_label("Action").fill("drop table;")
    await expect(page.get_by_role("button", name="Apply filters")).to_be_disabled()
    await page.get_by_label("Action").fill("admin.roles_changed")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(table.get_by_text("ops.device_drain")).to_be_hidden()
    actions = table.locator("tbody tr td:nth-child(2)")
    await expect(actions).to_have_count(1)
    await expect(actions).to_have_text(["admin.roles_changed"])
    await expect(table).to_contain_text(f"user {str(admin.id)[:8]}")
    await screenshot(page, "admin-audit")


@pytest.mark.slow
@pytest.mark.timeout(90)
# runtime: for its teardown, which empties the database the server wrote to.
@pytest.mark.usefixtures("runtime")
async def test_oidc_sign_in_lands_back_in_the_console(
    browser: Browser, settings: Settings, tmp_path: Path, console_built: Path
) -> None:
    with serve_oidc_provider() as idp:
        srv = ServerProcess(settings, tmp_path / "server.log")
        srv.env["TESAI_OIDC_REDIRECT_BASE"] = srv.url
        srv.env["TESAI_OIDC_PROVIDERS"] = json.dumps(
            [
                {
                    "name": "local",
                    "issuer": idp.issuer,
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                }
            ]
        )
        srv.start()
        ctx = await browser.new_context(base_url=srv.url, bypass_csp=True)
        ctx.set_default_timeout(20_000)
        try:
            page = await ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            callbacks: list[str] = []
            page.on(
                "request",
                lambda req: (
                    callbacks.append(req.url) if "/oidc/local/callback" in req.url else None
                ),
            )
            # A page that needs a sign-in sends the user to it and back there afterwards.
            await page.goto("/app/usage")
            await expect(page).to_have_url(re.compile(r"/login\?next="))
            await page.get_by_role("link", name="Continue with Local").click()
            await expect(page).to_have_url(re.compile(r"/app/usage$"))
            await expect(page.get_by_role("heading", name="Usage and invoices")).to_be_visible()
            # The tokens travelled in the fragment only, and are gone from the address bar.
            assert callbacks
            assert all("access_token" not in u for u in callbacks)
            assert "#" not in page.url
            stored = await page.evaluate("() => JSON.parse(localStorage.getItem('tesai-auth'))")
            me = httpx.get(
                f"{srv.url}/api/v1/auth/me",
                headers={"Authorization": f"Bearer {stored['state']['accessToken']}"},
            )
            assert me.json()["email"] == "oidc-user@example.com"
            # A reload of the used callback page explains itself instead of hanging.
            await page.goto("/auth/callback")
            await expect(page.get_by_role("alert")).to_contain_text("no tokens")
            await axe_check(page, "auth callback (no tokens)")
            assert not errors, errors
        finally:
            await ctx.close()
            srv.stop()
