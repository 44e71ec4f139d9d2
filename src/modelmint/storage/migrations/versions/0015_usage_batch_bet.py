"""usage batches: mm_batch_bet(), which fails a one-trip batch whose bet was lost

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 19:40:00

On PostgreSQL the metering writer sends a batch's statements and its COMMIT in one
round trip, betting that every event is new (and, for a quick paid batch, that every
lease has room and no budget applies). The statement that checks the bet calls this
function, which raises (SQLSTATE ``MMB01``, ``storage.batch.BET_LOST``) when it was
lost: the transaction then aborts, the pipelined COMMIT never runs, and the writer
settles the batch again the general way. SQLite checks its bets in process and needs
no function.
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION mm_batch_bet(held boolean) RETURNS boolean
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            IF held IS NOT TRUE THEN
                RAISE EXCEPTION 'usage batch: the one-trip bet was lost'
                    USING ERRCODE = 'MMB01';
            END IF;
            RETURN false;
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS mm_batch_bet(boolean)")
