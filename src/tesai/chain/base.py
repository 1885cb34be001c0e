"""The chain-client interface and the parsing shared by its implementations.

Exactly what deposits and payouts need from Solana, behind one small abstract class:

    ChainClient
    ├── RpcChainClient      production: a Solana JSON-RPC endpoint (solana-py, async)
    └── LiteSVMChainClient  tests and local runs: the real Solana runtime in-process

Amounts are integer base units of the token (micro-USDC for USDC, 6 decimals).
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from solders.keypair import Keypair

TOKEN_PROGRAM = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"  # noqa: S105 - a program id

# Confirmation levels, weakest first.
LEVELS = ("processed", "confirmed", "finalized")


def level_reached(actual: str | None, wanted: str) -> bool:
    """Whether confirmation status ``actual`` is at least ``wanted``."""
    if actual not in LEVELS:
        return False
    return LEVELS.index(actual) >= LEVELS.index(wanted)


@dataclass(frozen=True)
class TokenTransfer:
    """One SPL token transfer inside a transaction."""

    mint: str | None
    source: str
    """Source token account."""
    destination: str
    """Destination token account."""
    authority: str
    """Owner (or delegate) who signed for the source."""
    amount: int


@dataclass(frozen=True)
class ChainTransaction:
    signature: str
    succeeded: bool
    confirmation: str | None
    """``processed``, ``confirmed``, ``finalized`` or None when unknown."""
    transfers: list[TokenTransfer] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class SendResult:
    signature: str
    error: str | None = None
    """Set when the transaction was rejected before it could land (nothing moved)."""


class ChainClient(ABC):
    """What TES AI asks of the chain."""

    @abstractmethod
    async def signatures_for_address(self, address: str, *, limit: int = 100) -> list[str]:
        """Signatures of transactions that name ``address`` (a Solana Pay reference)."""

    @abstractmethod
    async def get_transaction(self, signature: str) -> ChainTransaction | None:
        """The transaction with its token transfers, or None when the chain does not know it."""

    @abstractmethod
    async def send_transfer(
        self,
        *,
        owner: Keypair,
        source: str,
        destination: str,
        mint: str,
        amount: int,
        decimals: int,
    ) -> SendResult:
        """Sign and send a ``transfer_checked`` of ``amount`` from ``source`` (owned by
        ``owner``, who also pays the fee) to the token account ``destination``."""

    @abstractmethod
    async def confirmation(self, signature: str) -> tuple[str | None, str | None]:
        """(confirmation level or None when unseen, error or None)."""

    @abstractmethod
    async def token_balance(self, token_account: str) -> int:
        """Balance of a token account in base units (0 when it does not exist)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


@dataclass(frozen=True)
class RawInstruction:
    program_id: str
    accounts: Sequence[str]
    data: bytes


def parse_token_transfers(
    instructions: Sequence[RawInstruction], mint_of: Callable[[str], str | None]
) -> list[TokenTransfer]:
    """SPL Token ``Transfer`` (3) and ``TransferChecked`` (12) instructions as transfers.

    ``mint_of`` names the mint of a token account, needed for plain ``Transfer`` whose
    instruction does not carry the mint.
    """
    out: list[TokenTransfer] = []
    for ix in instructions:
        if ix.program_id != TOKEN_PROGRAM or not ix.data:
            continue
        tag = ix.data[0]
        if tag == 3 and len(ix.data) >= 9 and len(ix.accounts) >= 3:
            (amount,) = struct.unpack_from("<Q", ix.data, 1)
            source, dest, authority = ix.accounts[0], ix.accounts[1], ix.accounts[2]
            out.append(TokenTransfer(mint_of(dest), source, dest, authority, amount))
        elif tag == 12 and len(ix.data) >= 10 and len(ix.accounts) >= 4:
            (amount,) = struct.unpack_from("<Q", ix.data, 1)
            source, mint, dest, authority = ix.accounts[:4]
            out.append(TokenTransfer(mint, source, dest, authority, amount))
    return out
