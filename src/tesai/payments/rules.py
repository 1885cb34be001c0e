"""Pure rules for deposits and payouts: what a chain transfer is worth, Solana Pay URLs."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from tesai.billing.money import format_usdc
from tesai.chain.base import ChainTransaction


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
    - no transfer to the treasury: nothing credited, flagged (``rejected_recipient``).
    """
    if not tx.succeeded:
        return DepositJudgement(
            "failed", 0, 0, "", "", f"transaction failed: {tx.error}"[:300], False
        )
    right = [t for t in tx.transfers if t.mint == mint and t.destination == recipient]
    if right:
        received = sum(t.amount for t in right)
        if received == expected_micro:
            return DepositJudgement("credited", received, received, mint, recipient, "", False)
        outcome = "credited_underpaid" if received < expected_micro else "credited_overpaid"
        reason = f"asked {expected_micro}, received {received} micro-USDC; credited what arrived"
        return DepositJudgement(outcome, received, received, mint, recipient, reason, True)
    other = [t for t in tx.transfers if t.mint != mint]
    if other:
        first = other[0]
        return DepositJudgement(
            "rejected_mint",
            0,
            sum(t.amount for t in other),
            first.mint or "unknown",
            first.destination,
            f"paid in mint {first.mint}, expected {mint}; not credited",
            True,
        )
    dest = tx.transfers[0].destination if tx.transfers else ""
    return DepositJudgement(
        "rejected_recipient",
        0,
        sum(t.amount for t in tx.transfers),
        mint,
        dest,
        "no transfer to the treasury token account; not credited",
        True,
    )


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
