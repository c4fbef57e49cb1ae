"""The SQL schema (SQLAlchemy Core).  Alembic migrations in ``migrations/`` create it.

Columns that hold mail, key shares or ciphertext are encrypted at rest with the data key
(``Encrypted*``, tcms/store/encrypted.py): in the database they are binary or text as
before, sealed.  What stays in clear is what the store looks rows up by and what the
protocol's own headers show anyway: addresses, subjects, sizes, times, ids, phases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

from tcms.store.encrypted import EncryptedBinary, EncryptedText

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def work_columns() -> list[Column[Any]]:
    """The columns of a unit of work (gateway/queue.py): tries so far, when it may be tried
    next (a lease while a worker holds it, then the backoff), what went wrong last, and the
    gateway instance holding it."""
    return [Column("attempts", Integer, nullable=False, server_default="0"),
            Column("next_attempt", BigInteger, nullable=True),
            Column("last_error", Text, nullable=True),
            Column("claimed_by", String(128), nullable=True)]


# A mail submitted for certification: one per SMTP transaction, stored before the 250.
submissions = Table(
    "submissions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(998), nullable=False),
    Column("sender", String(254), nullable=False),
    Column("recipients", Text, nullable=False),  # JSON list
    Column("subject", Text, nullable=False),
    # the mail: in table pieces ("submission/ID"), or here if stored before that table
    Column("raw", EncryptedBinary("submissions.raw"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # new -> started (runs created) | failed (nothing could be certified); see ``detail``
    Column("status", String(12), nullable=False, server_default="new", index=True),
    Column("detail", Text, nullable=True),
    *work_columns(),
)

# Protocol mail handed to the gateway's intake (LMTP) by the MTA: stored before the 250,
# then handled once.  new -> done | rejected (a check failed: ``detail``) | quarantined
# (kept failing: an administrator decides, `tcms queue`) | dropped.
inbound = Table(
    "inbound",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", BigInteger, nullable=False),
    Column("mail_from", String(254), nullable=False),
    Column("rcpt", Text, nullable=False),  # JSON list: the protocol addresses it came to
    Column("peer", String(64), nullable=False),  # the MTA host that handed it over
    # the mail (in table pieces, "inbound/ID", or here if older); emptied once handled
    Column("raw", EncryptedBinary("inbound.raw"), nullable=False),
    Column("size", Integer, nullable=False),
    Column("kind", String(16), nullable=True),  # m3 ... refusal, once parsed
    Column("tx", String(32), nullable=True),
    Column("status", String(12), nullable=False, server_default="new"),
    Column("detail", Text, nullable=True),
    *work_columns(),
    Column("finished_at", BigInteger, nullable=True),
    Index("ix_inbound_work", "status", "next_attempt"),
)

# Users whose Certified.Accept / Certified.Refuse folders must be looked at: set when the
# IMAP proxy sees a notice filed there, and while a notice of theirs is pending (for
# clients that do not use the proxy).  due -> idle; quarantined when it keeps failing.
answer_checks = Table(
    "answer_checks",
    metadata,
    Column("owner", String(254), primary_key=True),
    Column("status", String(12), nullable=False, server_default="due"),
    *work_columns(),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_answer_checks_work", "status", "next_attempt"),
)

# One protocol run per (exchange, role): the serialised role machine and its next deadline.
runs = Table(
    "runs",
    metadata,
    Column("cid", LargeBinary(32), primary_key=True),
    Column("role", String(8), primary_key=True),  # sender | receiver
    Column("tx", String(32), nullable=False, index=True),
    Column("owner", String(254), nullable=False, index=True),  # the local user
    Column("peer", String(254), nullable=False),
    Column("subject", Text, nullable=False),
    Column("submission_id", Integer, ForeignKey("submissions.id"), nullable=True),
    Column("phase", String(16), nullable=False),
    Column("terminal", Boolean, nullable=False, default=False),
    Column("deadline", BigInteger, nullable=True),
    Column("state", EncryptedBinary("runs.state"), nullable=False),  # key shares (c: table pieces)
    Column("version", Integer, nullable=False, default=1),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # the deadline as a unit of work: a timer that raised is retried with backoff, and
    # quarantined (not fired again until an administrator retries it) past the bound
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("quarantined", Boolean, nullable=False, server_default=false()),
    Index("ix_runs_due", "terminal", "deadline"),
)

# Values as large as a mail, written once in pieces of PIECE bytes (``seq`` 0, 1, ...),
# each sealed on its own, so that no write or read holds more than a piece besides the
# value: a submission's mail (``owner`` "submission/ID"), a protocol mail the intake took
# ("inbound/ID"), and a run's c ("c/CID/ROLE").  ``size``: the whole value's length, on
# every piece.  Deleted with what owns them (tcms/store/pieces.py).  Rows stored before
# this table keep their value in their own column (``raw``, or c in ``runs.state``).
PIECE = 1024 * 1024
pieces = Table(
    "pieces",
    metadata,
    Column("owner", String(100), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("data", EncryptedBinary("pieces.data"), nullable=False),
)

# Every protocol message sent or received; outgoing ones form a transactional outbox.
messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cid", LargeBinary(32), nullable=False, index=True),
    Column("role", String(8), nullable=False),
    Column("direction", String(3), nullable=False),  # in | out
    Column("destination", String(8), nullable=True),  # peer | ttp | tss (out only)
    Column("kind", String(16), nullable=False),
    Column("data", EncryptedBinary("messages.data"), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("sent_at", BigInteger, nullable=True),  # out: when the outbox delivered it
    # out, gateway: the local user and the peer address; a worker's lease and its retries
    Column("owner", String(254), nullable=True),
    Column("peer", String(254), nullable=True),
    Column("claimed_until", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("quarantined_at", BigInteger, nullable=True),  # out: set aside, see `tcms queue`
    Column("claimed_by", String(128), nullable=True),  # out: the gateway instance sending it
    Index("ix_messages_outbox", "direction", "sent_at"),
)

evidence = Table(
    "evidence",
    metadata,
    Column("cid", LargeBinary(32), primary_key=True),
    Column("role", String(8), primary_key=True),
    Column("verdict", String(16), nullable=False),
    Column("bundle", EncryptedText("evidence.bundle"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# The TTP's decisions: inserted once per cid, never updated (primary key = exactly once).
ttp_decisions = Table(
    "ttp_decisions",
    metadata,
    Column("cid", LargeBinary(32), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("answer", LargeBinary, nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("by", String(1), nullable=False),
    Column("sender", String(254), nullable=False),
    Column("recipient", String(254), nullable=False),
)

# The TSS's log: one row per time stamp; the serial number is the row's key, so serials are
# unique and increasing across restarts and processes (AUTOINCREMENT on SQLite).
tss_log = Table(
    "tss_log",
    metadata,
    Column("serial", Integer, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    Column("hash_alg", String(16), nullable=False),
    Column("imprint", LargeBinary, nullable=False),
    Column("nonce", String(40), nullable=True),
    Column("requester", String(254), nullable=True),
    Column("requester_fp", String(64), nullable=True),
    Column("token", LargeBinary, nullable=True),
    sqlite_autoincrement=True,
)

# The Distribution Center: gateways registered for their domains, published keys (every
# version kept: rotation supersedes, revocation marks), and the requests already seen.
dc_gateways = Table(
    "dc_gateways",
    metadata,
    Column("domain", String(254), primary_key=True),
    Column("gateway", String(254), nullable=False),
    Column("sig_pk", LargeBinary(32), nullable=False),
    Column("registered_at", BigInteger, nullable=False),
    Column("enc_pk", LargeBinary(32), nullable=True),
    Column("protocol_address", String(254), nullable=True),  # where its MTA routes m3-m6
)

dc_keys = Table(
    "dc_keys",
    metadata,
    Column("address", String(254), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("sig_pk", LargeBinary(32), nullable=False),
    Column("enc_pk", LargeBinary(32), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("status", String(12), nullable=False),
    Column("not_before", BigInteger, nullable=False),
    Column("not_after", BigInteger, nullable=False),
    Column("published_at", BigInteger, nullable=False),
    Column("changed_at", BigInteger, nullable=False),
    Column("reason", Text, nullable=True),
)

dc_requests = Table(
    "dc_requests",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("at", BigInteger, nullable=False),
)

# Append-only, hash-chained log of every decision and state change.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", BigInteger, nullable=False),
    Column("actor", String(254), nullable=False),
    Column("event", String(64), nullable=False),
    Column("cid", String(64), nullable=True, index=True),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("hash"),
)
