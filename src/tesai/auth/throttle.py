"""The sign-in throttle: how often one address, and one account, may try a password.

Token buckets in the cache (Redis in production, shared by every API process; in memory
when embedded), like the general rate limits of ``tesai.middleware``, but far smaller: a
password guess costs argon2 time, a normal request does not. Every try spends a token from
both buckets (or from neither when one is empty), whatever its outcome, so a burst of
parallel guesses is cut off as it starts rather than after its failures are counted.

The account's bucket is keyed by a hash of the normalised email, known or not, so the
answer (429) says nothing about whether the account exists. A throttled account can still
sign in by wallet or OIDC, and by password again after ``Retry-After``.
"""

from __future__ import annotations

import hashlib

import structlog

from tesai.accounts.service import normalize_email
from tesai.auth.errors import LoginThrottled
from tesai.kit.cache import Bucket, Cache
from tesai.settings import Settings

log = structlog.get_logger(__name__)


def login_buckets(settings: Settings, *, ip: str | None, email: str) -> list[Bucket]:
    """The two buckets one password sign-in spends from: its address's and its account's."""
    account = hashlib.sha256(normalize_email(email).encode()).hexdigest()[:32]
    return [
        Bucket(
            f"login:ip:{ip or 'unknown'}", settings.login_rate_per_ip, settings.login_burst_per_ip
        ),
        Bucket(
            f"login:acct:{account}",
            settings.login_rate_per_account,
            settings.login_burst_per_account,
        ),
    ]


async def spend_login_attempt(
    cache: Cache, settings: Settings, *, ip: str | None, email: str
) -> None:
    """Take one try from the address's and the account's buckets.

    Raises ``LoginThrottled`` (429, Retry-After) when either is empty. Does nothing when
    rate limits are off; lets the try through when the cache is unreachable (the hashing
    bound, ``HashGate``, still holds).
    """
    if not settings.rate_limit_enabled:
        return
    try:
        result = await cache.take_tokens(login_buckets(settings, ip=ip, email=email))
    except Exception as exc:
        log.warning("login_throttle_unavailable", error=type(exc).__name__)
        return
    if not result.allowed:
        raise LoginThrottled(result.retry_after_s, "Too many sign-in attempts; retry later")
