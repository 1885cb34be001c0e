"""Solana wallet sign-in and linking (the stateful side of SIWS).

``issue_nonce`` stores a nonce in the cache for ``wallet_nonce_ttl_s`` (≤ 5 min) bound to
the address and times of the message it returns. ``verify_signed_message`` checks every
field and the Ed25519 signature, and only then consumes the nonce with an atomic
``cache.pop``: of many concurrent requests carrying one signed message, exactly one wins.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta

import orjson
from solders.pubkey import Pubkey
from solders.signature import Signature
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.accounts import service as accounts
from tesai.accounts.models import User
from tesai.auth.errors import InvalidWalletAddress, WalletAlreadyLinked, WalletSignInFailed
from tesai.auth.models import UserWallet
from tesai.auth.siws import STATEMENT, VERSION, SiwsMessage, check_message, parse_message
from tesai.kit.cache import Cache
from tesai.kit.time import utcnow
from tesai.settings import Settings

MAX_NONCE_TTL_S = 300


def _nonce_key(nonce: str) -> str:
    return f"auth:siws:{nonce}"


def canonical_address(address: str) -> str:
    """The base58 form of a Solana public key. Raises ``InvalidWalletAddress``."""
    try:
        return str(Pubkey.from_string(address))
    except ValueError as exc:
        raise InvalidWalletAddress("Not a Solana address") from exc


async def issue_nonce(cache: Cache, settings: Settings, address: str) -> SiwsMessage:
    """A fresh nonce and the message the wallet should sign."""
    address = canonical_address(address)
    now = utcnow().replace(microsecond=0)
    ttl = min(settings.wallet_nonce_ttl_s, MAX_NONCE_TTL_S)
    message = SiwsMessage(
        domain=settings.siws_domain,
        address=address,
        statement=STATEMENT,
        uri=settings.public_url,
        version=VERSION,
        chain_id=settings.siws_chain_id,
        nonce=secrets.token_hex(16),
        issued_at=now,
        expiration_time=now + timedelta(seconds=ttl),
    )
    await cache.set(
        _nonce_key(message.nonce),
        orjson.dumps({"address": address, "issued": now.timestamp(), "ttl": ttl}),
        ttl_s=ttl,
    )
    return message


async def verify_signed_message(cache: Cache, settings: Settings, text: str, signature: str) -> str:
    """The wallet address that signed ``text``; the nonce is used up.

    Raises ``WalletSignInFailed`` (401) for any defect: malformed message, wrong
    domain/URI/chain/version, expired, bad signature, unknown or already used nonce.
    """
    message = parse_message(text)
    if message is None:
        raise WalletSignInFailed("Not a valid sign-in message")
    reason = check_message(
        message,
        domain=settings.siws_domain,
        uri=settings.public_url,
        chain_id=settings.siws_chain_id,
        now=utcnow(),
    )
    if reason is not None:
        raise WalletSignInFailed(f"Sign-in message rejected: {reason}")
    try:
        pubkey = Pubkey.from_string(message.address)
        valid = Signature.from_string(signature).verify(pubkey, text.encode())
    except ValueError:
        valid = False
    if not valid:
        raise WalletSignInFailed("Signature does not match the message and address")
    key = _nonce_key(message.nonce)
    stored = await cache.get(key)
    if stored is None:
        raise WalletSignInFailed("Nonce unknown, expired or already used")
    data = orjson.loads(stored)
    issued = datetime.fromtimestamp(data["issued"], tz=UTC)
    if (
        data["address"] != message.address
        or issued != message.issued_at
        or message.expiration_time != issued + timedelta(seconds=data["ttl"])
    ):
        # Not consumed: a message for another address must not burn this nonce.
        raise WalletSignInFailed("Message does not match the issued nonce")
    # Last, and atomically: only one of many concurrent requests can take the nonce.
    if await cache.pop(key) is None:
        raise WalletSignInFailed("Nonce unknown, expired or already used")
    return message.address


async def sign_in_wallet(session: AsyncSession, address: str) -> tuple[User, bool]:
    """The user owning ``address``, created (customer) on first sign-in. Returns
    (user, created)."""
    existing = await session.scalar(
        select(User)
        .join(UserWallet, UserWallet.user_id == User.id)
        .where(UserWallet.address == address)
    )
    if existing is not None:
        return existing, False
    try:
        async with session.begin_nested():
            user = await accounts.create_user(session, email=None, roles=("customer",))
            session.add(UserWallet(user_id=user.id, address=address))
            await session.flush()
    except IntegrityError:
        # A concurrent first sign-in of the same wallet won; use its user.
        winner = await session.scalar(
            select(User)
            .join(UserWallet, UserWallet.user_id == User.id)
            .where(UserWallet.address == address)
        )
        if winner is None:
            raise
        return winner, False
    return user, True


async def link_wallet(session: AsyncSession, user_id: uuid.UUID, address: str) -> UserWallet:
    """Attach ``address`` to the user (idempotent). Raises ``WalletAlreadyLinked`` when
    another account holds it."""
    existing = await session.scalar(select(UserWallet).where(UserWallet.address == address))
    if existing is not None:
        if existing.user_id != user_id:
            raise WalletAlreadyLinked("This wallet belongs to another account")
        return existing
    wallet = UserWallet(user_id=user_id, address=address)
    try:
        async with session.begin_nested():
            session.add(wallet)
            await session.flush()
    except IntegrityError as exc:
        raise WalletAlreadyLinked("This wallet belongs to another account") from exc
    return wallet


async def list_wallets(session: AsyncSession, user_id: uuid.UUID) -> list[UserWallet]:
    rows = await session.scalars(
        select(UserWallet).where(UserWallet.user_id == user_id).order_by(UserWallet.created_at)
    )
    return list(rows.all())
