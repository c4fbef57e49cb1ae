"""Initial schema: submissions, runs, messages, evidence, TTP decisions, audit log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_PG_FUNC = """
CREATE OR REPLACE FUNCTION tcms_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME; END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "submissions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(998), nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("cid", sa.LargeBinary(32), primary_key=True),
        sa.Column("role", sa.String(8), primary_key=True),
        sa.Column("tx", sa.String(32), nullable=False, index=True),
        sa.Column("owner", sa.String(254), nullable=False, index=True),
        sa.Column("peer", sa.String(254), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("submission_id", sa.Integer, sa.ForeignKey("submissions.id"), nullable=True),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("terminal", sa.Boolean, nullable=False),
        sa.Column("deadline", sa.BigInteger, nullable=True),
        sa.Column("state", sa.LargeBinary, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_runs_due", "runs", ["terminal", "deadline"])
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("cid", sa.LargeBinary(32), nullable=False, index=True),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("direction", sa.String(3), nullable=False),
        sa.Column("destination", sa.String(8), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("sent_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_messages_outbox", "messages", ["direction", "sent_at"])
    op.create_table(
        "evidence",
        sa.Column("cid", sa.LargeBinary(32), primary_key=True),
        sa.Column("role", sa.String(8), primary_key=True),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("bundle", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "ttp_decisions",
        sa.Column("cid", sa.LargeBinary(32), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("answer", sa.LargeBinary, nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("by", sa.String(1), nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("recipient", sa.String(254), nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(254), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("cid", sa.String(64), nullable=True, index=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
    )
    # The audit log and the TTP's decisions may only grow.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNC)
        for table in ("audit_log", "ttp_decisions"):
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION tcms_append_only()")
    else:
        for table in ("audit_log", "ttp_decisions"):
            for what in ("UPDATE", "DELETE"):
                op.execute(f"CREATE TRIGGER {table}_no_{what.lower()} BEFORE {what} ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END")


def downgrade() -> None:
    for table in ("audit_log", "ttp_decisions", "evidence", "messages", "runs", "submissions"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS tcms_append_only()")
