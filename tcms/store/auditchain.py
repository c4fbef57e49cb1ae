"""The audit log's hash chain: each entry's hash covers the previous one's.  Retention may
remove entries from the head of the chain (gateway/retention.py); the entry it appends in
the same transaction names the last entry removed and its hash, which the first entry
kept links to, so what remains still verifies."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from tcms.crypto import h

GENESIS = "0" * 64
AUDIT_PURGE_EVENT = "retention.audit"


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


def entry_hash(prev: str, seq: int, at: int, actor: str, ev: str, cid: str | None,
                detail: str) -> str:
    body = json.dumps([prev, seq, at, actor, ev, cid, detail], separators=(",", ":"))
    return h(body.encode()).hex()


def audit_purge_detail(first: int, through: int, through_hash: str) -> str:
    """What the audit entry of a purge says: which entries went, and the hash of the last
    one, which the first entry kept links to."""
    return f"entries {first}..{through} removed (entry {through} had hash {through_hash})"


def verify(entries: Sequence[AuditEntry]) -> tuple[int, str | None]:
    """Return (entries checked, None) or (index, reason) of the first broken link."""
    prev, first = GENESIS, 1
    if entries and entries[0].seq > 1:  # the head was purged: a later entry says so
        first, prev = entries[0].seq, entries[0].prev_hash
        said = audit_purge_detail(0, first - 1, prev).split("..", 1)[1]
        if not any(e.event == AUDIT_PURGE_EVENT and e.detail.endswith(said)
                   for e in entries):
            return 1, (f"entry {first}: the {first - 1} entries before it are missing "
                       "and no retention purge says so")
    for i, e in enumerate(entries, start=1):
        if e.seq != first + i - 1:
            return i, f"entry {i}: sequence number {e.seq} (an entry is missing)"
        if e.prev_hash != prev:
            return i, f"entry {i}: does not link to the previous entry"
        if e.hash != entry_hash(e.prev_hash, e.seq, e.at, e.actor, e.event, e.cid,
                                 e.detail):
            return i, f"entry {i}: its content does not match its hash"
        prev = e.hash
    return len(entries), None
