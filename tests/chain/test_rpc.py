"""``RpcChainClient`` against a JSON-RPC endpoint over LiteSVM: what a send's answer proves.

Only a node's refusal (it did not forward the transaction) is a rejection; a late answer,
a gateway error or an answer that cannot be read leaves the outcome unknown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tesai.chain.base import SignedTransfer
from tesai.chain.rpc import RpcChainClient
from tests.chain.rpc_endpoint import RpcEndpoint
from tests.chain.test_litesvm import Setup


class Wired:
    """Accounts on a LiteSVM chain, the endpoint over it, and a client of that endpoint."""

    def __init__(self) -> None:
        self.s = Setup()
        self.endpoint = RpcEndpoint(self.s.client)
        self.rpc: RpcChainClient

    async def start(self) -> None:
        self.rpc = RpcChainClient(await self.endpoint.start(), timeout_s=0.5)

    async def prepare(self, amount: int) -> SignedTransfer:
        return await self.rpc.prepare_transfer(
            owner=self.s.payer,
            source=str(self.s.source),
            destination=str(self.s.dest),
            mint=str(self.s.mint),
            amount=amount,
            decimals=6,
        )


@pytest.fixture
async def w() -> AsyncIterator[Wired]:
    wired = Wired()
    await wired.start()
    yield wired
    await wired.rpc.close()
    await wired.endpoint.stop()


async def test_send_answered_after_the_client_timeout_is_unknown_and_did_land(w: Wired) -> None:
    w.endpoint.faults.send_delay_s = 1.5
    signed = await w.prepare(4_000_000)
    result = await w.rpc.send(signed)
    assert result.error is None
    assert result.uncertain is not None
    assert await w.rpc.confirmation(signed.signature) == ("finalized", None)
    assert await w.rpc.token_balance(str(w.s.dest)) == 4_000_000


async def test_preflight_refusal_is_a_definite_rejection(w: Wired) -> None:
    signed = await w.prepare(80_000_000)  # more than the 50 USDC held
    result = await w.rpc.send(signed)
    assert result.uncertain is None
    assert result.error is not None
    assert "simulation failed" in result.error
    assert w.endpoint.sent == []
    assert await w.rpc.confirmation(signed.signature) == (None, None)


@pytest.mark.parametrize(
    "answer",
    [
        {"code": -32603, "message": "Internal error"},  # e.g. a gateway that gave up
        {"code": -32005, "message": "Node is behind", "data": {}},
        {  # the same signature already landed (a retried request)
            "code": -32002,
            "message": "Transaction simulation failed: AlreadyProcessed",
            "data": {"err": "AlreadyProcessed", "logs": [], "accounts": None},
        },
        # A preflight error without its data: solders cannot parse it (it panics).
        {"code": -32002, "message": "Transaction simulation failed: BlockhashNotFound"},
    ],
    ids=["internal-error", "node-unhealthy", "already-processed", "unreadable"],
)
async def test_other_error_answers_leave_the_outcome_unknown(
    w: Wired, answer: dict[str, object]
) -> None:
    w.endpoint.faults.send_error = answer
    signed = await w.prepare(1_000_000)
    result = await w.rpc.send(signed)
    assert result.error is None
    assert result.uncertain is not None


async def test_blockhash_validity_is_read_from_the_node(w: Wired) -> None:
    signed = await w.prepare(1_000_000)
    assert await w.rpc.block_height() == signed.last_valid_block_height
    assert (await w.rpc.send(signed)).error is None
    assert await w.rpc.confirmation(signed.signature) == ("finalized", None)
    stale = await w.prepare(2_000_000)
    w.s.client.expire_blockhash()
    assert await w.rpc.block_height() > stale.last_valid_block_height
    assert await w.rpc.confirmation(stale.signature) == (None, None)
