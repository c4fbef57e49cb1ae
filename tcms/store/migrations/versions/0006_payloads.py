"""A run's payload (c, the encrypted mail, as large as the mail) in a table of its own,
written once in sealed pieces: a protocol step loads and saves the run's small state
without it.  Runs
stored before keep c in their state (the machines read it from there).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payloads",
        sa.Column("cid", sa.LargeBinary(32), primary_key=True),
        sa.Column("role", sa.String(8), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("payloads")
