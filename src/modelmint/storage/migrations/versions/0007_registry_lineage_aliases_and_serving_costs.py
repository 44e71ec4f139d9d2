"""model registry lineage, aliases and serving costs

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 04:11:44.711484
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import modelmint.storage.types

# ``tables.ExactDecimal`` in DDL, spelled out (see 0003).
EXACT_DECIMAL = sa.Numeric().with_variant(sa.Text(), "sqlite")

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_alias_moves",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("model_id", sa.String(length=40), nullable=False),
        sa.Column("alias", sa.String(length=60), nullable=False),
        sa.Column("from_version_id", sa.String(length=40), nullable=True),
        sa.Column("to_version_id", sa.String(length=40), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("moved_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_models.id"],
            name=op.f("fk_model_alias_moves_model_id_registered_models"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_alias_moves")),
    )
    with op.batch_alter_table("model_alias_moves", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_model_alias_moves_model_id"), ["model_id"], unique=False
        )

    op.create_table(
        "model_aliases",
        sa.Column("model_id", sa.String(length=40), nullable=False),
        sa.Column("alias", sa.String(length=60), nullable=False),
        sa.Column("model_version_id", sa.String(length=40), nullable=False),
        sa.Column("updated_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_models.id"],
            name=op.f("fk_model_aliases_model_id_registered_models"),
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_aliases_model_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("model_id", "alias", name=op.f("pk_model_aliases")),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cost_per_hour", EXACT_DECIMAL, nullable=True))
        batch_op.add_column(sa.Column("cost_per_1m_input", EXACT_DECIMAL, nullable=True))
        batch_op.add_column(sa.Column("cost_per_1m_output", EXACT_DECIMAL, nullable=True))
        batch_op.add_column(
            sa.Column(
                "updated_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=True
            )
        )

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recipe", sa.String(length=60), nullable=True))
        batch_op.add_column(sa.Column("data_hash", sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column("parent_version_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("lineage", sa.JSON(), server_default="{}", nullable=False))
        batch_op.add_column(sa.Column("card", sa.Text(), server_default="", nullable=False))
        batch_op.create_foreign_key(
            batch_op.f("fk_model_versions_parent_version_id_model_versions"),
            "model_versions",
            ["parent_version_id"],
            ["id"],
        )

    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cost", EXACT_DECIMAL, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("cost")

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_model_versions_parent_version_id_model_versions"), type_="foreignkey"
        )
        batch_op.drop_column("card")
        batch_op.drop_column("lineage")
        batch_op.drop_column("parent_version_id")
        batch_op.drop_column("data_hash")
        batch_op.drop_column("recipe")

    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("cost_per_1m_output")
        batch_op.drop_column("cost_per_1m_input")
        batch_op.drop_column("cost_per_hour")

    op.drop_table("model_aliases")
    with op.batch_alter_table("model_alias_moves", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_alias_moves_model_id"))

    op.drop_table("model_alias_moves")
