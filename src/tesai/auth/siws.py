"""Sign-In-With-Solana messages: building, parsing and checking (pure functions).

The message follows the SIWS / EIP-4361 text layout::

    127.0.0.1:8000 wants you to sign in with your Solana account:
    <base58 address>

    Sign in to TES AI.

    URI: http://127.0.0.1:8000
    Version: 1
    Chain ID: mainnet
    Nonce: <32 hex>
    Issued At: 2026-01-01T00:00:00Z
    Expiration Time: 2026-01-01T00:05:00Z

Parsing is strict: the parsed fields must rebuild the exact text, so nothing can hide in
extra lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

STATEMENT = "Sign in to TES AI."
VERSION = "1"

_PATTERN = re.compile(
    r"^(?P<domain>[^\s]+) wants you to sign in with your Solana account:\n"
    r"(?P<address>[1-9A-HJ-NP-Za-km-z]{32,44})\n"
    r"\n"
    r"(?P<statement>[^\n]*)\n"
    r"\n"
    r"URI: (?P<uri>[^\s]+)\n"
    r"Version: (?P<version>[^\s]+)\n"
    r"Chain ID: (?P<chain_id>[^\s]+)\n"
    r"Nonce: (?P<nonce>[A-Za-z0-9]{8,64})\n"
    r"Issued At: (?P<issued_at>[^\s]+)\n"
    r"Expiration Time: (?P<expiration_time>[^\s]+)$"
)


@dataclass(frozen=True)
class SiwsMessage:
    domain: str
    address: str
    statement: str
    uri: str
    version: str
    chain_id: str
    nonce: str
    issued_at: datetime
    expiration_time: datetime

    def text(self) -> str:
        return (
            f"{self.domain} wants you to sign in with your Solana account:\n"
            f"{self.address}\n\n{self.statement}\n\n"
            f"URI: {self.uri}\nVersion: {self.version}\nChain ID: {self.chain_id}\n"
            f"Nonce: {self.nonce}\nIssued At: {format_time(self.issued_at)}\n"
            f"Expiration Time: {format_time(self.expiration_time)}"
        )


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` and whole seconds."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_message(text: str) -> SiwsMessage | None:
    """The message's fields, or None when it is not a well-formed canonical message."""
    match = _PATTERN.match(text)
    if match is None:
        return None
    try:
        issued = datetime.fromisoformat(match["issued_at"].replace("Z", "+00:00"))
        expires = datetime.fromisoformat(match["expiration_time"].replace("Z", "+00:00"))
    except ValueError:
        return None
    if issued.tzinfo is None or expires.tzinfo is None:
        return None
    message = SiwsMessage(
        domain=match["domain"],
        address=match["address"],
        statement=match["statement"],
        uri=match["uri"],
        version=match["version"],
        chain_id=match["chain_id"],
        nonce=match["nonce"],
        issued_at=issued,
        expiration_time=expires,
    )
    return message if message.text() == text else None


def check_message(
    message: SiwsMessage,
    *,
    domain: str,
    uri: str,
    chain_id: str,
    now: datetime,
    max_skew_s: float = 60.0,
) -> str | None:
    """The reason the message is not acceptable here and now, or None when it is."""
    if message.domain != domain:
        return "domain mismatch"
    if message.uri != uri:
        return "URI mismatch"
    if message.version != VERSION:
        return "unsupported version"
    if message.chain_id != chain_id:
        return "chain id mismatch"
    if message.statement != STATEMENT:
        return "unexpected statement"
    if message.expiration_time <= now:
        return "message expired"
    if (message.issued_at - now).total_seconds() > max_skew_s:
        return "issued in the future"
    return None
