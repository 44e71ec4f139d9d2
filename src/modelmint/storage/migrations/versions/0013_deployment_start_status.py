"""deployment start status: deployments.replaces, started_at, failed_at, error

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import modelmint.storage.types

TIME = modelmint.storage.types.UTCDateTime(timezone=True)

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replaces", sa.JSON(), server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("started_at", TIME, nullable=True))
        batch_op.add_column(sa.Column("failed_at", TIME, nullable=True))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("error")
        batch_op.drop_column("failed_at")
        batch_op.drop_column("started_at")
        batch_op.drop_column("replaces")
