"""The gateway's work queues: submission status, outbox leases and retries.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("status", sa.String(12), nullable=False,
                                   server_default="new"))
        batch.add_column(sa.Column("detail", sa.Text, nullable=True))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("owner", sa.String(254), nullable=True))
        batch.add_column(sa.Column("peer", sa.String(254), nullable=True))
        batch.add_column(sa.Column("claimed_until", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_error", sa.Text, nullable=True))
    op.create_index("ix_submissions_status", "submissions", ["status"])


def downgrade() -> None:
    op.drop_index("ix_submissions_status", "submissions")
    with op.batch_alter_table("messages") as batch:
        for col in ("last_error", "attempts", "claimed_until", "peer", "owner"):
            batch.drop_column(col)
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("detail")
        batch.drop_column("status")
