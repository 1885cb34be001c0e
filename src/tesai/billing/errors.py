"""Errors of the money domains (billing and payments)."""

from __future__ import annotations

from tesai.errors import AppError, BadRequest, Conflict, NotFound


class InsufficientFunds(AppError):
    """The account does not hold enough for this movement."""

    status = 402
    code = "insufficient_funds"


class IdempotencyKeyRequired(BadRequest):
    code = "idempotency_key_required"


class IdempotencyKeyReused(Conflict):
    """The same idempotency key was used earlier with other parameters."""

    code = "idempotency_key_reused"


class HoldNotFound(NotFound):
    code = "hold_not_found"


class AmountInvalid(BadRequest):
    code = "amount_invalid"


class BelowMinimumPayout(BadRequest):
    code = "below_minimum_payout"


class PayoutWalletMissing(Conflict):
    code = "payout_wallet_missing"


class WalletProofInvalid(BadRequest):
    code = "wallet_proof_invalid"


class PayoutNotFound(NotFound):
    code = "payout_not_found"


class PaymentsNotConfigured(Conflict):
    """This deployment has no treasury or hot wallet set up (a state of the deployment,
    not an outage: 409, so clients do not retry)."""

    code = "payments_not_configured"
