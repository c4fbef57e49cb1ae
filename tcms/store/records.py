"""The typed rows the core store reads and writes: runs, the messages they send and
receive (the outbox), audit entries.  Rows are never handed around as dictionaries."""

from __future__ import annotations

from dataclasses import dataclass


class ConcurrentUpdate(Exception):
    """Another process changed the run first; reload and retry."""


@dataclass(frozen=True)
class RunRecord:
    cid: bytes
    role: str
    tx: str
    owner: str
    peer: str
    subject: str
    phase: str
    terminal: bool
    deadline: int | None
    state: bytes
    version: int = 0
    submission_id: int | None = None
    created_at: int = 0
    updated_at: int = 0
    # the deadline as a unit of work (see gateway/queue.py)
    attempts: int = 0
    next_attempt: int | None = None
    last_error: str | None = None
    quarantined: bool = False
    # c, to be stored with the run in table pieces (a new run, or one whose state held
    # c before that table); never read back into a record: Store.get_payload
    payload: bytes | None = None


@dataclass(frozen=True)
class OutMessage:
    """A message a run sends, before it is stored in the outbox."""

    destination: str  # peer | tss | ttp | mailbox (a mail for the local user to see)
    kind: str
    data: bytes
    owner: str | None = None
    peer: str | None = None


@dataclass(frozen=True)
class StoredMessage:
    """A row of table ``messages``: a protocol message a run received (``direction`` in) or
    sends (out: the outbox, with its lease, tries and last error)."""

    id: int
    cid: bytes
    role: str
    direction: str  # in | out
    destination: str | None  # out: peer | tss | ttp | mailbox
    kind: str
    data: bytes
    at: int
    sent_at: int | None = None
    owner: str | None = None
    peer: str | None = None
    claimed_until: int | None = None
    attempts: int = 0
    last_error: str | None = None
    quarantined_at: int | None = None
    claimed_by: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: int
    actor: str
    event: str
    cid: str | None
    detail: str
    prev_hash: str
    hash: str
