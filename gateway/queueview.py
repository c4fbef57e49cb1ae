"""The units of work as an administrator sees them (`tcms queue list|show`): one ``Entry``
per row of each kind, and the keys an administrator types (a row number, ``CID/role``).
Claiming and finishing work is gateway/queue.py."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, RowMapping, Select, Table, and_, select

from tcms.store import Store
from tcms.store import models as m

KINDS = ("inbound", "submission", "outbox", "answers", "deadline")


@dataclass(frozen=True)
class Entry:
    """One unit of work as an administrator sees it."""

    kind: str
    key: str
    status: str
    attempts: int
    next_attempt: int | None
    last_error: str | None
    summary: str
    detail: str = ""


def int_key(key: str) -> int:
    try:
        return int(key)
    except ValueError:
        raise ValueError(f"{key!r} is not a row number") from None


def run_key(key: str) -> tuple[bytes, str]:
    """A deadline's key: the run's ``CID/role``."""
    cid, _, role = key.partition("/")
    try:
        raw = bytes.fromhex(cid)
    except ValueError:
        raise ValueError(f"{key!r} is not CID/role") from None
    if len(raw) != 32 or role not in ("sender", "receiver"):
        raise ValueError(f"{key!r} is not CID/role")
    return raw, role


@dataclass(frozen=True)
class Rows:
    """A kind of work kept in a table of its own, keyed by one column, with a status."""

    table: Table
    key: Column[Any]
    parse: Callable[[str], Any]  # the key as an administrator types it
    waiting: tuple[str, ...]  # the statuses listed without ``everything``


ROWS = {"inbound": Rows(m.inbound, m.inbound.c.id, int_key, ("new", "quarantined")),
        "submission": Rows(m.submissions, m.submissions.c.id, int_key, ("new", "quarantined")),
        "answers": Rows(m.answer_checks, m.answer_checks.c.owner, str, ("due", "quarantined"))}


async def entries(store: Store, kind: str | None = None, *, everything: bool = False,
                  limit: int = 100) -> list[Entry]:
    """Work that is waiting, failing or quarantined (``everything``: finished too)."""
    out: list[Entry] = []
    for k in KINDS if kind is None else (kind,):
        out.extend(await _entries(store, k, everything, limit, None))
    return out[:limit] if kind is None else out


async def entry(store: Store, kind: str, key: str) -> Entry | None:
    found = await _entries(store, kind, True, 1, key)
    return found[0] if found else None


Lister = Callable[[Store, bool, int, "str | None"], Awaitable[list[Entry]]]


async def _entries(store: Store, kind: str, everything: bool, limit: int,
                   key: str | None) -> list[Entry]:
    lister = _LISTERS.get(kind)
    if lister is None:
        raise ValueError(f"unknown kind of work {kind!r}; one of {', '.join(KINDS)}")
    return await lister(store, everything, limit, key)


async def _rows(store: Store, q: Select[Any]) -> list[RowMapping]:
    async with store.engine.connect() as conn:
        return list((await conn.execute(q)).mappings().all())


async def _listed(store: Store, kind: str, everything: bool, limit: int, key: str | None,
                  *columns: Column[Any]) -> list[RowMapping]:
    """The rows of a kind of work kept in its own table: the one ``key`` names, or the
    waiting ones, or all; with the unit of work's columns and ``columns``."""
    w = ROWS[kind]
    t = w.table
    q = select(w.key.label("key"), t.c.status, t.c.attempts, t.c.next_attempt,
               t.c.last_error, *columns)
    if key is not None:
        q = q.where(w.key == w.parse(key))
    elif not everything:
        q = q.where(t.c.status.in_(w.waiting))
    return await _rows(store, q.order_by(w.key).limit(limit))


def _entry(kind: str, r: RowMapping, summary: str, detail: str | None = "") -> Entry:
    return Entry(kind, str(r["key"]), r["status"], r["attempts"], r["next_attempt"],
                 r["last_error"], summary, detail or "")


async def _inbound(store: Store, everything: bool, limit: int, key: str | None) -> list[Entry]:
    t = m.inbound
    rows = await _listed(store, "inbound", everything, limit, key, t.c.mail_from, t.c.kind,
                         t.c.tx, t.c.size, t.c.detail)
    return [_entry("inbound", r, f"{r['kind'] or '?'} {r['tx'] or ''} from "
                   f"{r['mail_from']} ({r['size']} bytes)", r["detail"]) for r in rows]


async def _submissions(store: Store, everything: bool, limit: int,
                       key: str | None) -> list[Entry]:
    t = m.submissions
    rows = await _listed(store, "submission", everything, limit, key, t.c.sender,
                         t.c.recipients, t.c.detail)
    return [_entry("submission", r, f"from {r['sender']} to "
                   f"{', '.join(json.loads(r['recipients']))[:200]}", r["detail"])
            for r in rows]


async def _answers(store: Store, everything: bool, limit: int, key: str | None) -> list[Entry]:
    return [_entry("answers", r, f"accept/refuse folders of {r['key']}")
            for r in await _listed(store, "answers", everything, limit, key)]


async def _outbox(store: Store, everything: bool, limit: int, key: str | None) -> list[Entry]:
    t = m.messages
    q = select(t.c.id, t.c.sent_at, t.c.quarantined_at, t.c.attempts, t.c.claimed_until,
               t.c.last_error, t.c.destination, t.c.kind, t.c.owner, t.c.peer
               ).where(t.c.direction == "out")
    if key is not None:
        q = q.where(t.c.id == int_key(key))
    elif not everything:
        q = q.where(t.c.sent_at.is_(None))
    return [Entry("outbox", str(r["id"]), "sent" if r["sent_at"] is not None else
                  "quarantined" if r["quarantined_at"] is not None else "new",
                  r["attempts"], r["claimed_until"], r["last_error"],
                  f"{r['kind']} to {r['destination']} "
                  f"({r['owner'] or '-'} -> {r['peer'] or '-'})")
            for r in await _rows(store, q.order_by(t.c.id).limit(limit))]


async def _deadlines(store: Store, everything: bool, limit: int,
                     key: str | None) -> list[Entry]:
    t = m.runs
    q = select(t.c.cid, t.c.role, t.c.tx, t.c.phase, t.c.deadline, t.c.attempts,
               t.c.next_attempt, t.c.last_error, t.c.quarantined, t.c.owner)
    if key is not None:
        cid, role = run_key(key)
        q = q.where(t.c.cid == cid, t.c.role == role)
    elif not everything:
        q = q.where(and_(t.c.terminal.is_(False), t.c.attempts > 0))
    return [Entry("deadline", f"{bytes(r['cid']).hex()}/{r['role']}",
                  "quarantined" if r["quarantined"] else "new", r["attempts"],
                  r["next_attempt"], r["last_error"],
                  f"exchange {r['tx']} ({r['role']} of {r['owner']}, phase {r['phase']}, "
                  f"deadline {r['deadline']})")
            for r in await _rows(store, q.order_by(t.c.deadline).limit(limit))]


_LISTERS: dict[str, Lister] = {"inbound": _inbound, "submission": _submissions,
                               "outbox": _outbox, "answers": _answers,
                               "deadline": _deadlines}
