"""payout outcomes: a payout's blockhash and last valid block height, deposit scan failures

Revision ID: 0002_payout_outcomes
Revises: 0001
Create Date: 2026-12-07 18:00:00+00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_payout_outcomes"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("payouts", sa.Column("blockhash", sa.String(length=44), nullable=True))
    op.add_column("payouts", sa.Column("last_valid_block_height", sa.BigInteger(), nullable=True))
    op.add_column(
        "deposit_intents",
        sa.Column("scan_error", sa.String(length=300), server_default="", nullable=False),
    )
    op.add_column(
        "deposit_intents",
        sa.Column("scan_failures", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("deposit_intents", "scan_failures")
    op.drop_column("deposit_intents", "scan_error")
    op.drop_column("payouts", "last_valid_block_height")
    op.drop_column("payouts", "blockhash")
