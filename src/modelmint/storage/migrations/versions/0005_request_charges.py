"""request charges on usage records, period usage totals, running grant balances

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 02:10:00
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal, localcontext

import sqlalchemy as sa
from alembic import op

import modelmint.storage.types

# ``tables.ExactDecimal`` in DDL, spelled out (see 0003).
EXACT_DECIMAL = sa.Numeric().with_variant(sa.Text(), "sqlite")

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "billing_usage_totals",
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column(
            "period_start", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("plan_code", sa.String(length=100), nullable=False),
        sa.Column("plan_version", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("metric", sa.String(length=40), nullable=False),
        sa.Column("quantity", EXACT_DECIMAL, nullable=False),
        sa.Column("included", EXACT_DECIMAL, nullable=False),
        sa.Column("amount", EXACT_DECIMAL, nullable=False),
        sa.Column("charges", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_billing_usage_totals_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint(
            "organization_id",
            "period_start",
            "plan_code",
            "plan_version",
            "model",
            "metric",
            name=op.f("pk_billing_usage_totals"),
        ),
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("plan_code", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("plan_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("charge", EXACT_DECIMAL, nullable=True))
        batch_op.add_column(sa.Column("currency", sa.String(length=3), nullable=True))
    with op.batch_alter_table("billing_wallets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("grant_count", sa.Integer(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("billing_credit_grants", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("remaining", EXACT_DECIMAL, server_default="0", nullable=False)
        )
    _backfill_running_balances()


def _backfill_running_balances() -> None:
    with localcontext() as context:
        context.prec = 400  # exact for any amount the columns hold
        _backfill_running_balances_exactly()


def _backfill_running_balances_exactly() -> None:
    # Existing wallets: each grant's remaining credit is the exact sum of its entries
    # (summed here in Python: SQLite keeps these decimals as text).
    bind = op.get_bind()
    remaining: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for wallet_id, grant_id, amount in bind.execute(
        sa.text("SELECT wallet_id, grant_id, amount FROM billing_ledger_entries")
    ):
        remaining[(wallet_id, grant_id)] += Decimal(str(amount))
    counts: dict[str, int] = defaultdict(int)
    for wallet_id, grant_id in bind.execute(
        sa.text("SELECT wallet_id, grant_id FROM billing_credit_grants")
    ):
        counts[wallet_id] += 1
        value = remaining[(wallet_id, grant_id)]
        bind.execute(
            sa.text(
                "UPDATE billing_credit_grants SET remaining = :value "
                "WHERE wallet_id = :wallet AND grant_id = :grant"
            ),
            {
                "value": f"{value:f}" if bind.dialect.name == "sqlite" else value,
                "wallet": wallet_id,
                "grant": grant_id,
            },
        )
    for wallet_id, count in counts.items():
        bind.execute(
            sa.text("UPDATE billing_wallets SET grant_count = :count WHERE id = :wallet"),
            {"count": count, "wallet": wallet_id},
        )


def downgrade() -> None:
    with op.batch_alter_table("billing_credit_grants", schema=None) as batch_op:
        batch_op.drop_column("remaining")
    with op.batch_alter_table("billing_wallets", schema=None) as batch_op:
        batch_op.drop_column("grant_count")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("currency")
        batch_op.drop_column("charge")
        batch_op.drop_column("plan_version")
        batch_op.drop_column("plan_code")
    op.drop_table("billing_usage_totals")
