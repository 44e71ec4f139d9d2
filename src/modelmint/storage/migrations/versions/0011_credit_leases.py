"""credit leases: billing_credit_leases, leased sums on wallets and spend rows

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 10:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import modelmint.storage.types

# ``tables.ExactDecimal`` in DDL, spelled out (see 0003).
EXACT_DECIMAL = sa.Numeric().with_variant(sa.Text(), "sqlite")
TIME = modelmint.storage.types.UTCDateTime(timezone=True)

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("billing_wallets", "billing_spend"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("leased", EXACT_DECIMAL, server_default="0", nullable=False)
            )
    op.create_table(
        "billing_credit_leases",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("wallet_id", sa.String(length=40), nullable=True),
        sa.Column("api_key_id", sa.String(length=40), nullable=False),
        sa.Column("period_start", TIME, nullable=True),
        sa.Column("holder", sa.String(length=120), nullable=False),
        sa.Column("amount", EXACT_DECIMAL, nullable=False),
        sa.Column("pending", EXACT_DECIMAL, server_default="0", nullable=False),
        sa.Column("granted", EXACT_DECIMAL, nullable=False),
        sa.Column("consumed", EXACT_DECIMAL, nullable=False),
        sa.Column("last_consumed_at", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("closed_at", TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_billing_credit_leases_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"],
            ["billing_wallets.id"],
            name=op.f("fk_billing_credit_leases_wallet_id_billing_wallets"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_credit_leases")),
    )
    with op.batch_alter_table("billing_credit_leases", schema=None) as batch_op:
        batch_op.create_index(
            "ix_billing_credit_leases_open", ["closed_at", "expires_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_billing_credit_leases_organization_id"),
            ["organization_id"],
            unique=False,
        )


def downgrade() -> None:
    op.drop_table("billing_credit_leases")
    for table in ("billing_wallets", "billing_spend"):
        # A plain ALTER (SQLite 3.35+ drops in place; a batch copy would trip foreign keys).
        op.execute(f"ALTER TABLE {table} DROP COLUMN leased")
