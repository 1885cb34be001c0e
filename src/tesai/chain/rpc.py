"""A chain client over a Solana JSON-RPC endpoint (solana-py's async client)."""

from __future__ import annotations

from typing import Any

from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment
from solana.rpc.models import TxOpts
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction

from tesai.chain.base import (
    ChainClient,
    ChainTransaction,
    RawInstruction,
    SendResult,
    parse_token_transfers,
)
from tesai.chain.litesvm import transfer_checked_ix


class RpcChainClient(ChainClient):
    def __init__(self, url: str, *, commitment: str = "confirmed", timeout_s: float = 10.0) -> None:
        self._client = AsyncClient(url, commitment=Commitment(commitment), timeout=timeout_s)
        self._commitment = commitment

    async def signatures_for_address(self, address: str, *, limit: int = 100) -> list[str]:
        resp = await self._client.get_signatures_for_address(
            Pubkey.from_string(address), limit=limit
        )
        return [str(item.signature) for item in resp.value]

    async def get_transaction(self, signature: str) -> ChainTransaction | None:
        resp = await self._client.get_transaction(
            Signature.from_string(signature),
            encoding="base64",
            max_supported_transaction_version=0,
        )
        found: Any = resp.value
        if found is None:
            return None
        tx: Any = found.transaction.transaction
        meta: Any = found.transaction.meta
        message: Any = tx.message
        keys = [str(k) for k in message.account_keys]
        loaded = getattr(meta, "loaded_addresses", None) if meta is not None else None
        if loaded is not None:
            keys += [str(k) for k in loaded.writable] + [str(k) for k in loaded.readonly]
        mints: dict[str, str] = {}
        for bal in (getattr(meta, "post_token_balances", None) or []) if meta else []:
            mints[keys[bal.account_index]] = str(bal.mint)
        raw = [
            RawInstruction(
                keys[ix.program_id_index], [keys[i] for i in bytes(ix.accounts)], bytes(ix.data)
            )
            for ix in message.instructions
        ]
        error = str(meta.err) if meta is not None and meta.err is not None else None
        level, _ = await self.confirmation(signature)
        return ChainTransaction(
            signature=signature,
            succeeded=error is None,
            confirmation=level,
            transfers=parse_token_transfers(raw, mints.get) if error is None else [],
            error=error,
        )

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
        ix = transfer_checked_ix(
            source=Pubkey.from_string(source),
            mint=Pubkey.from_string(mint),
            destination=Pubkey.from_string(destination),
            owner=owner.pubkey(),
            amount=amount,
            decimals=decimals,
        )
        blockhash = (await self._client.get_latest_blockhash()).value.blockhash
        tx = Transaction([owner], Message([ix], owner.pubkey()), blockhash)
        signature = str(tx.signatures[0])
        try:
            await self._client.send_raw_transaction(
                bytes(tx), opts=TxOpts(preflight_commitment=Commitment(self._commitment))
            )
        except Exception as exc:  # preflight rejection: nothing landed
            return SendResult(signature, error=f"{type(exc).__name__}: {exc}"[:300])
        return SendResult(signature)

    async def confirmation(self, signature: str) -> tuple[str | None, str | None]:
        resp = await self._client.get_signature_statuses(
            [Signature.from_string(signature)], search_transaction_history=True
        )
        status: Any = resp.value[0]
        if status is None:
            return None, None
        level = str(status.confirmation_status).rsplit(".", 1)[-1].lower()
        error = str(status.err) if status.err is not None else None
        return level, error

    async def token_balance(self, token_account: str) -> int:
        try:
            resp = await self._client.get_token_account_balance(Pubkey.from_string(token_account))
        except Exception:  # an account that does not exist yet holds nothing
            return 0
        return int(resp.value.amount)

    async def close(self) -> None:
        await self._client.close()
