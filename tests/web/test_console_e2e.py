"""The web console in a real headless Chromium against a real `tesai server`.

The fast test covers the public site, a wallet sign-in with an injected test wallet (a
known key signs the real Sign-In-With-Solana message) and an axe check on every main
customer page; the slow one drives a provider and a customer through the product with a
real agent and a real Ray cluster, and writes the README's screenshots.
"""

from __future__ import annotations

import base64
import re
import tempfile
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect
from solders.keypair import Keypair

from tesai.agent.local import start_local_agent
from tesai.runtime import Runtime
from tests.fixtures.auth import MakeUser
from tests.fixtures.cluster import Pool
from tests.fixtures.processes import ServerProcess
from tests.web.conftest import assert_fits, axe_check, screenshot
from tests.web.hosts import Hosts, seed_history

WALLET_JS = """
(address) => {
  const publicKey = { toString: () => address };
  window.solana = {
    publicKey,
    connect: async () => ({ publicKey }),
    signMessage: async (bytes) => {
      const b64 = btoa(String.fromCharCode(...bytes));
      const sig = await window.testWalletSign(b64);
      return { signature: Uint8Array.from(atob(sig), (c) => c.charCodeAt(0)) };
    },
  };
}
"""


async def inject_wallet(page: Page, key: Keypair) -> list[str]:
    """``window.solana`` backed by ``key``; returns the messages it signed."""
    signed: list[str] = []

    def sign(message_b64: str) -> str:
        message = base64.b64decode(message_b64)
        signed.append(message.decode())
        return base64.b64encode(bytes(key.sign_message(message))).decode()

    await page.expose_function("testWalletSign", sign)
    await page.add_init_script(f"({WALLET_JS})({str(key.pubkey())!r})")
    return signed


async def test_public_site_wallet_sign_in_and_accessibility(
    page: Page, server: ServerProcess
) -> None:
    # Public pages: landing, pool explorer (empty pool), an unknown machine, sign-in pages.
    await page.goto("/")
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Ray clusters")
    await expect(page.get_by_test_id("landing-gpus")).to_have_text("0")
    await axe_check(page, "landing")
    await page.get_by_role("link", name="Pool explorer").first.click()
    await expect(page).to_have_url(re.compile(r"/pool$"))
    await expect(page.get_by_text("No GPUs online right now")).to_be_visible()
    await axe_check(page, "pool explorer")
    await page.goto("/devices/00000000-0000-0000-0000-000000000000")
    await expect(page.get_by_text("No such machine")).to_be_visible()
    await axe_check(page, "device page")
    await page.goto("/signup")
    await axe_check(page, "sign up")

    # A customer page asks for a sign-in first, then comes back to it.
    await page.goto("/app/billing")
    await expect(page).to_have_url(re.compile(r"/login\?next=%2Fapp%2Fbilling$"))
    await axe_check(page, "sign in")

    # A wrong password is refused with the API's reason.
    await page.get_by_label("Email").fill("nobody@example.com")
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await expect(page.get_by_role("alert")).to_be_visible()

    # Wallet sign-in: the test wallet signs the server's SIWS message with a known key.
    key = Keypair()
    signed = await inject_wallet(page, key)
    await page.reload()
    await page.get_by_role("button", name="Sign in with a Solana wallet").click()
    await expect(page).to_have_url(re.compile(r"/app/billing$"))
    await expect(page.get_by_role("heading", name="Billing")).to_be_visible()
    assert len(signed) == 1
    assert str(key.pubkey()) in signed[0]
    assert server.url.removeprefix("http://") in signed[0]
    token = await page.evaluate(
        "() => JSON.parse(localStorage.getItem('tesai-auth')).state.accessToken"
    )
    wallets = httpx.get(
        f"{server.url}/api/v1/auth/wallets", headers={"Authorization": f"Bearer {token}"}
    )
    assert str(key.pubkey()) in wallets.text

    # Every main customer page renders its empty state accessibly, also at phone width.
    await expect(page.get_by_test_id("stat-available")).to_have_text("$0.00")
    await axe_check(page, "billing")
    for path, heading in [
        ("/app", "Overview"),
        ("/app/deploy", "Deploy a cluster"),
        ("/app/clusters", "Clusters"),
        ("/app/usage", "Usage and invoices"),
        ("/app/api-keys", "API keys"),
        ("/app/settings", "Limits and alerts"),
    ]:
        await page.goto(path)
        await expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
        await page.wait_for_load_state("networkidle")
        await axe_check(page, path)
    await expect(page.get_by_text("No notifications")).to_be_visible()

    # A deposit request: Solana Pay URL and its QR code.
    await page.goto("/app/billing")
    await page.get_by_label("Amount (USDC)").fill("12.5")
    await page.get_by_role("button", name="Create a Solana Pay request").click()
    request = page.get_by_test_id("deposit-request")
    await expect(request.get_by_role("img")).to_be_visible()
    href = await request.get_by_role("link", name="Open in wallet").get_attribute("href")
    assert href is not None
    assert href.startswith("solana:")
    assert "amount=12.5" in href

    # An API key is shown once and listed after.
    await page.goto("/app/api-keys")
    await page.get_by_label("Name").fill("laptop")
    await page.get_by_role("button", name="Create key").click()
    await expect(page.get_by_label("New API key")).to_be_visible()
    await expect(page.get_by_role("cell", name="laptop")).to_be_visible()

    for path in ("/", "/pool", "/app/deploy", "/app/settings"):
        await page.goto(path)
        await assert_fits(page, f"{path} at 1280 px")
    await page.set_viewport_size({"width": 390, "height": 844})
    unknown = "/devices/00000000-0000-0000-0000-000000000000"
    for path in ("/", "/pool", unknown, "/signup", "/app/deploy", "/app/settings"):
        await page.goto(path)
        await page.wait_for_load_state("networkidle")
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} scrolls sideways at 390 px ({overflow} px)"
        await assert_fits(page, f"{path} at 390 px")
    await page.get_by_role("button", name="Menu").click()
    await page.get_by_role("button", name=re.compile("Sign out")).click()
    await expect(page).to_have_url(re.compile(r"/$"))
    assert (
        await page.evaluate(
            "() => JSON.parse(localStorage.getItem('tesai-auth')).state.accessToken"
        )
        is None
    )


async def sign_up(page: Page, email: str, *, provider: bool) -> None:
    await page.goto("/signup?role=provider" if provider else "/signup")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill("correct horse battery staple")
    await page.get_by_role("button", name="Create account").click()
    # Signing up then in hashes the password twice: seconds each on a busy machine.
    landing = re.compile(r"/provider$" if provider else r"/app$")
    await expect(page).to_have_url(landing, timeout=20_000)


async def access_token(page: Page) -> str:
    token: str = await page.evaluate(
        "() => JSON.parse(localStorage.getItem('tesai-auth')).state.accessToken"
    )
    return token


H100 = "NVIDIA H100 80GB HBM3"


async def test_gpu_and_cpu_offers_are_worded_by_kind_and_fit_a_phone(
    page: Page, server: ServerProcess, make_user: MakeUser, runtime: Runtime
) -> None:
    """A pool of one GPU machine and one CPU machine: GPUs are counted and priced as GPUs, CPU
    machines as nodes, and neither page runs past its boxes, charts' axes included."""
    _, provider = await make_user(roles=("provider",))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        hosts = Hosts(client, provider)
        gpu = await hosts.join("gpu-01", gpus=1, gpu_model=H100, price_micro=2_500_000)
        await hosts.join("cpu-01", region="eu-west", country="DE", price_micro=1_000_000)
        hosts.start_beating(2.0)
        try:
            # Two days of history in which the GPU was up 15 minutes a day: 0.01 GPUs online,
            # ticks like "0.0025" that a fixed-width y-axis cut off.
            await seed_history(runtime, gpu.device_id)
            await _read_a_mixed_pool(page)
        finally:
            await hosts.stop_beating()


async def _read_a_mixed_pool(page: Page) -> None:
    await page.goto("/")
    await expect(page.get_by_test_id("landing-gpus")).to_have_text("1")
    await expect(page.get_by_test_id("landing-from")).to_have_text("$2.50")
    await expect(page.get_by_test_id("landing-from-unit")).to_contain_text("per GPU·h")

    await page.goto("/pool")
    await expect(page.get_by_test_id("stat-gpus-online")).to_have_text("1")
    await expect(page.get_by_test_id("stat-cpu-machines")).to_have_text("1")
    by_model = page.get_by_role("region", name="GPUs online by model and region")
    await expect(by_model.get_by_role("row").filter(has_text=H100)).to_contain_text("$2.50/GPU·h")
    bookable = page.get_by_role("region", name="Machines bookable now")
    gpu_row = bookable.get_by_role("row").filter(has_text="us-east · US")
    await expect(gpu_row).to_contain_text(f"1 × {H100}")
    await expect(gpu_row).to_contain_text("$2.50/GPU·h")
    cpu_row = bookable.get_by_role("row").filter(has_text="eu-west · DE")
    await expect(cpu_row).to_contain_text("$1.00/node·h")
    await expect(cpu_row).not_to_contain_text("GPU")
    # 0.01 GPUs online a day: the CPU machine's days are not plotted as fractions of a GPU.
    history = page.get_by_role("img", name="GPUs online and rented over time")
    await expect(history).to_contain_text("0.0025")
    await page.wait_for_timeout(5500)  # a second live sample: the live charts are drawn
    await expect(page.get_by_role("img", name=re.compile("^GPU utilisation"))).to_be_visible()
    await assert_fits(page, "pool explorer with GPUs and CPUs at 1280 px")

    await sign_up(page, "gpu-customer@example.com", provider=False)
    await page.goto("/app/deploy")
    await expect(page.get_by_test_id(f"bookable-{H100}")).to_contain_text("1 GPU bookable")
    await expect(page.get_by_test_id(f"bookable-{H100}")).to_contain_text("/GPU·h")
    await expect(page.get_by_test_id("bookable-__cpu__")).to_contain_text("1 CPU node bookable")
    await page.get_by_label(re.compile(H100)).check()
    await expect(page.get_by_label("Number of GPUs", exact=True)).to_be_visible()
    await page.get_by_role("button", name="Get a quote").click()
    await expect(page.get_by_test_id("quote-hardware")).to_have_text(f"1 × {H100}")
    await expect(page.get_by_test_id("quote")).to_contain_text("1 GPU")
    await assert_fits(page, "deploy wizard with a GPU quote at 1280 px")
    # Picked CPU: the size and the quote say nodes, never GPUs.
    await page.get_by_label(re.compile("CPU only")).check()
    size = page.locator("section").filter(has=page.get_by_role("heading", name="2. Size"))
    await expect(size.get_by_label("Number of CPU nodes", exact=True)).to_be_visible()
    await expect(size).not_to_contain_text("GPU")
    await page.get_by_role("button", name="Get a quote").click()
    await expect(page.get_by_test_id("quote-hardware")).to_have_text("1 CPU node")
    await expect(page.get_by_test_id("quote")).not_to_contain_text("GPU")

    await page.set_viewport_size({"width": 390, "height": 844})
    await assert_fits(page, "deploy wizard with a CPU quote at 390 px")
    for path in ("/", "/pool"):
        await page.goto(path)
        if path == "/pool":
            await expect(history).to_contain_text("0.0025")
            await page.wait_for_timeout(5500)
        await assert_fits(page, f"{path} with GPUs and CPUs at 390 px")


@pytest.mark.slow
@pytest.mark.timeout(480)
async def test_provider_and_customer_through_the_console(
    browser: Browser,
    server: ServerProcess,
    make_user: MakeUser,
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    pool = Pool()
    contexts = []
    hosts: Hosts | None = None

    async def new_page() -> Page:
        ctx = await browser.new_context(
            base_url=server.url, viewport={"width": 1280, "height": 900}, bypass_csp=True
        )
        ctx.set_default_timeout(20_000)
        contexts.append(ctx)
        return await ctx.new_page()

    def explain() -> str:
        return pool.tail() + "\n--- server\n" + server.log.read_text()[-3000:]

    try:
        # --- A provider signs up, adds a device and runs its join command: the agent connects.
        prov = await new_page()
        await sign_up(prov, "provider@example.com", provider=True)
        await expect(prov.get_by_text("No devices yet")).to_be_visible()
        await axe_check(prov, "provider devices (empty)")
        await prov.get_by_role("link", name="Add device").first.click()
        await prov.get_by_label("Name").fill("rig-01")
        await prov.get_by_label("Region").fill("eu-west")
        await prov.get_by_label("Country").fill("DE")
        await prov.get_by_role("button", name="Create device and get join command").click()
        command = await prov.get_by_test_id("join-command").inner_text()
        match = re.search(r"--server (\S+) --token (\S+)", command)
        assert match is not None, command
        assert match.group(1) == server.url
        await expect(prov.get_by_test_id("agent-wait")).to_have_attribute("data-phase", "waiting")
        await axe_check(prov, "add device")
        root = Path(tempfile.mkdtemp(prefix="trw-", dir="/tmp"))
        pool.logs["d"], pool.temp_roots["d"] = tmp_path / "agent.log", root
        pool.agents["d"] = start_local_agent(
            server.url,
            tmp_path / "agent",
            match.group(2),
            log_file=pool.logs["d"],
            extra_env={
                "TESAI_RAY_PORT_RANGE": "26000-26999",
                "TESAI_RAY_NODE_IP": "127.0.0.1",
                "TESAI_RAY_TEMP_ROOT": str(root),
            },
        )
        try:
            await expect(prov.get_by_test_id("agent-wait")).to_have_attribute(
                "data-phase", "online", timeout=120_000
            )
        except AssertionError as exc:
            raise AssertionError(explain()) from exc

        # --- A GPU machine of the same provider joins beside it (declared, proven on the CPU:
        # tests/web/hosts.py), with two days of history.
        hosts = Hosts(
            httpx.AsyncClient(base_url=server.url, timeout=30),
            {"Authorization": f"Bearer {await access_token(prov)}"},
        )
        gpu = await hosts.join("gpu-01", gpus=2, gpu_model=H100, price_micro=2_500_000)
        hosts.start_beating(2.0)
        await seed_history(runtime, gpu.device_id)

        # --- The public site now shows both machines, each in its own words.
        pub = await new_page()
        await pub.goto("/")
        await expect(pub.get_by_test_id("landing-gpus")).to_have_text("2")
        await expect(pub.get_by_test_id("landing-from-unit")).to_contain_text("per GPU·h")
        await pub.wait_for_load_state("networkidle")
        await screenshot(pub, "landing")
        await pub.goto("/pool")
        await expect(pub.get_by_test_id("stat-cpu-machines")).to_have_text("1")
        await expect(pub.get_by_test_id("stat-gpus-online")).to_have_text("2")
        bookable = pub.get_by_role("region", name="Machines bookable now")
        cpu_row = bookable.get_by_role("row").filter(has_text="eu-west · DE")
        await expect(cpu_row).to_contain_text("/node·h")
        await expect(cpu_row).not_to_contain_text("GPU")
        gpu_row = bookable.get_by_role("row").filter(has_text="us-east · US")
        await expect(gpu_row).to_contain_text(f"2 × {H100}")
        await expect(gpu_row).to_contain_text("$2.50/GPU·h")
        await pub.wait_for_timeout(5500)  # a second live sample for the trend chart
        await screenshot(pub, "pool-explorer")
        await axe_check(pub, "pool explorer (two machines)")
        # Listed prices, with the fee said beside them.
        await expect(pub.get_by_test_id("fee-note")).to_contain_text("platform fee")
        await assert_fits(pub, "pool explorer (two machines)")
        await pub.set_viewport_size({"width": 390, "height": 844})
        for path in ("/", "/pool"):
            await pub.goto(path)
            await assert_fits(pub, f"{path} at 390 px (two machines)")

        # --- A customer signs up and an admin grants credit.
        cust = await new_page()
        await sign_up(cust, "customer@example.com", provider=False)
        token = await access_token(cust)
        me = httpx.get(f"{server.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        _, admin = await make_user(roles=("admin",))
        grant = httpx.post(
            f"{server.url}/api/v1/internal/credits",
            json={"user_id": me.json()["id"], "amount_micro": 50_000_000, "reason": "welcome"},
            headers=admin | {"Idempotency-Key": "web-e2e-grant"},
        )
        assert grant.status_code == 201, grant.text
        await cust.reload()
        await expect(cust.get_by_test_id("stat-available")).to_have_text("$50.00")

        # --- Deploy wizard: live bookable count, quote with breakdown and TTL, deploy.
        await cust.get_by_role("link", name="Deploy a cluster").first.click()
        await expect(cust.get_by_test_id("bookable-__cpu__")).to_contain_text("1 CPU node bookable")
        await expect(cust.get_by_label("Number of GPUs or CPU nodes", exact=True)).to_be_visible()
        await cust.get_by_label(re.compile("CPU only")).check()
        await expect(cust.get_by_label("Number of CPU nodes", exact=True)).to_be_visible()
        await expect(cust.get_by_test_id("fee-note")).to_contain_text("platform fee")
        await cust.get_by_label("Cluster name").fill("web-e2e")
        await cust.get_by_role("button", name="Get a quote").click()
        await expect(cust.get_by_test_id("quote-total")).to_be_visible()
        await expect(cust.get_by_test_id("quote-ttl")).to_contain_text("Price held for")
        await expect(cust.get_by_test_id("quote")).to_contain_text("Platform fee per hour")
        await expect(cust.get_by_test_id("quote")).to_contain_text(
            re.compile(r"(?<!\d)1 machine(?!s)")
        )
        await expect(cust.get_by_test_id("quote-hardware")).to_have_text("1 CPU node")
        await expect(cust.get_by_test_id("quote")).not_to_contain_text("GPU")
        await assert_fits(cust, "deploy wizard with a quote")
        await screenshot(cust, "deploy-wizard")
        await axe_check(cust, "deploy wizard with a quote")
        await cust.get_by_role("button", name=re.compile(r"^Deploy for \$")).click()
        await expect(cust).to_have_url(re.compile(r"/app/clusters/[0-9a-f-]{36}$"))
        status = cust.get_by_test_id("cluster-status").locator("[data-status]")
        try:
            await expect(status).to_have_attribute("data-status", "running", timeout=240_000)
        except AssertionError as exc:
            raise AssertionError(explain()) from exc
        await expect(cust.get_by_test_id("event-reason").first).to_have_text("all_nodes_alive")

        # --- A job: submit, follow its logs, see it succeed.
        await cust.get_by_role("button", name="Submit job").click()
        await expect(cust.get_by_test_id("job-logs")).to_contain_text(
            "hello from TES AI", timeout=120_000
        )
        await expect(
            cust.get_by_test_id("job-status").first.locator("[data-status]")
        ).to_have_attribute("data-status", "succeeded", timeout=60_000)
        # The head's Ray dashboard answers through the proxy with the customer's token.
        await cust.get_by_role("button", name="Check the dashboard").click()
        await expect(cust.get_by_text(re.compile(r"Dashboard up · Ray 2\."))).to_be_visible()
        await expect(cust.get_by_test_id("stat-hardware")).to_have_text("1 CPU node")
        await expect(cust.get_by_role("region", name="Nodes", exact=True)).not_to_contain_text(
            "GPU"
        )
        await screenshot(cust, "cluster-detail")
        await axe_check(cust, "cluster detail")
        await assert_fits(cust, "cluster detail")

        # The real Ray dashboard opens in a new tab through the proxy (ticket → cookie).
        async with cust.context.expect_page() as opened:
            await cust.get_by_role("button", name=re.compile("^Open Ray dashboard")).click()
        ray_tab = await opened.value
        await ray_tab.wait_for_load_state()
        await expect(ray_tab).to_have_url(
            re.compile(r"/api/v1/clusters/[0-9a-f-]{36}/ray/(#.*)?$"), timeout=30_000
        )
        await expect(ray_tab).to_have_title(re.compile(r"Ray Dashboard$"))
        # The app renders (its assets and API calls came through the proxy) and shows the node.
        await expect(
            ray_tab.get_by_text(re.compile("Cluster status and autoscaler"))
        ).to_be_visible(timeout=30_000)
        # The tab's cookie reads this cluster's Ray API (our job is there) but cannot write.
        jobs = await ray_tab.evaluate("fetch('api/jobs/').then((r) => r.json())")
        assert any(str(j.get("submission_id", "")).startswith("tesai-") for j in jobs), jobs
        write = await ray_tab.evaluate(
            "fetch('api/jobs/', {method: 'POST', body: '{}'}).then((r) => r.status)"
        )
        assert write == 403
        await ray_tab.wait_for_load_state("networkidle")
        await screenshot(ray_tab, "ray-dashboard")
        await ray_tab.close()

        # The node's machine has a public page: proof score, reliability, uptime.
        await cust.locator("a[href^='/devices/']").first.click()
        await expect(cust.get_by_role("heading", name=re.compile("^Machine "))).to_be_visible()
        await expect(cust.get_by_test_id("stat-proof-score")).not_to_have_text("—")
        # Over its life so far ("Uptime (since listed 4m ago)"); "—" until a minute is written.
        uptime = cust.locator("[data-testid^='stat-uptime-']")
        await expect(uptime).to_have_text(re.compile(r"%|—"))
        await axe_check(cust, "public device page")
        await assert_fits(cust, "public device page")
        await cust.go_back()

        # --- Terminate; the usage is in this month's statement.
        await cust.get_by_role("button", name="Terminate").click()
        await cust.get_by_role("button", name="Yes, terminate").click()
        await expect(status).to_have_attribute("data-status", "terminated", timeout=90_000)
        await cust.get_by_role("link", name="Usage & invoices").click()
        charged = cust.get_by_test_id("invoice-charged").first
        await expect(charged).not_to_have_text("$0.00", timeout=30_000)
        await expect(cust.get_by_test_id("usage-amount").first).to_be_visible()
        await axe_check(cust, "usage and invoices")

        # --- The provider sees the device and the earnings.
        await prov.goto("/provider")
        await expect(prov.get_by_test_id("devices-table")).to_contain_text("rig-01")
        await expect(prov.get_by_test_id("devices-table")).to_contain_text("gpu-01")
        await screenshot(prov, "provider-devices")
        await axe_check(prov, "provider devices")
        # The device's page: its history of events and its telemetry charts fit their boxes.
        await prov.get_by_role("link", name="rig-01").click()
        await expect(prov.get_by_role("heading", name="rig-01", level=1)).to_be_visible()
        await assert_fits(prov, "provider device page")
        await prov.goto("/provider/earnings")
        await expect(prov.get_by_test_id("earnings-page")).to_be_visible()
        await prov.wait_for_load_state("networkidle")
        await screenshot(prov, "provider-earnings")
        await axe_check(prov, "provider earnings")
    finally:
        if hosts is not None:
            await hosts.stop_beating()
            await hosts.client.aclose()
        for ctx in contexts:
            await ctx.close()
        for agent in pool.agents.values():
            if agent.poll() is None:
                agent.stop()
        pool.cleanup()
