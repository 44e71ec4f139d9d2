"""payments: payment_accounts, payments, payment_events; portal_links

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import modelmint.storage.types

# ``tables.ExactDecimal`` in DDL, spelled out (see 0003).
EXACT_DECIMAL = sa.Numeric().with_variant(sa.Text(), "sqlite")
TIME = modelmint.storage.types.UTCDateTime(timezone=True)

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payment_accounts",
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("customer_id", sa.String(length=100), nullable=True),
        sa.Column("payment_method_id", sa.String(length=100), nullable=True),
        sa.Column("method_label", sa.String(length=100), nullable=True),
        sa.Column("auto_top_up_below", EXACT_DECIMAL, nullable=True),
        sa.Column("auto_top_up_amount", EXACT_DECIMAL, nullable=True),
        sa.Column("auto_top_up_currency", sa.String(length=3), nullable=True),
        sa.Column("blocked_at", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_payment_accounts_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("organization_id", name=op.f("pk_payment_accounts")),
    )
    op.create_table(
        "payments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("invoice_id", sa.String(length=64), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("intent_id", sa.String(length=100), nullable=True),
        sa.Column("failure", sa.String(length=500), nullable=True),
        sa.Column("next_attempt_at", TIME, nullable=True),
        sa.Column("first_failed_at", TIME, nullable=True),
        sa.Column("refund_id", sa.String(length=100), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("succeeded_at", TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["billing_invoices.id"],
            name=op.f("fk_payments_invoice_id_billing_invoices"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_payments_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index("ix_payments_due", ["status", "next_attempt_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_payments_intent_id"), ["intent_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_payments_invoice_id"), ["invoice_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_payments_organization_id"), ["organization_id"], unique=False
        )
    op.create_table(
        "payment_events",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("payment_id", sa.String(length=40), nullable=True),
        sa.Column("outcome", sa.String(length=40), nullable=False),
        sa.Column("received_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_events")),
    )
    op.create_table(
        "portal_links",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("secret_digest", sa.String(length=64), nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("used_at", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_portal_links_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_links")),
    )
    with op.batch_alter_table("portal_links", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_portal_links_organization_id"), ["organization_id"], unique=False
        )


def downgrade() -> None:
    op.drop_table("portal_links")
    op.drop_table("payment_events")
    op.drop_table("payments")
    op.drop_table("payment_accounts")
