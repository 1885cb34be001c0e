"""settlement rules: a meter's billing limit, a bucket's unpaid part, a hold's running totals

Revision ID: 0003_settlement_rules
Revises: 0002_payout_outcomes
Create Date: 2026-12-07 18:10:00+00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_settlement_rules"
down_revision: str | Sequence[str] | None = "0002_payout_outcomes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "billing_node_meters",
        sa.Column("billable_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "usage_buckets",
        sa.Column("unpaid_micro", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.create_table(
        "billing_hold_totals",
        sa.Column("hold_account_id", sa.BigInteger(), nullable=False),
        sa.Column("provider_micro", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("fee_micro", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("shortfall_micro", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["hold_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_billing_hold_totals_hold_account_id_ledger_accounts"),
        ),
        sa.PrimaryKeyConstraint("hold_account_id", name=op.f("pk_billing_hold_totals")),
    )
    # Holds that settled usage before: their totals as the ledger has them (provider part
    # from the settled buckets, the fee as what the usage settlements debited beyond it),
    # so the fee's cumulative rounding carries on from what was actually charged.
    op.execute(
        """
INSERT INTO billing_hold_totals (hold_account_id, provider_micro, fee_micro)
SELECT b.hold, b.provider, GREATEST(0, coalesce(d.debited, 0) - b.provider)
FROM (SELECT hold_account_id AS hold, sum(amount_micro) AS provider
      FROM usage_buckets WHERE settled GROUP BY hold_account_id) AS b
LEFT JOIN (SELECT p.account_id AS hold, -sum(p.amount) AS debited
           FROM ledger_postings p JOIN ledger_transactions t ON t.id = p.transaction_id
           WHERE t.kind = 'settle_batch' AND p.amount < 0 GROUP BY p.account_id) AS d
  ON d.hold = b.hold
"""
    )


def downgrade() -> None:
    op.drop_table("billing_hold_totals")
    op.drop_column("usage_buckets", "unpaid_micro")
    op.drop_column("billing_node_meters", "billable_until")
