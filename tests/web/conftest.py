"""Fixtures of the browser tests: a real `tesai server` serving the built console, and
Debian's headless Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from solders.keypair import Keypair

from tesai.console import DIST
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.fixtures.processes import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def console_built() -> Path:
    """The built console; built here when missing (`make test` builds it first)."""
    if not (DIST / "index.html").exists() or not AXE.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("The web console is not built and npm is missing: run `make web`")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=ROOT / "web", check=True)
        subprocess.run([npm, "run", "build"], cwd=ROOT / "web", check=True)
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: `apt-get install chromium` (make test does it)")
    return DIST


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"heartbeat_interval_s": 2.0, "proof_matrix_n_cpu": 128, "proof_iterations": 2}
    )


@pytest.fixture
def server(
    settings: Settings, runtime: Runtime, tmp_path: Path, console_built: Path
) -> Iterator[ServerProcess]:
    # A GPU proof sized for the CPU (tests/web/hosts.py declares GPUs it proves on the CPU), and
    # room for a proof answered from a CPU shared with the browser, the server and Ray.
    proof = {
        "TESAI_PROOF_MATRIX_N_GPU": "128",
        "TESAI_PROOF_MAX_ROUNDS": "2",
        "TESAI_PROOF_LATENCY_ALLOWANCE_S": "5",
    }
    srv = ServerProcess(
        settings, tmp_path / "server.log", TESAI_PROVISIONING_DEADLINE_S="240", **proof
    )
    srv.env["TESAI_PUBLIC_URL"] = srv.url
    srv.env["TESAI_SIWS_DOMAIN"] = srv.url.removeprefix("http://")
    # Deposits need a treasury to name in Solana Pay requests (no chain is contacted).
    srv.env["TESAI_TREASURY_TOKEN_ACCOUNT"] = str(Keypair().pubkey())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def context(browser: Browser, server: ServerProcess) -> AsyncIterator[BrowserContext]:
    # bypass_csp: only so the axe script can be injected; the app itself runs under the CSP
    # (tests/web/test_console_serving.py checks the header).
    ctx = await browser.new_context(
        base_url=server.url, viewport={"width": 1280, "height": 900}, bypass_csp=True
    )
    ctx.set_default_timeout(20_000)
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest.fixture
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    p = await context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    assert not errors, f"uncaught errors in the page: {errors}"


async def axe_check(page: Page, name: str) -> None:
    """No axe violation of impact serious or critical on the current page."""
    if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = await page.evaluate(
        """async () => await window.axe.run(document, {
            runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
        })"""
    )
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} — "
        + "; ".join(n["target"][0] if n["target"] else "?" for n in v["nodes"][:3])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"axe on {name}:\n" + "\n".join(bad)


async def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


OVERFLOW_JS = """
() => {
  const viewport = document.documentElement.clientWidth;
  // Overflow inside a box that scrolls or clips is reachable or meant (tables, code, sr-only).
  const contained = (el) => {
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== "visible") return true;
    }
    return false;
  };
  const name = (el) => {
    const text = (el.innerText || el.textContent || el.getAttribute("aria-label") || "")
      .trim()
      .slice(0, 60);
    const cls = typeof el.className === "string" ? el.className.split(" ").slice(0, 4) : [];
    return `<${[el.tagName.toLowerCase(), ...cls].join(".")}> ${JSON.stringify(text)}`;
  };
  const bad = [];
  // An absolutely placed element escapes a scroll box that is not positioned and widens the
  // whole page while no box looks too wide: the page's own width says so.
  const page = document.documentElement.scrollWidth;
  if (page > viewport + 1) bad.push(`the page: ${page} px wide in a ${viewport} px viewport`);
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest("svg") || contained(el)) continue;
    const style = getComputedStyle(el);
    if (style.display === "inline" || style.display === "none") continue;
    // Positioned on purpose (menus, tooltips) or not drawn: not laid out in its parent's box.
    if (style.visibility === "hidden" || ["absolute", "fixed"].includes(style.position)) continue;
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    const spills = style.overflowX === "visible" && el.scrollWidth > el.clientWidth + 1;
    const parent = el.parentElement && el.parentElement.getBoundingClientRect();
    const outside =
      box.right > viewport + 1 || (parent && parent.width > 0 && box.right > parent.right + 1);
    const at = `${Math.round(box.left)}–${Math.round(box.right)} px`;
    if (spills || outside) bad.push(`${name(el)}: ${at}`);
  }
  // A chart's text (axis ticks, labels) is drawn in an SVG that clips at its edges: text that
  // reaches past the drawing is cut off, whatever the boxes around it say.
  for (const text of document.body.querySelectorAll("svg text")) {
    const box = text.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    let svg = text.ownerSVGElement;
    while (svg && svg.ownerSVGElement) svg = svg.ownerSVGElement;
    const frame = svg.getBoundingClientRect();
    const cut =
      box.left < frame.left - 1 || box.right > frame.right + 1 ||
      box.top < frame.top - 1 || box.bottom > frame.bottom + 1;
    const at = `${Math.round(box.left)}–${Math.round(box.right)} px in a chart drawn at ` +
      `${Math.round(frame.left)}–${Math.round(frame.right)} px`;
    if (cut || box.right > viewport + 1) bad.push(`${name(text)}: ${at}`);
  }
  return bad.slice(0, 12);
}
"""


async def assert_fits(page: Page, name: str) -> None:
    """No element's text or box runs past its parent's box or the viewport on the current
    page, and no chart's text past its drawing (Playwright's layout, not a screenshot by
    eye); overflow inside a box that scrolls or clips is fine."""
    await page.wait_for_load_state("networkidle")
    bad: list[str] = await page.evaluate(OVERFLOW_JS)
    assert not bad, f"text or boxes overflow on {name}:\n" + "\n".join(bad)
