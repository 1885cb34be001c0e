"""Password hashing with argon2id (RFC 9106 parameters from argon2-cffi)."""

from __future__ import annotations

import asyncio
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id, t=3, m=64 MiB, p=4


@cache
def _dummy_hash() -> str:
    """Verified against when the email is unknown, so both paths cost the same time."""
    return _hasher.hash("not a real password")


async def hash_password(password: str) -> str:
    """argon2id hash; runs in a thread because it deliberately costs ~50 ms of CPU."""
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; a missing hash still spends the verification time."""

    def check() -> bool:
        try:
            return bool(_hasher.verify(password_hash or _dummy_hash(), password)) and (
                password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)
