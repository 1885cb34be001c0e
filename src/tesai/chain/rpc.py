"""A chain client over a Solana JSON-RPC endpoint (solana-py's async client).

What a send's answer proves: a JSON-RPC error that says the node refused the transaction
before forwarding it (preflight simulation failed, malformed or badly signed transaction)
is a definite rejection; anything else that is not a signature (a timeout, a dropped
connection, an HTTP error from a proxy, a gateway's "internal error") leaves the outcome
unknown, because the transaction may already be on its way to the leader.
"""

from __future__ import annotations

from typing import Any

from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment, Finalized
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.rpc.errors import (
    InvalidParamsMessage,
    RpcCustomErrorFieldless,
    SendTransactionPreflightFailureMessage,
    TransactionPrecompileVerificationFailureMessage,
)
from solders.signature import Signature
from solders.transaction import Transaction

from tesai.chain.base import (
    ChainClient,
    ChainTransaction,
    RawInstruction,
    SendResult,
    SignedTransfer,
    parse_token_transfers,
)
from tesai.chain.litesvm import transfer_checked_ix

REFUSALS = (
    SendTransactionPreflightFailureMessage,
    InvalidParamsMessage,
    TransactionPrecompileVerificationFailureMessage,
    RpcCustomErrorFieldless,  # signature verification failure, signatures/keys mismatch
)
"""JSON-RPC error answers to ``sendTransaction`` after which the node did not forward it."""


def send_refusal(answer: object) -> str | None:
    """The reason when ``answer`` (a parsed JSON-RPC error) proves nothing was forwarded.

    ``AlreadyProcessed`` in a preflight failure means the signature landed already, so it
    is no refusal.
    """
    if not isinstance(answer, REFUSALS) or "AlreadyProcessed" in str(answer):
        return None
    message = getattr(answer, "message", None)
    return str(message or answer)[:300]


class RpcChainClient(ChainClient):
    def __init__(self, url: str, *, commitment: str = "confirmed", timeout_s: float = 10.0) -> None:
        # No transport retries: each send is one request, so a refusal answers that request.
        self._client = AsyncClient(
            url, commitment=Commitment(commitment), timeout=timeout_s, max_transport_retries=0
        )
        self._commitment = commitment
        self.send_timeout_s = timeout_s

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
        ix = transfer_checked_ix(
            source=Pubkey.from_string(source),
            mint=Pubkey.from_string(mint),
            destination=Pubkey.from_string(destination),
            owner=owner.pubkey(),
            amount=amount,
            decimals=decimals,
        )
        latest = (await self._client.get_latest_blockhash()).value
        tx = Transaction([owner], Message([ix], owner.pubkey()), latest.blockhash)
        return SignedTransfer(
            signature=str(tx.signatures[0]),
            blockhash=str(latest.blockhash),
            last_valid_block_height=int(latest.last_valid_block_height),
            wire=bytes(tx),
        )

    async def _transmit(self, signed: SignedTransfer) -> SendResult:
        try:
            await self._client.send_raw_transaction(
                signed.wire, opts=TxOpts(preflight_commitment=Commitment(self._commitment))
            )
        except RPCException as exc:
            answer = exc.args[0] if exc.args else exc
            refusal = send_refusal(answer)
            if refusal is None:
                return SendResult(signed.signature, uncertain=f"RPC answered: {answer}"[:300])
            return SendResult(signed.signature, error=refusal)
        return SendResult(signed.signature)

    async def confirmation(self, signature: str) -> tuple[str | None, str | None]:
        resp = await self._client.get_signature_statuses(
            [Signature.from_string(signature)], search_transaction_history=True
        )
        status: Any = resp.value[0]
        if status is None:
            return None, None
        if status.confirmation_status is None:  # older nodes: no confirmations means rooted
            level = "finalized" if status.confirmations is None else "processed"
        else:
            level = str(status.confirmation_status).rsplit(".", 1)[-1].lower()
        error = str(status.err) if status.err is not None else None
        return level, error

    async def block_height(self) -> int:
        # Finalized: every block up to this height is final, so a transaction of a blockhash
        # that expired at or below it either has a status by now or never will.
        return int((await self._client.get_block_height(Finalized)).value)

    async def token_balance(self, token_account: str) -> int:
        try:
            resp = await self._client.get_token_account_balance(Pubkey.from_string(token_account))
        except Exception:  # an account that does not exist yet holds nothing
            return 0
        return int(resp.value.amount)

    async def close(self) -> None:
        await self._client.close()
