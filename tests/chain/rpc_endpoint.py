"""A Solana JSON-RPC endpoint on a real socket, over an in-process ``LiteSVMChainClient``.

The fake of the one external thing ``RpcChainClient`` talks to: it answers the calls a
payout makes (``getLatestBlockhash``, ``sendTransaction`` with a preflight simulation,
``getSignatureStatuses``, ``getBlockHeight``, ``getTokenAccountBalance``) from the real
Solana runtime, with the block-height model of ``LiteSVMChainClient`` (a blockhash is valid
until ``expire_blockhash``). It runs in the test's event loop, so a test reads balances and
expires blockhashes on the same chain the client sends to.

Faults, set on ``endpoint.faults`` at any time:

- ``send_delay_s``: run the transaction at once, answer only after this delay (a slow node
  whose answer comes after the client gave up);
- ``send_error``: answer ``sendTransaction`` with this JSON-RPC error and send nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata
from solders.transaction_status import TransactionErrorFieldless, TransactionErrorInstructionError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tesai.chain.litesvm import LiteSVMChainClient


@dataclass
class Faults:
    send_delay_s: float = 0.0
    send_error: dict[str, Any] | None = None


def preflight_failure(err: object, logs: list[str]) -> dict[str, Any]:
    """The JSON-RPC error a node answers when simulating the transaction failed."""
    if isinstance(err, TransactionErrorFieldless):
        ui: Any = str(err).rsplit(".", 1)[-1]
    elif isinstance(err, TransactionErrorInstructionError):
        index, inner = json.loads(err.to_json())
        ui = {"InstructionError": [index, {"Custom": inner} if isinstance(inner, int) else inner]}
    else:
        ui = "InvalidAccountForFee"
    return {
        "code": -32002,
        "message": f"Transaction simulation failed: {ui}",
        "data": {"err": ui, "logs": logs, "accounts": None, "unitsConsumed": 0},
    }


class RpcEndpoint:
    def __init__(self, chain: LiteSVMChainClient) -> None:
        self.chain = chain
        self.faults = Faults()
        self.sent: list[str] = []
        """Signatures of every transaction that ran (landed), in order."""
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = Starlette(routes=[Route("/", self._rpc, methods=["POST"])])
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self.url

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    async def _rpc(self, request: Request) -> JSONResponse:
        call = await request.json()
        try:
            body = {"result": await self._answer(call["method"], call.get("params") or [])}
        except _RpcError as exc:
            body = {"error": exc.error}
        return JSONResponse({"jsonrpc": "2.0", "id": call.get("id"), **body})

    async def _answer(self, method: str, params: list[Any]) -> Any:
        height = await self.chain.block_height()
        context = {"slot": height}
        if method == "getLatestBlockhash":
            blockhash = str(self.chain.svm.latest_blockhash())
            return {
                "context": context,
                "value": {"blockhash": blockhash, "lastValidBlockHeight": height},
            }
        if method == "getBlockHeight":
            return height
        if method == "sendTransaction":
            return await self._send(base64.b64decode(params[0]))
        if method == "getSignatureStatuses":
            return {"context": context, "value": [await self._status(s) for s in params[0]]}
        if method == "getTokenAccountBalance":
            amount = await self.chain.token_balance(params[0])
            value = {"amount": str(amount), "decimals": 6, "uiAmountString": str(amount)}
            return {"context": context, "value": value}
        raise _RpcError({"code": -32601, "message": f"Method not found: {method}"})

    async def _send(self, wire: bytes) -> str:
        if self.faults.send_error is not None:
            raise _RpcError(self.faults.send_error)
        tx = Transaction.from_bytes(wire)
        simulated = self.chain.svm.simulate_transaction(tx)
        if isinstance(simulated, FailedTransactionMetadata):
            raise _RpcError(preflight_failure(simulated.err(), list(simulated.meta().logs())))
        result = self.chain.submit(tx)
        if result.error is None:
            self.sent.append(result.signature)
        if self.faults.send_delay_s:
            await asyncio.sleep(self.faults.send_delay_s)
        return result.signature

    async def _status(self, signature: str) -> dict[str, Any] | None:
        level, error = await self.chain.confirmation(signature)
        if level is None:
            return None
        err = None if error is None else "InvalidAccountForFee"
        status = {"Ok": None} if err is None else {"Err": err}
        return {
            "slot": 1,
            "confirmations": None,
            "err": err,
            "status": status,
            "confirmationStatus": level,
        }


class _RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", ""))
        self.error = error
