"""The money API: idempotency keys, deposits, balance and ledger statements, grants, payouts."""

from __future__ import annotations

import httpx
import pytest
from solders.keypair import Keypair

from tesai.payments.tasks import scan_deposits_task
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.conftest import MakeUser
from tests.payments.conftest import Chain


@pytest.fixture
async def api(
    client: httpx.AsyncClient, money_settings: Settings, runtime: Runtime
) -> httpx.AsyncClient:
    # The client's app reads settings from the runtime; give it the chain-enabled ones.
    runtime.settings = money_settings
    return client


async def test_deposit_requires_key_and_replays(
    api: httpx.AsyncClient, make_user: MakeUser, chain: Chain
) -> None:
    _, headers = await make_user()
    r = await api.post(
        "/api/v1/customer/deposits", json={"amount_micro": 5_000_000}, headers=headers
    )
    assert r.status_code == 400
    assert r.json()["code"] == "idempotency_key_required"
    assert r.headers["content-type"].startswith("application/problem+json")

    keyed = {**headers, "Idempotency-Key": "dep-1"}
    first = await api.post(
        "/api/v1/customer/deposits", json={"amount_micro": 5_000_000}, headers=keyed
    )
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["recipient"] == str(chain.treasury_ata)
    assert body["mint"] == str(chain.usdc)
    assert body["url"] == body["qr"]
    assert f"reference={body['reference']}" in body["url"]
    again = await api.post(
        "/api/v1/customer/deposits", json={"amount_micro": 5_000_000}, headers=keyed
    )
    assert again.status_code == 201
    assert again.json()["id"] == body["id"]
    other = await api.post(
        "/api/v1/customer/deposits", json={"amount_micro": 6_000_000}, headers=keyed
    )
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_key_reused"
    bad = await api.post("/api/v1/customer/deposits", json={"amount_micro": -1}, headers=keyed)
    assert bad.status_code == 422


async def test_grant_then_statements(api: httpx.AsyncClient, make_user: MakeUser) -> None:
    customer, c_headers = await make_user()
    _, admin_headers = await make_user(roles=("admin",))
    grant = {"user_id": str(customer.id), "amount_micro": 3_000_000, "reason": "welcome"}
    r = await api.post(
        "/api/v1/internal/credits", json=grant, headers={**admin_headers, "Idempotency-Key": "g1"}
    )
    assert r.status_code == 201, r.text
    r2 = await api.post(
        "/api/v1/internal/credits", json=grant, headers={**admin_headers, "Idempotency-Key": "g1"}
    )
    assert r2.json()["transaction_id"] == r.json()["transaction_id"]
    denied = await api.post(
        "/api/v1/internal/credits", json=grant, headers={**c_headers, "Idempotency-Key": "g2"}
    )
    assert denied.status_code == 403
    missing = {**grant, "user_id": "00000000-0000-0000-0000-000000000000"}
    r404 = await api.post(
        "/api/v1/internal/credits", json=missing, headers={**admin_headers, "Idempotency-Key": "g3"}
    )
    assert r404.status_code == 404

    balance = (await api.get("/api/v1/customer/balance", headers=c_headers)).json()
    assert balance == {"available_micro": 3_000_000, "held_micro": 0, "holds": {}}
    lines = (await api.get("/api/v1/customer/ledger", headers=c_headers)).json()
    assert [(x["kind"], x["amount_micro"]) for x in lines] == [("grant", 3_000_000)]
    invoices = (await api.get("/api/v1/customer/invoices", headers=c_headers)).json()
    assert [(m["granted_micro"], m["charged_micro"]) for m in invoices] == [(3_000_000, 0)]
    csv = await api.get("/api/v1/customer/ledger?format=csv", headers=c_headers)
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[1].split(",")[3:7] == [
        "grant",
        "customer_available",
        "",
        "3000000",
    ]


async def test_payout_needs_wallet_and_minimum(api: httpx.AsyncClient, make_user: MakeUser) -> None:
    _, headers = await make_user(roles=("provider",))
    keyed = {**headers, "Idempotency-Key": "p1"}
    r = await api.post("/api/v1/provider/payouts", json={"amount_micro": 10}, headers=keyed)
    assert r.status_code == 400
    assert r.json()["code"] == "below_minimum_payout"
    r = await api.post("/api/v1/provider/payouts", json={"amount_micro": 2_000_000}, headers=keyed)
    assert r.status_code == 409
    assert r.json()["code"] == "payout_wallet_missing"

    wallet = Keypair()
    ch = await api.post(
        "/api/v1/provider/payout-wallet/challenge",
        json={"address": str(wallet.pubkey())},
        headers=headers,
    )
    challenge = ch.json()
    forged = Keypair().sign_message(challenge["message"].encode())
    proof = {"address": str(wallet.pubkey()), "nonce": challenge["nonce"], "signature": str(forged)}
    bad = await api.put("/api/v1/provider/payout-wallet", json=proof, headers=headers)
    assert bad.status_code == 400
    assert bad.json()["code"] == "wallet_proof_invalid"
    ch = await api.post(
        "/api/v1/provider/payout-wallet/challenge",
        json={"address": str(wallet.pubkey())},
        headers=headers,
    )
    challenge = ch.json()
    proof = {
        "address": str(wallet.pubkey()),
        "nonce": challenge["nonce"],
        "signature": str(wallet.sign_message(challenge["message"].encode())),
    }
    ok = await api.put("/api/v1/provider/payout-wallet", json=proof, headers=headers)
    assert ok.status_code == 200, ok.text
    replay = await api.put("/api/v1/provider/payout-wallet", json=proof, headers=headers)
    assert replay.status_code == 400  # the nonce works once
    r = await api.post("/api/v1/provider/payouts", json={"amount_micro": 2_000_000}, headers=keyed)
    assert r.status_code == 402
    assert r.json()["code"] == "insufficient_funds"
    earnings = (await api.get("/api/v1/provider/earnings", headers=headers)).json()
    assert earnings == {"earnings_micro": 0, "pending_payout_micro": 0, "paid_out_micro": 0}


async def test_deposit_paid_from_a_wallet_shows_in_balance(
    api: httpx.AsyncClient, make_user: MakeUser, chain: Chain, runtime: Runtime
) -> None:
    _, headers = await make_user()
    r = await api.post(
        "/api/v1/customer/deposits",
        json={"amount_micro": 2_500_000},
        headers={**headers, "Idempotency-Key": "d"},
    )
    deposit = r.json()
    payer, payer_ata = chain.wallet(usdc=10_000_000)
    signature = chain.pay(
        payer, payer_ata, deposit["recipient"], chain.usdc, 2_500_000, deposit["reference"]
    )
    for _ in range(2):  # the periodic task, as the runner calls it
        await scan_deposits_task(runtime.task_context)
    detail = (await api.get(f"/api/v1/customer/deposits/{deposit['id']}", headers=headers)).json()
    assert detail["status"] == "paid"
    assert [(x["signature"], x["credited_micro"]) for x in detail["receipts"]] == [
        (signature, 2_500_000)
    ]
    balance = (await api.get("/api/v1/customer/balance", headers=headers)).json()
    assert balance["available_micro"] == 2_500_000
    other = await make_user()
    hidden = await api.get(f"/api/v1/customer/deposits/{deposit['id']}", headers=other[1])
    assert hidden.status_code == 404
