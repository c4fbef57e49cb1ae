"""The TSS's log of time stamps (serial numbers that survive restarts).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tss_log",
        sa.Column("serial", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("hash_alg", sa.String(16), nullable=False),
        sa.Column("imprint", sa.LargeBinary, nullable=False),
        sa.Column("nonce", sa.String(40), nullable=True),
        sa.Column("requester", sa.String(254), nullable=True),
        sa.Column("requester_fp", sa.String(64), nullable=True),
        sa.Column("token", sa.LargeBinary, nullable=True),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("tss_log")
