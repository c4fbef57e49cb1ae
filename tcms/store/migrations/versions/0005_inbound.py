"""The inbound edge: protocol mail handed over by the MTA (LMTP intake), answer checks per
user, and every kind of work with attempts, backoff, last error and quarantine; the DC
publishes each gateway's protocol address.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _work_columns() -> list[sa.Column[object]]:
    return [sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
            sa.Column("next_attempt", sa.BigInteger, nullable=True),
            sa.Column("last_error", sa.Text, nullable=True),
            sa.Column("claimed_by", sa.String(128), nullable=True)]


def upgrade() -> None:
    op.create_table(
        "inbound",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("mail_from", sa.String(254), nullable=False),
        sa.Column("rcpt", sa.Text, nullable=False),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=True),
        sa.Column("tx", sa.String(32), nullable=True),
        sa.Column("status", sa.String(12), nullable=False, server_default="new"),
        sa.Column("detail", sa.Text, nullable=True),
        *_work_columns(),
        sa.Column("finished_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_inbound_work", "inbound", ["status", "next_attempt"])
    op.create_table(
        "answer_checks",
        sa.Column("owner", sa.String(254), primary_key=True),
        sa.Column("status", sa.String(12), nullable=False, server_default="due"),
        *_work_columns(),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_answer_checks_work", "answer_checks", ["status", "next_attempt"])
    with op.batch_alter_table("submissions") as batch:
        for col in _work_columns():
            batch.add_column(col)
    with op.batch_alter_table("runs") as batch:
        for col in _work_columns()[:3]:
            batch.add_column(col)
        batch.add_column(sa.Column("quarantined", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("quarantined_at", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("claimed_by", sa.String(128), nullable=True))
    with op.batch_alter_table("dc_gateways") as batch:
        batch.add_column(sa.Column("enc_pk", sa.LargeBinary(32), nullable=True))
        batch.add_column(sa.Column("protocol_address", sa.String(254), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dc_gateways") as batch:
        batch.drop_column("protocol_address")
        batch.drop_column("enc_pk")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("claimed_by")
        batch.drop_column("quarantined_at")
    with op.batch_alter_table("runs") as batch:
        for col in ("quarantined", "last_error", "next_attempt", "attempts"):
            batch.drop_column(col)
    with op.batch_alter_table("submissions") as batch:
        for col in ("claimed_by", "last_error", "next_attempt", "attempts"):
            batch.drop_column(col)
    op.drop_index("ix_answer_checks_work", "answer_checks")
    op.drop_table("answer_checks")
    op.drop_index("ix_inbound_work", "inbound")
    op.drop_table("inbound")
