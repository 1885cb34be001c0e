"""The chain-client interface and the parsing shared by its implementations.

Exactly what deposits and payouts need from Solana, behind one small abstract class:

    ChainClient
    ├── RpcChainClient      production: a Solana JSON-RPC endpoint (solana-py, async)
    └── LiteSVMChainClient  tests and local runs: the real Solana runtime in-process

Amounts are integer base units of the token (micro-USDC for USDC, 6 decimals).

Sending money is split in two so the caller can store what identifies a transfer before
anything can move: ``prepare_transfer`` signs locally (the signature and the blockhash that
bounds its life are known, nothing is sent) and ``send`` hands the signed bytes to the chain
once. ``send`` never raises; its answer is one of

    accepted   the endpoint took the transaction; whether it lands is read from its status
    rejected   the endpoint refused it before it could land (``error``): nothing moved
    unknown    no definite answer (timeout, connection lost, …) (``uncertain``): it may land

and only ``rejected`` allows a caller to treat the transfer as not made. An unknown outcome
is settled later by ``confirmation`` (the signature's status) and ``block_height`` (past the
blockhash's last valid block height, a transaction that has no status can never land).
"""

from __future__ import annotations

import asyncio
import struct
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

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
class SignedTransfer:
    """A transfer signed locally and not sent yet: what identifies it before anything moves."""

    signature: str
    blockhash: str
    last_valid_block_height: int
    """The transaction can only land while the chain's block height is at most this."""
    wire: bytes
    """The signed transaction as sent (the same bytes always carry the same signature)."""


@dataclass(frozen=True)
class SendResult:
    signature: str
    error: str | None = None
    """Set when the transaction was rejected before it could land (nothing moved)."""
    uncertain: str | None = None
    """Set when the outcome is unknown (no answer in time, connection lost): it may land."""


SendPhase = Literal["before", "after"]
SendHook = Callable[[SendPhase, str], Awaitable[None]]
"""Called with ``("before", signature)`` just before the transaction goes out and
``("after", signature)`` once the endpoint answered, both inside the send's time limit: a
hook that sleeps past ``send_timeout_s`` after the send makes a transfer that landed come
back as unknown (a slow RPC); one that kills the process (or raises a ``BaseException``
that is not an ``Exception``) stops the sender there."""


class ChainClient(ABC):
    """What TES AI asks of the chain."""

    send_timeout_s: float = 10.0
    """How long ``send`` waits for the endpoint's answer before calling the outcome unknown."""
    send_hook: SendHook | None = None
    """Fault injection for tests and crash checks; None in production."""

    @abstractmethod
    async def signatures_for_address(self, address: str, *, limit: int = 100) -> list[str]:
        """Signatures of transactions that name ``address`` (a Solana Pay reference)."""

    @abstractmethod
    async def get_transaction(self, signature: str) -> ChainTransaction | None:
        """The transaction with its token transfers, or None when the chain does not know it."""

    @abstractmethod
    async def prepare_transfer(
        self,
        *,
        owner: Keypair,
        source: str,
        destination: str,
        mint: str,
        amount: int,
        decimals: int,
    ) -> SignedTransfer:
        """Sign a ``transfer_checked`` of ``amount`` from ``source`` (owned by ``owner``, who
        also pays the fee) to the token account ``destination`` on a recent blockhash.
        Sends nothing; raises when the chain cannot be asked for a blockhash."""

    async def send(self, signed: SignedTransfer) -> SendResult:
        """Send ``signed`` once; never raises (see the module docstring for the outcomes)."""
        try:
            async with asyncio.timeout(self.send_timeout_s):
                if self.send_hook is not None:
                    await self.send_hook("before", signed.signature)
                result = await self._transmit(signed)
                if self.send_hook is not None:
                    await self.send_hook("after", signed.signature)
                return result
        except TimeoutError:
            why = f"no answer within {self.send_timeout_s:g} s"
        except Exception as exc:  # the request may have gone out before it failed
            why = f"{type(exc).__name__}: {exc}"
        except BaseException as exc:
            # solders raises pyo3's PanicException (a BaseException) on an answer it cannot
            # parse, e.g. a preflight error without its ``data``: an unknown outcome too.
            if type(exc).__name__ != "PanicException":
                raise
            why = f"unreadable answer: {exc}"
        return SendResult(signed.signature, uncertain=why[:300])

    @abstractmethod
    async def _transmit(self, signed: SignedTransfer) -> SendResult:
        """Hand ``signed`` to the chain. Return ``error`` only for a definite refusal; raise
        (or return ``uncertain``) when the transaction may have gone out."""

    @abstractmethod
    async def confirmation(self, signature: str) -> tuple[str | None, str | None]:
        """(confirmation level or None when unseen, error or None)."""

    @abstractmethod
    async def block_height(self) -> int:
        """The chain's finalized block height (compared with a blockhash's last valid one)."""

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
