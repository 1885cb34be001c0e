"""Wallet sign-in and "Pay with wallet" in a real Chromium, through the wallet adapter.

The test wallet registers itself the way real wallets do (the Wallet Standard's
``wallet-standard:register-wallet`` / ``wallet-standard:app-ready`` events) and signs with a
known key. Its ``signAndSendTransaction`` hands the console's transaction to this test, which
checks it (one SPL Token TransferChecked of the asked amount to the treasury account, the
deposit's reference as a read-only non-signer key), signs it and executes it on LiteSVM. The
deposit scan then reads that chain and credits the deposit the page is polling.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, Route, expect
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from spl.token.constants import TOKEN_PROGRAM_ID
from sqlalchemy import select

from tesai.payments import deposits
from tesai.payments.models import DepositIntent
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.fixtures.processes import ServerProcess
from tests.payments.conftest import Chain, chain

__all__ = ["chain"]  # the LiteSVM fixture, used here

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RPC = "http://solana-rpc.test"
"""The public RPC the console is told about; answered by the test (``page.route``)."""

STANDARD_WALLET_JS = """
({ address, publicKey }) => {
  const b64 = (bytes) => btoa(String.fromCharCode(...bytes));
  const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const chains = ["solana:mainnet", "solana:devnet", "solana:testnet", "solana:localnet"];
  const account = {
    address,
    publicKey: new Uint8Array(publicKey),
    chains,
    features: ["solana:signAndSendTransaction", "solana:signMessage"],
    label: "Test",
  };
  const listeners = [];
  const wallet = {
    version: "1.0.0",
    name: "Test Wallet",
    icon: "data:image/svg+xml;base64," + btoa('<svg xmlns="http://www.w3.org/2000/svg"/>'),
    chains,
    accounts: [],
    features: {
      "standard:connect": {
        version: "1.0.0",
        connect: async () => {
          wallet.accounts = [account];
          listeners.forEach((l) => l({ accounts: wallet.accounts }));
          return { accounts: wallet.accounts };
        },
      },
      "standard:events": {
        version: "1.0.0",
        on: (event, listener) => {
          if (event === "change") listeners.push(listener);
          return () => {};
        },
      },
      "solana:signMessage": {
        version: "1.0.0",
        signMessage: async (...inputs) =>
          Promise.all(inputs.map(async ({ message }) => ({
            signedMessage: message,
            signature: unb64(await window.testWalletSign(b64(message))),
          }))),
      },
      "solana:signAndSendTransaction": {
        version: "1.0.0",
        supportedTransactionVersions: ["legacy", 0],
        signAndSendTransaction: async (...inputs) =>
          Promise.all(inputs.map(async ({ transaction, chain }) => ({
            signature: unb64(await window.testWalletSend(b64(transaction), chain)),
          }))),
      },
    },
  };
  const register = ({ register }) => register(wallet);
  window.dispatchEvent(new CustomEvent("wallet-standard:register-wallet", { detail: register }));
  window.addEventListener("wallet-standard:app-ready", ({ detail }) => register(detail));
}
"""


@pytest.fixture
def server(
    settings: Settings, runtime: Runtime, tmp_path: Path, console_built: Path, chain: Chain
) -> Iterator[ServerProcess]:
    srv = ServerProcess(settings, tmp_path / "server.log")
    srv.env["TESAI_PUBLIC_URL"] = srv.url
    srv.env["TESAI_SIWS_DOMAIN"] = srv.url.removeprefix("http://")
    srv.env["TESAI_TREASURY_TOKEN_ACCOUNT"] = str(chain.treasury_ata)
    srv.env["TESAI_USDC_MINT"] = str(chain.usdc)
    srv.env["TESAI_SOLANA_PUBLIC_RPC_URL"] = RPC
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


async def answer_rpc(page: Page, chain: Chain) -> None:
    """The console's JSON-RPC calls (a recent blockhash), answered from LiteSVM."""

    async def handle(route: Route) -> None:
        cors = {
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Headers": "*",
            "Access-Control-Allow-Methods": "POST, OPTIONS",
        }
        if route.request.method == "OPTIONS":
            await route.fulfill(status=204, headers=cors)
            return
        call = json.loads(route.request.post_data or "{}")
        assert call["method"] == "getLatestBlockhash", call
        value = {
            "blockhash": str(chain.client.svm.latest_blockhash()),
            "lastValidBlockHeight": 1000,
        }
        body = {
            "jsonrpc": "2.0",
            "id": call["id"],
            "result": {"context": {"slot": 1}, "value": value},
        }
        await route.fulfill(
            status=200, headers=cors, content_type="application/json", body=json.dumps(body)
        )

    await page.route(f"{RPC}/**", handle)


async def test_wallet_sign_in_and_pay_a_deposit(
    page: Page, server: ServerProcess, chain: Chain, runtime: Runtime, settings: Settings
) -> None:
    # The console may call the public RPC: the CSP names it (the browser here bypasses CSP).
    csp = httpx.get(f"{server.url}/").headers["content-security-policy"]
    assert f"connect-src 'self' {RPC}" in csp
    payer, payer_ata = chain.wallet(usdc=100_000_000)
    signed: list[bytes] = []
    sent: list[Transaction] = []

    def sign(message_b64: str) -> str:
        message = base64.b64decode(message_b64)
        signed.append(message)
        return base64.b64encode(bytes(payer.sign_message(message))).decode()

    def send(tx_b64: str, chain_id: str) -> str:
        tx = Transaction.from_bytes(base64.b64decode(tx_b64))
        sent.append(tx)
        tx.sign([payer], tx.message.recent_blockhash)
        result = chain.client.submit(tx)
        if result.error is not None:
            raise RuntimeError(f"the chain refused the transaction: {result.error}")
        return base64.b64encode(bytes(tx.signatures[0])).decode()

    await page.expose_function("testWalletSign", sign)
    await page.expose_function("testWalletSend", send)
    key = {"address": str(payer.pubkey()), "publicKey": list(bytes(payer.pubkey()))}
    await page.add_init_script(f"({STANDARD_WALLET_JS})({json.dumps(key)})")
    await answer_rpc(page, chain)

    # Sign in: the Wallet Standard wallet is found, connected, and signs the SIWS message.
    await page.goto("/login")
    await page.get_by_role("button", name="Sign in with a Solana wallet").click()
    await expect(page).to_have_url(re.compile(r"/app$"))
    assert len(signed) == 1
    assert str(payer.pubkey()) in signed[0].decode()

    # A deposit, paid from the wallet.
    await page.goto("/app/billing")
    await page.get_by_label("Amount (USDC)").fill("12.5")
    await page.get_by_role("button", name="Create a Solana Pay request").click()
    request = page.get_by_test_id("deposit-request")
    await request.get_by_role("button", name="Pay with wallet").click()
    await expect(request.get_by_label("Transaction signature")).to_be_visible()
    assert len(sent) == 1
    signature = str(sent[0].signatures[0])
    await expect(request.get_by_label("Transaction signature")).to_have_text(signature)

    # What the wallet was asked to send: exactly a Solana Pay USDC transfer.
    msg = sent[0].message
    assert msg.account_keys[0] == payer.pubkey()  # fee payer
    assert len(msg.instructions) == 1
    ix = msg.instructions[0]
    assert msg.account_keys[ix.program_id_index] == TOKEN_PROGRAM_ID
    accounts = [msg.account_keys[i] for i in ix.accounts]
    async with runtime.sessionmaker() as s:
        intent = (await s.scalars(select(DepositIntent))).one()
    reference = Pubkey.from_string(intent.reference)
    assert accounts == [payer_ata, chain.usdc, chain.treasury_ata, payer.pubkey(), reference]
    ref_index = ix.accounts[4]
    assert not msg.is_signer(ref_index)
    readonly_unsigned_from = len(msg.account_keys) - msg.header.num_readonly_unsigned_accounts
    assert ref_index >= readonly_unsigned_from  # read-only
    assert ix.data[0] == 12  # TransferChecked
    assert int.from_bytes(ix.data[1:9], "little") == 12_500_000
    assert ix.data[9] == 6

    # It ran on the chain; the deposit scan credits it and the polling page shows it.
    assert await chain.client.token_balance(str(chain.treasury_ata)) == 12_500_000
    scan_settings = settings.model_copy(
        update={
            "solana_rpc_url": chain.url,
            "usdc_mint": str(chain.usdc),
            "treasury_token_account": str(chain.treasury_ata),
        }
    )
    report = await deposits.scan_deposits(runtime.sessionmaker, scan_settings, chain.client)
    assert report.credited == 1
    # The page polls the intent every 3 s and the balance every 5 s: allow a few polls.
    await expect(request.get_by_text("Credited $12.50")).to_be_visible(timeout=15_000)
    await expect(page.get_by_test_id("stat-available")).to_have_text("$12.50", timeout=15_000)
