"""organisation deletion: organizations.deleted_at

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 07:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import modelmint.storage.types

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "deleted_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=True
            )
        )


def downgrade() -> None:
    # A plain ALTER, not a batch copy: SQLite (3.35+) drops the column in place, while
    # copying the table would fail the foreign keys every other table has on it.
    op.execute("ALTER TABLE organizations DROP COLUMN deleted_at")
