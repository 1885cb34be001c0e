"""Pure rules for deposits and payouts: what a chain transfer is worth, what a sent payout's
chain state means, Solana Pay URLs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from tesai.billing.money import format_usdc
from tesai.billing.schemas import MAX_MICRO
from tesai.chain.base import ChainTransaction, level_reached

MAX_RECORDED = 2**63 - 1
"""The largest amount a receipt can store (a PostgreSQL ``bigint``); a token amount is a
u64 on chain, so anyone can send more of a token they made themselves."""
MAX_CREDIT_MICRO = MAX_MICRO
"""The most one transaction may credit; more is flagged (``rejected_amount``), not credited."""


@dataclass(frozen=True)
class DepositJudgement:
    """What to do with one transaction found for a deposit reference."""

    outcome: str
    credit_micro: int
    received_micro: int
    mint: str
    recipient: str
    reason: str
    needs_review: bool


def judge_deposit(
    tx: ChainTransaction, *, expected_micro: int, mint: str, recipient: str
) -> DepositJudgement:
    """Apply the deposit rule to a confirmed transaction.

    - a failed transaction moved nothing: recorded, nothing credited;
    - USDC to the treasury account: what arrived is credited; a different amount than asked
      is flagged for review (``credited_underpaid`` / ``credited_overpaid``);
    - another mint: nothing credited, flagged (``rejected_mint``);
    - no transfer to the treasury: nothing credited, flagged (``rejected_recipient``);
    - USDC beyond ``MAX_CREDIT_MICRO``: nothing credited, flagged (``rejected_amount``).

    Amounts are u64 on chain and summed here, so ``received_micro`` is capped at what a
    receipt stores (``MAX_RECORDED``); the reason keeps the full number.
    """
    if not tx.succeeded:
        return DepositJudgement(
            "failed", 0, 0, "", "", f"transaction failed: {tx.error}"[:300], False
        )
    right = [t for t in tx.transfers if t.mint == mint and t.destination == recipient]
    if right:
        received = sum(t.amount for t in right)
        if received > MAX_CREDIT_MICRO:
            return DepositJudgement(
                "rejected_amount",
                0,
                min(received, MAX_RECORDED),
                mint,
                recipient,
                f"received {received}, more than one deposit may credit; not credited",
                True,
            )
        if received == expected_micro:
            return DepositJudgement("credited", received, received, mint, recipient, "", False)
        outcome = "credited_underpaid" if received < expected_micro else "credited_overpaid"
        reason = f"asked {expected_micro}, received {received} micro-USDC; credited what arrived"
        return DepositJudgement(outcome, received, received, mint, recipient, reason, True)
    other = [t for t in tx.transfers if t.mint != mint]
    if other:
        first = other[0]
        amount = sum(t.amount for t in other)
        return DepositJudgement(
            "rejected_mint",
            0,
            min(amount, MAX_RECORDED),
            first.mint or "unknown",
            first.destination,
            f"paid {amount} in mint {first.mint}, expected {mint}; not credited"[:300],
            True,
        )
    dest = tx.transfers[0].destination if tx.transfers else ""
    amount = sum(t.amount for t in tx.transfers)
    return DepositJudgement(
        "rejected_recipient",
        0,
        min(amount, MAX_RECORDED),
        mint,
        dest,
        f"{amount} not to the treasury token account; not credited"[:300],
        True,
    )


PayoutVerdict = Literal["paid", "failed", "expired", "wait"]


def payout_verdict(
    *,
    level: str | None,
    error: str | None,
    block_height: int,
    last_valid_block_height: int | None,
    wanted: str = "confirmed",
) -> PayoutVerdict:
    """What the chain says about a sent payout's transfer.

    ``level``/``error`` are its signature status (None, None: the chain has not seen it);
    ``block_height`` is the finalized block height, which must be read BEFORE the status:
    a transfer with no status once the chain is past its blockhash's last valid block
    height can never land (``expired``), and reading in that order leaves no moment in
    which it could land unseen. A status below ``wanted`` waits, failed or not.
    """
    if level is not None or error is not None:
        if not level_reached(level, wanted):
            return "wait"
        return "failed" if error is not None else "paid"
    if last_valid_block_height is not None and block_height > last_valid_block_height:
        return "expired"
    return "wait"


def solana_pay_url(
    *, recipient: str, amount_micro: int, mint: str, reference: str, label: str, message: str
) -> str:
    """A Solana Pay transfer request URL (``solana:<recipient>?amount=…&spl-token=…``)."""
    amount = format_usdc(amount_micro).rstrip("0").rstrip(".")
    return (
        f"solana:{recipient}?amount={amount}&spl-token={mint}&reference={reference}"
        f"&label={quote(label)}&message={quote(message)}"
    )


def payout_wallet_message(user_id: str, address: str, nonce: str) -> str:
    """The text a provider signs with the wallet to prove it owns it."""
    return (
        "TES AI payout wallet\n"
        f"I own {address} and want my TES AI earnings paid to it.\n"
        f"Account: {user_id}\n"
        f"Nonce: {nonce}"
    )
