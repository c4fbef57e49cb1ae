"""The audit log: append-only and hash-chained.  Each entry's hash covers the previous
entry's hash and its own fields, so a removed, reordered or altered entry breaks the chain
(``verify``); entries are appended under a transaction-scoped lock (a PostgreSQL advisory
lock; SQLite transactions hold the write lock from BEGIN)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tcms.crypto import h
from tcms.store import models as m
from tcms.store.records import AuditEntry

AUDIT_LOCK = 0x7C3A_0001
GENESIS = "0" * 64


def entry_hash(prev: str, seq: int, at: int, actor: str, ev: str, cid: str | None,
               detail: str) -> str:
    body = json.dumps([prev, seq, at, actor, ev, cid, detail], separators=(",", ":"))
    return h(body.encode()).hex()


async def append(conn: AsyncConnection, *, postgres: bool, at: int, actor: str, ev: str,
                 cid: str | None, detail: str) -> None:
    """Append one entry in the caller's transaction."""
    if postgres:
        await conn.execute(select(func.pg_advisory_xact_lock(AUDIT_LOCK)))
    last = (await conn.execute(select(m.audit_log.c.seq, m.audit_log.c.hash).order_by(
        m.audit_log.c.seq.desc()).limit(1))).first()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    await conn.execute(insert(m.audit_log).values(
        seq=seq, at=at, actor=actor, event=ev, cid=cid, detail=detail, prev_hash=prev,
        hash=entry_hash(prev, seq, at, actor, ev, cid, detail)))


def verify(entries: Sequence[AuditEntry]) -> tuple[int, str | None]:
    """Return (entries checked, None) or (index, reason) of the first broken link."""
    prev = GENESIS
    for i, e in enumerate(entries, start=1):
        if e.seq != i:
            return i, f"entry {i}: sequence number {e.seq} (an entry is missing)"
        if e.prev_hash != prev:
            return i, f"entry {i}: does not link to the previous entry"
        if e.hash != entry_hash(e.prev_hash, e.seq, e.at, e.actor, e.event, e.cid, e.detail):
            return i, f"entry {i}: its content does not match its hash"
        prev = e.hash
    return len(entries), None
