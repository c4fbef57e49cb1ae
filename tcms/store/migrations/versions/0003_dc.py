"""The Distribution Center: registered gateways, published keys, seen requests.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dc_gateways",
        sa.Column("domain", sa.String(254), primary_key=True),
        sa.Column("gateway", sa.String(254), nullable=False),
        sa.Column("sig_pk", sa.LargeBinary(32), nullable=False),
        sa.Column("registered_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "dc_keys",
        sa.Column("address", sa.String(254), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("sig_pk", sa.LargeBinary(32), nullable=False),
        sa.Column("enc_pk", sa.LargeBinary(32), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("not_before", sa.BigInteger, nullable=False),
        sa.Column("not_after", sa.BigInteger, nullable=False),
        sa.Column("published_at", sa.BigInteger, nullable=False),
        sa.Column("changed_at", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
    )
    op.create_table(
        "dc_requests",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("dc_requests", "dc_keys", "dc_gateways"):
        op.drop_table(table)
