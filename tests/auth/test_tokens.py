"""Access tokens: only our EdDSA at+jwt with the right iss/aud, unexpired, is accepted."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tesai.auth.tokens import load_signing_key, runtime_signing_key
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.fixtures.auth import MakeUser


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(runtime: Runtime, user_id: str, **override: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": runtime.settings.jwt_issuer,
        "aud": runtime.settings.jwt_audience,
        "sub": user_id,
        "iat": now,
        "exp": now + 300,
    }
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not None}


def sign(runtime: Runtime, claims: dict[str, Any], typ: str = "at+jwt") -> str:
    key = runtime_signing_key(runtime.state, runtime.settings)
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"typ": typ})


async def status_of(client: httpx.AsyncClient, token: str) -> tuple[int, str]:
    r = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    return r.status_code, r.json().get("detail", "")


async def test_well_formed_token_is_accepted(
    client: httpx.AsyncClient, runtime: Runtime, make_user: MakeUser
) -> None:
    user, _ = await make_user()
    assert (await status_of(client, sign(runtime, claims_for(runtime, str(user.id)))))[0] == 200


@pytest.mark.parametrize(
    ("override", "typ", "reason"),
    [
        ({"exp": int(time.time()) - 5}, "at+jwt", "expired"),
        ({"aud": "someone-else"}, "at+jwt", "audience"),
        ({"iss": "evil"}, "at+jwt", "issuer"),
        ({}, "JWT", "typ"),
        ({}, "id_token+jwt", "typ"),
        ({"exp": None}, "at+jwt", "Invalid"),
    ],
)
async def test_wrong_claims_or_typ_rejected(
    client: httpx.AsyncClient,
    runtime: Runtime,
    make_user: MakeUser,
    override: dict[str, Any],
    typ: str,
    reason: str,
) -> None:
    user, _ = await make_user()
    token = sign(runtime, claims_for(runtime, str(user.id), **override), typ=typ)
    status, detail = await status_of(client, token)
    assert status == 401
    assert reason in detail


async def test_alg_none_rejected(
    client: httpx.AsyncClient, runtime: Runtime, make_user: MakeUser
) -> None:
    user, _ = await make_user()
    header = b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    body = b64(json.dumps(claims_for(runtime, str(user.id))).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}"):
        assert (await status_of(client, token))[0] == 401


async def test_hs256_signed_with_public_key_rejected(
    client: httpx.AsyncClient, runtime: Runtime, make_user: MakeUser
) -> None:
    """Algorithm confusion: an HMAC keyed with the (public) verification key."""
    user, _ = await make_user()
    public = runtime_signing_key(runtime.state, runtime.settings).public
    for public_bytes in (
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
    ):
        header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt"}).encode())
        body = b64(json.dumps(claims_for(runtime, str(user.id))).encode())
        mac = hmac.new(public_bytes, f"{header}.{body}".encode(), hashlib.sha256).digest()
        assert (await status_of(client, f"{header}.{body}.{b64(mac)}"))[0] == 401


async def test_rs_es_and_foreign_ed25519_rejected(
    client: httpx.AsyncClient, runtime: Runtime, make_user: MakeUser
) -> None:
    user, _ = await make_user()
    claims = claims_for(runtime, str(user.id))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    es_key = ec.generate_private_key(ec.SECP256R1())
    tokens = [
        jwt.encode(claims, rsa_key, algorithm="RS256", headers={"typ": "at+jwt"}),
        jwt.encode(claims, es_key, algorithm="ES256", headers={"typ": "at+jwt"}),
        jwt.encode(
            claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"typ": "at+jwt"}
        ),
    ]
    for token in tokens:
        assert (await status_of(client, token))[0] == 401


async def test_tampered_payload_or_signature_rejected(
    client: httpx.AsyncClient, runtime: Runtime, make_user: MakeUser
) -> None:
    user, _ = await make_user()
    other, _ = await make_user()
    token = sign(runtime, claims_for(runtime, str(user.id)))
    header, body, sig = token.split(".")
    forged_body = b64(json.dumps(claims_for(runtime, str(other.id))).encode())
    assert (await status_of(client, f"{header}.{forged_body}.{sig}"))[0] == 401
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert (await status_of(client, f"{header}.{body}.{flipped}"))[0] == 401


async def test_access_token_expires(
    client: httpx.AsyncClient, settings: Settings, runtime: Runtime, make_user: MakeUser
) -> None:
    """A token issued with the configured TTL stops working after it."""
    # ``exp`` is whole seconds from a truncated ``iat``: a 3 s TTL lives more than 2 s, so the
    # first call is inside it even on a loaded machine (1 s could be over in milliseconds).
    settings.access_token_ttl_s = 3
    try:
        _, headers = await make_user()
    finally:
        settings.access_token_ttl_s = 900
    assert (await client.get("/api/v1/auth/me", headers=headers)).status_code == 200
    await asyncio.sleep(3.2)
    r = await client.get("/api/v1/auth/me", headers=headers)
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]


def test_signing_key_generated_once_with_0600(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    first = load_signing_key(settings)
    path = tmp_path / "jwt_ed25519.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_signing_key(settings)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert first.public.public_bytes(*raw) == again.public.public_bytes(*raw)


def test_configured_key_file_is_used(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    loaded = load_signing_key(Settings(home=tmp_path / "home", jwt_private_key_file=path))
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert loaded.public.public_bytes(*raw) == key.public_key().public_bytes(*raw)
    assert not (tmp_path / "home" / "jwt_ed25519.pem").exists()
