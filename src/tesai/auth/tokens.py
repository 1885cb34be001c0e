"""Access tokens: EdDSA (Ed25519) JWTs, and the signing key behind them.

An access token carries ``iss``, ``aud``, ``sub`` (user id), ``sid`` (refresh family),
``iat``, ``exp`` and ``jti``; its JOSE header says ``typ: at+jwt`` (RFC 9068). Only that
header value is accepted, so an ID token or any other JWT signed by the same key cannot be
replayed as an access token. Verification pins the algorithm to EdDSA: ``alg: none``,
HS256 keyed with the public key (algorithm confusion), RS*/ES* are all rejected.

The private key comes from ``settings.jwt_private_key_file`` or is generated once as
``<home>/jwt_ed25519.pem`` (mode 0600) and reused across restarts and by every worker.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tesai.errors import TokenInvalid
from tesai.kit.time import utcnow
from tesai.settings import Settings

ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 - a JOSE type, not a secret
ALGORITHM = "EdDSA"
DERIVED_SESSION_MAX_S = 3600
"""The longest a browser credential derived from a login session lives (the Ray dashboard
cookie); logout markers are kept at least this long so that they end it too."""


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    public: Ed25519PublicKey


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    family_id: uuid.UUID | None
    expires_at: int


def _write_new_key(path: Path) -> None:
    """Create the key file atomically: write a private temp file, then hard-link it into
    place, so two processes starting at once end up sharing one key."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def load_signing_key(settings: Settings) -> SigningKey:
    """Read the configured key, or generate the per-installation one under ``home``."""
    path = settings.jwt_private_key_file or settings.home / "jwt_ed25519.pem"
    if settings.jwt_private_key_file is None and not path.exists():
        _write_new_key(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise RuntimeError(f"{path} is not an Ed25519 private key")
    return SigningKey(key, key.public_key())


def runtime_signing_key(state: dict[str, Any], settings: Settings) -> SigningKey:
    """The process's signing key, loaded on first use and kept in ``runtime.state``."""
    key = state.get("auth.signing_key")
    if key is None:
        key = load_signing_key(settings)
        state["auth.signing_key"] = key
    assert isinstance(key, SigningKey)
    return key


def issue_access_token(
    key: SigningKey,
    settings: Settings,
    user_id: uuid.UUID,
    family_id: uuid.UUID | None = None,
    *,
    ttl_s: int | None = None,
) -> str:
    """A signed access token for ``user_id`` valid ``access_token_ttl_s`` (≤ 15 min)."""
    now = int(utcnow().timestamp())
    ttl = min(ttl_s if ttl_s is not None else settings.access_token_ttl_s, 900)
    claims: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(user_id),
        "iat": now,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(12),
    }
    if family_id is not None:
        claims["sid"] = str(family_id)
    return jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"typ": ACCESS_TOKEN_TYP})


def verify_access_token(key: SigningKey, settings: Settings, token: str) -> AccessClaims:
    """Check signature, algorithm, ``typ``, issuer, audience and expiry.

    Raises ``TokenInvalid`` with a reason a client developer can act on.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalid("Malformed access token") from exc
    if header.get("alg") != ALGORITHM:
        raise TokenInvalid("Access token algorithm not accepted")
    if header.get("typ") != ACCESS_TOKEN_TYP:
        raise TokenInvalid("Not an access token (typ must be at+jwt)")
    try:
        claims = jwt.decode(
            token,
            key.public,
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenInvalid("Access token expired") from exc
    except jwt.InvalidAudienceError as exc:
        raise TokenInvalid("Access token audience not accepted") from exc
    except jwt.InvalidIssuerError as exc:
        raise TokenInvalid("Access token issuer not accepted") from exc
    except jwt.PyJWTError as exc:
        raise TokenInvalid("Invalid access token") from exc
    try:
        user_id = uuid.UUID(str(claims["sub"]))
        family_id = uuid.UUID(str(claims["sid"])) if "sid" in claims else None
    except ValueError as exc:
        raise TokenInvalid("Invalid access token subject") from exc
    return AccessClaims(user_id, family_id, int(claims["exp"]))


def issue_purpose_token(
    key: SigningKey, settings: Settings, typ: str, user_id: uuid.UUID, expires_at: int, **extra: str
) -> str:
    """A signed single-purpose JWT: its JOSE ``typ`` names the purpose, so it can neither be
    replayed as an access token nor stand in for another purpose's token."""
    if typ == ACCESS_TOKEN_TYP:
        raise ValueError("use issue_access_token for access tokens")
    claims: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(user_id),
        "iat": int(utcnow().timestamp()),
        "exp": expires_at,
        "jti": secrets.token_urlsafe(12),
        **extra,
    }
    return jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"typ": typ})


def verify_purpose_token(
    key: SigningKey, settings: Settings, typ: str, token: str
) -> dict[str, Any]:
    """The claims of a token from ``issue_purpose_token`` for ``typ``; raises ``TokenInvalid``
    for a malformed, forged, expired or other-purpose token."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalid("Malformed token") from exc
    if header.get("alg") != ALGORITHM or header.get("typ") != typ:
        raise TokenInvalid("Token not accepted here")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.public,
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenInvalid("Token expired") from exc
    except jwt.PyJWTError as exc:
        raise TokenInvalid("Invalid token") from exc
    return claims
