"""feedback loop: ratings, sample capture policies, captured samples, feedback datasets

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 05:25:38.352516
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import modelmint.storage.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback_datasets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source_model", sa.String(length=200), nullable=False),
        sa.Column("format", sa.String(length=10), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("data_hash", sa.String(length=80), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("request_ids", sa.JSON(), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("created_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback_datasets")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_feedback_datasets_name")),
    )
    with op.batch_alter_table("feedback_datasets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_datasets_name"), ["name"], unique=False)

    op.create_table(
        "feedback",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("api_key_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("model_version_id", sa.String(length=40), nullable=True),
        sa.Column("score_name", sa.String(length=60), nullable=False),
        sa.Column("score_kind", sa.String(length=20), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("corrected_output", sa.Text(), nullable=True),
        sa.Column("corrected_label", sa.String(length=200), nullable=True),
        sa.Column("created_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_feedback_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_feedback")),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_model"), ["model"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_feedback_model_version_id"), ["model_version_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_feedback_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "request_samples",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("api_key_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("model_version_id", sa.String(length=40), nullable=True),
        sa.Column("endpoint", sa.String(length=40), nullable=False),
        sa.Column("request_text", sa.Text(), nullable=False),
        sa.Column("response_text", sa.Text(), nullable=False),
        sa.Column("redactions", sa.JSON(), nullable=False),
        sa.Column("created_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_request_samples_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_request_samples")),
    )
    with op.batch_alter_table("request_samples", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_request_samples_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_request_samples_model"), ["model"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_request_samples_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "sample_capture_policies",
        sa.Column("scope", sa.String(length=20), nullable=False),
        sa.Column("subject_id", sa.String(length=40), nullable=False),
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("created_at", modelmint.storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_sample_capture_policies_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("scope", "subject_id", name=op.f("pk_sample_capture_policies")),
    )
    with op.batch_alter_table("sample_capture_policies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sample_capture_policies_organization_id"),
            ["organization_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("sample_capture_policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sample_capture_policies_organization_id"))

    op.drop_table("sample_capture_policies")
    with op.batch_alter_table("request_samples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_request_samples_organization_id"))
        batch_op.drop_index(batch_op.f("ix_request_samples_model"))
        batch_op.drop_index(batch_op.f("ix_request_samples_expires_at"))

    op.drop_table("request_samples")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_organization_id"))
        batch_op.drop_index(batch_op.f("ix_feedback_model_version_id"))
        batch_op.drop_index(batch_op.f("ix_feedback_model"))

    op.drop_table("feedback")
    with op.batch_alter_table("feedback_datasets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_datasets_name"))

    op.drop_table("feedback_datasets")
