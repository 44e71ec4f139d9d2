"""budgets, spend and alerts

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 02:07:34.972505
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal, localcontext

import sqlalchemy as sa
from alembic import op

import modelmint.storage.types

# ``tables.ExactDecimal`` in DDL, spelled out (see 0003).
EXACT_DECIMAL = sa.Numeric().with_variant(sa.Text(), "sqlite")

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "billing_alerts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("api_key_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("subject", sa.String(length=40), nullable=False),
        sa.Column(
            "period_start", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "next_attempt_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "delivered_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_billing_alerts_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_alerts")),
    )
    with op.batch_alter_table("billing_alerts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_alerts_organization_id"), ["organization_id"], unique=False
        )
        batch_op.create_index(
            "ix_billing_alerts_pending", ["status", "next_attempt_at"], unique=False
        )

    op.create_table(
        "billing_budgets",
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("api_key_id", sa.String(length=40), nullable=False),
        sa.Column("amount", EXACT_DECIMAL, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("hard", sa.Boolean(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("updated_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_billing_budgets_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "api_key_id", name=op.f("pk_billing_budgets")),
    )
    op.create_table(
        "billing_spend",
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("api_key_id", sa.String(length=40), nullable=False),
        sa.Column(
            "period_start", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", EXACT_DECIMAL, nullable=False),
        sa.Column("held", EXACT_DECIMAL, nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_billing_spend_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint(
            "organization_id", "api_key_id", "period_start", name=op.f("pk_billing_spend")
        ),
    )
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("alert_webhook_url", sa.String(length=500), nullable=True))
    with op.batch_alter_table("billing_wallets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("granted_total", EXACT_DECIMAL, server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("consumed_total", EXACT_DECIMAL, server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("held", EXACT_DECIMAL, server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column(
                "expires_next", modelmint.storage.types.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "last_entry_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=True
            )
        )
    _backfill_wallet_totals()


def _backfill_wallet_totals() -> None:
    with localcontext() as context:
        context.prec = 400  # exact for any amount the columns hold
        _backfill_wallet_totals_exactly()


def _backfill_wallet_totals_exactly() -> None:
    # Exact sums in Python: SQLite keeps these decimals as text.
    bind = op.get_bind()
    granted: dict[str, Decimal] = defaultdict(Decimal)
    consumed: dict[str, Decimal] = defaultdict(Decimal)
    for wallet_id, kind, amount in bind.execute(
        sa.text("SELECT wallet_id, kind, amount FROM billing_ledger_entries")
    ):
        if kind in ("grant", "top_up"):
            granted[wallet_id] += Decimal(str(amount))
        elif kind == "consumption":
            consumed[wallet_id] -= Decimal(str(amount))
    sqlite = bind.dialect.name == "sqlite"
    # The soonest expiry among grants with credit left (None: nothing expires).
    soonest: dict[str, object] = {}
    for wallet_id, expires_at, remaining in bind.execute(
        sa.text(
            "SELECT wallet_id, expires_at, remaining FROM billing_credit_grants "
            "WHERE expires_at IS NOT NULL"
        )
    ):
        if Decimal(str(remaining)) > 0:
            best = soonest.get(wallet_id)
            soonest[wallet_id] = expires_at if best is None or expires_at < best else best
    bind.execute(
        sa.text(
            "UPDATE billing_wallets SET last_entry_at = ("
            "SELECT e.at FROM billing_ledger_entries e WHERE e.wallet_id = billing_wallets.id"
            " AND e.sequence = billing_wallets.last_sequence)"
        )
    )
    for wallet_id, expires_at in soonest.items():
        bind.execute(
            sa.text("UPDATE billing_wallets SET expires_next = :at WHERE id = :wallet"),
            {"at": expires_at, "wallet": wallet_id},
        )
    for wallet_id in set(granted) | set(consumed):
        values = {"g": granted[wallet_id], "c": consumed[wallet_id]}
        bind.execute(
            sa.text(
                "UPDATE billing_wallets SET granted_total = :g, consumed_total = :c "
                "WHERE id = :wallet"
            ),
            {
                **({k: f"{v:f}" for k, v in values.items()} if sqlite else values),
                "wallet": wallet_id,
            },
        )


def downgrade() -> None:
    with op.batch_alter_table("billing_wallets", schema=None) as batch_op:
        batch_op.drop_column("last_entry_at")
        batch_op.drop_column("expires_next")
        batch_op.drop_column("held")
        batch_op.drop_column("consumed_total")
        batch_op.drop_column("granted_total")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("alert_webhook_url")

    op.drop_table("billing_spend")
    op.drop_table("billing_budgets")
    with op.batch_alter_table("billing_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_billing_alerts_pending")
        batch_op.drop_index(batch_op.f("ix_billing_alerts_organization_id"))

    op.drop_table("billing_alerts")
