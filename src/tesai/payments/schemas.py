"""Request and response models of deposits and payouts."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from tesai.billing.schemas import MAX_MICRO
from tesai.kit.money import Micro


class DepositIn(BaseModel):
    amount_micro: Micro = Field(gt=0, le=MAX_MICRO, description="Micro-USDC to deposit")


class DepositOut(BaseModel):
    id: uuid.UUID
    status: str
    reference: str
    recipient: str
    """The treasury's token account."""
    mint: str
    amount_micro: int
    credited_micro: int
    expires_at: datetime
    url: str
    """Solana Pay transfer request."""
    qr: str
    """The string to encode in a QR code (the same Solana Pay URL)."""


class ReceiptOut(BaseModel):
    signature: str
    outcome: str
    amount_micro: int
    credited_micro: int
    reason: str
    needs_review: bool


class DepositDetail(DepositOut):
    receipts: list[ReceiptOut]


class WalletChallengeIn(BaseModel):
    address: str = Field(min_length=32, max_length=44)


class WalletChallengeOut(BaseModel):
    nonce: str
    message: str
    """Sign these exact UTF-8 bytes with the wallet (Ed25519), send the base58 signature."""


class WalletProofIn(BaseModel):
    address: str = Field(min_length=32, max_length=44)
    nonce: str = Field(min_length=1, max_length=64)
    signature: str = Field(min_length=64, max_length=100)


class WalletOut(BaseModel):
    address: str
    token_account: str


class PayoutIn(BaseModel):
    amount_micro: Micro = Field(gt=0, le=MAX_MICRO)


class PayoutOut(BaseModel):
    id: uuid.UUID
    amount_micro: int
    destination: str
    status: str
    signature: str | None
    reason: str
    created_at: datetime
