"""Values as large as a mail (a submission's mail, a protocol mail the intake took, a
run's c) in a table of their own, written once in sealed pieces: no write or read holds
more than a piece besides the value, and a protocol step loads and saves a run's small
state without c.  Rows stored before keep their value where it was (``raw``, the state).

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
        "pieces",
        sa.Column("owner", sa.String(100), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pieces")
