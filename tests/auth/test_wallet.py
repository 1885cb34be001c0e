"""Sign-In-With-Solana: nonce, signed message, single use, expiry, linking."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from solders.keypair import Keypair
from sqlalchemy import func, select

from tesai.accounts.models import User
from tesai.audit.models import AuditEvent
from tesai.auth.models import UserWallet
from tesai.auth.siws import format_time, parse_message
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.fixtures.auth import MakeUser


async def signed_message(client: httpx.AsyncClient, wallet: Keypair) -> dict[str, str]:
    r = await client.post("/api/v1/auth/wallet/nonce", json={"address": str(wallet.pubkey())})
    assert r.status_code == 200, r.text
    message: str = r.json()["message"]
    return {"message": message, "signature": str(wallet.sign_message(message.encode()))}


async def test_message_names_every_field(client: httpx.AsyncClient, settings: Settings) -> None:
    wallet = Keypair()
    r = await client.post("/api/v1/auth/wallet/nonce", json={"address": str(wallet.pubkey())})
    body = r.json()
    parsed = parse_message(body["message"])
    assert parsed is not None
    assert parsed.domain == settings.siws_domain
    assert parsed.address == str(wallet.pubkey())
    assert parsed.uri == settings.public_url
    assert parsed.version == "1"
    assert parsed.chain_id == settings.siws_chain_id
    assert parsed.nonce == body["nonce"]
    assert timedelta(0) < parsed.expiration_time - parsed.issued_at <= timedelta(minutes=5)


async def test_sign_in_creates_customer_once(client: httpx.AsyncClient, runtime: Runtime) -> None:
    wallet = Keypair()
    first = await client.post(
        "/api/v1/auth/wallet/verify", json=await signed_message(client, wallet)
    )
    assert first.status_code == 200, first.text
    me = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {first.json()['access_token']}"}
    )
    assert me.json()["roles"] == ["customer"]
    assert me.json()["email"] is None
    second = await client.post(
        "/api/v1/auth/wallet/verify", json=await signed_message(client, wallet)
    )
    me2 = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {second.json()['access_token']}"}
    )
    assert me2.json()["id"] == me.json()["id"]
    async with runtime.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(User)) == 1


async def test_nonce_works_once(client: httpx.AsyncClient) -> None:
    signed = await signed_message(client, Keypair())
    assert (await client.post("/api/v1/auth/wallet/verify", json=signed)).status_code == 200
    again = await client.post("/api/v1/auth/wallet/verify", json=signed)
    assert again.status_code == 401
    assert again.json()["code"] == "wallet_sign_in_failed"


async def test_100_parallel_verifies_exactly_one_succeeds(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    signed = await signed_message(client, Keypair())
    results = await asyncio.gather(
        *(client.post("/api/v1/auth/wallet/verify", json=signed) for _ in range(100))
    )
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) == 1
    assert codes.count(401) == 99
    async with runtime.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(UserWallet)) == 1
        failed = await s.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "auth.login_failed")
        )
    assert failed == 99


async def test_expired_nonce_rejected(client: httpx.AsyncClient, settings: Settings) -> None:
    settings.wallet_nonce_ttl_s = 1
    try:
        signed = await signed_message(client, Keypair())
    finally:
        settings.wallet_nonce_ttl_s = 300
    await asyncio.sleep(2.1)
    r = await client.post("/api/v1/auth/wallet/verify", json=signed)
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]


async def test_tampered_messages_and_signatures_rejected(client: httpx.AsyncClient) -> None:
    wallet, thief = Keypair(), Keypair()
    signed = await signed_message(client, wallet)
    message = signed["message"]
    parsed = parse_message(message)
    assert parsed is not None
    variants = [
        # Wrong signer.
        {"message": message, "signature": str(thief.sign_message(message.encode()))},
        # Signature not base58 / garbage.
        {"message": message, "signature": "0OIl"},
        # Changed domain / URI / chain / expiry, re-signed by the wallet itself.
        *(
            {"message": m, "signature": str(wallet.sign_message(m.encode()))}
            for m in (
                message.replace(parsed.domain, "evil.example", 1),
                message.replace(f"URI: {parsed.uri}", "URI: https://evil.example"),
                message.replace("Chain ID: mainnet", "Chain ID: devnet"),
                message.replace(
                    format_time(parsed.expiration_time),
                    format_time(parsed.expiration_time + timedelta(hours=1)),
                ),
                message + "\nResources: x",
            )
        ),
        # Another address claiming this nonce.
        {
            "message": message.replace(str(wallet.pubkey()), str(thief.pubkey())),
            "signature": str(
                thief.sign_message(
                    message.replace(str(wallet.pubkey()), str(thief.pubkey())).encode()
                )
            ),
        },
    ]
    for body in variants:
        r = await client.post("/api/v1/auth/wallet/verify", json=body)
        assert r.status_code == 401, body
    # None of that consumed the nonce: the genuine message still works.
    assert (await client.post("/api/v1/auth/wallet/verify", json=signed)).status_code == 200


async def test_bad_address_is_4xx(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/auth/wallet/nonce", json={"address": "1" * 40})
    assert 400 <= r.status_code < 500
    assert r.headers["content-type"] == "application/problem+json"


async def test_link_wallet_to_account(
    client: httpx.AsyncClient, runtime: Runtime, make_user: MakeUser
) -> None:
    user, headers = await make_user()
    _, other_headers = await make_user()
    wallet = Keypair()
    r = await client.post(
        "/api/v1/auth/wallet/link", json=await signed_message(client, wallet), headers=headers
    )
    assert r.status_code == 201, r.text
    assert r.json()["address"] == str(wallet.pubkey())
    # Signing in with the wallet now reaches the existing account.
    tokens = (
        await client.post("/api/v1/auth/wallet/verify", json=await signed_message(client, wallet))
    ).json()
    me = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert me.json()["id"] == str(user.id)
    # Another account cannot take it.
    r = await client.post(
        "/api/v1/auth/wallet/link",
        json=await signed_message(client, wallet),
        headers=other_headers,
    )
    assert r.status_code == 409
    # Linking needs a session.
    r = await client.post("/api/v1/auth/wallet/link", json=await signed_message(client, wallet))
    assert r.status_code == 401
    listed = await client.get("/api/v1/auth/wallets", headers=headers)
    assert [w["address"] for w in listed.json()] == [str(wallet.pubkey())]
    async with runtime.sessionmaker() as s:
        linked = await s.scalar(select(AuditEvent).where(AuditEvent.action == "auth.wallet_linked"))
    assert linked is not None
    assert linked.actor_user_id == user.id
