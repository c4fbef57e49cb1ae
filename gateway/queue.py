"""The gateway's units of work in SQL, each an isolated, claimed row.

Five kinds of work, each a row with ``attempts``, ``next_attempt`` and ``last_error``:

- ``inbound``: protocol mail the MTA handed to the intake (table ``inbound``);
- ``submission``: a certified mail a user submitted (table ``submissions``);
- ``outbox``: a message to send or a mail to file (table ``messages``, direction out);
- ``answers``: a user whose accept/refuse folders must be looked at (``answer_checks``);
- ``deadline``: a run whose timer is due (table ``runs``).

A worker claims a row by moving ``next_attempt`` past now (a lease: if the worker dies,
the row is claimed again once the lease ends).  The outcome is one of:

- done: the row is finished (``done``, or for an outbox message ``sent_at``);
- rejected: a deterministic failure (a check, a malformed field): finished at once, with
  its named reason in ``detail``;
- retry: a transient failure (network) or an unexpected one (a bug): tried again after a
  backoff of 2, 4, 8 ... 300 s; after ``max_attempts`` tries the row is quarantined (the
  Mailman "shunt" idea) and waits for an administrator (``tcms queue retry|drop``).

Quarantining inbound mail never stops an exchange: its deadlines still drive R1S, R1R and
R2S.  Rows are read into typed records, never handed around as dictionaries; what an
administrator sees of them (`tcms queue list|show`) is gateway/queueview.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    cast,
    delete,
    exists,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from gateway import queueview
from gateway.queueview import ROWS, Entry, int_key, run_key
from tcms.store import Store, pieces
from tcms.store import models as m

ERROR_LIMIT = 1000  # characters of an error kept in last_error


def backoff(attempts: int) -> int:
    """Seconds to wait before try number ``attempts + 1``: 2, 4, 8 ... at most 300."""
    return int(min(300, 2 ** min(max(attempts, 1), 9)))


@dataclass(frozen=True)
class InboundItem:
    """A claimed protocol mail (the mail itself: ``Queues.mail_of``)."""

    id: int
    received_at: int
    mail_from: str
    rcpt: list[str]
    peer: str
    attempts: int


@dataclass(frozen=True)
class SubmissionItem:
    """A claimed submission (the mail itself: ``Queues.mail_of``)."""

    id: int
    message_id: str
    sender: str
    recipients: list[str]
    subject: str
    created_at: int
    attempts: int


@dataclass(frozen=True)
class AnswerCheck:
    owner: str
    attempts: int


def _free(t: Table, now: int) -> ColumnElement[bool]:
    return t.c.next_attempt.is_(None) | (t.c.next_attempt <= now)


def mail_kept(t: Table) -> ColumnElement[bool]:
    """Whether a row of ``submissions`` or ``inbound`` still holds its mail: in table
    pieces, or in its own column (stored before that table)."""
    owner = literal(pieces.of_row(t.name, 0)[:-1], String) + cast(t.c.id, String)
    return (t.c.raw != b"") | exists().where(m.pieces.c.owner == owner, m.pieces.c.seq == 0)


class Queues:
    """Claiming, finishing and failing units of work; the administrator's view of them."""

    def __init__(self, store: Store, *, lease: int = 120, max_attempts: int = 10,
                 instance: str | None = None) -> None:
        self.store = store
        self.lease = lease
        self.max_attempts = max_attempts
        self.instance = instance  # who claims: a restarted instance takes its claims back

    # --- claiming -------------------------------------------------------------------

    async def _claim(self, t: Table, key: Any, pending: ColumnElement[bool], now: int,
                     limit: int) -> list[Any]:
        """Claim up to ``limit`` pending rows in one transaction: pick them (PostgreSQL:
        locked, skipping rows another worker is claiming), then update exactly those.
        Their mail (``raw``) is not read: each is read when its item is handled
        (``mail_of``), so that a batch of large mails is never in memory at once.
        (One UPDATE ... WHERE id IN (SELECT ... LIMIT n) is not enough: PostgreSQL may run
        the subquery more than once and claim more than n.)"""
        pick = (select(key).where(pending, _free(t, now)).order_by(key).limit(limit)
                .with_for_update(skip_locked=True))
        async with self.store.transaction() as conn:
            keys = [r[0] for r in (await conn.execute(pick)).all()]
            if not keys:
                return []
            rows = (await conn.execute(
                update(t).where(key.in_(keys), pending, _free(t, now))
                .values(attempts=t.c.attempts + 1, next_attempt=now + self.lease,
                        claimed_by=self.instance)
                .returning(*(c for c in t.c if c.name != "raw")))).mappings().all()
        return sorted(rows, key=lambda r: r[key.name])

    async def mail_of(self, kind: str, key: int) -> bytes:
        """The mail of a claimed ``inbound`` or ``submission`` item (b"" once emptied):
        from table pieces, or from the row itself if it was stored before that table."""
        t = {"inbound": m.inbound, "submission": m.submissions}[kind]
        kept = await pieces.read(self.store.engine, pieces.of_row(t.name, key))
        if kept is not None:
            return kept
        async with self.store.engine.connect() as conn:
            raw = (await conn.execute(select(t.c.raw).where(t.c.id == key))).scalar()
        return b"" if raw is None else bytes(raw)

    async def claim_inbound(self, now: int, limit: int = 32) -> list[InboundItem]:
        t = m.inbound
        rows = await self._claim(t, t.c.id, t.c.status == "new", now, limit)
        return [InboundItem(int(r["id"]), int(r["received_at"]), str(r["mail_from"]),
                            list(json.loads(r["rcpt"])), str(r["peer"]),
                            int(r["attempts"])) for r in rows]

    async def claim_submissions(self, now: int, limit: int = 16) -> list[SubmissionItem]:
        t = m.submissions
        rows = await self._claim(t, t.c.id, t.c.status == "new", now, limit)
        return [SubmissionItem(int(r["id"]), str(r["message_id"]), str(r["sender"]),
                               [str(x) for x in json.loads(r["recipients"])],
                               str(r["subject"]), int(r["created_at"]),
                               int(r["attempts"])) for r in rows]

    async def claim_answer_checks(self, now: int, limit: int = 16) -> list[AnswerCheck]:
        t = m.answer_checks
        rows = await self._claim(t, t.c.owner, t.c.status == "due", now, limit)
        return [AnswerCheck(str(r["owner"]), int(r["attempts"])) for r in rows]

    async def release_claims(self) -> int:
        """At start: give back what this instance held when it stopped (killed, crashed),
        so that it is handled now rather than when its lease runs out.  Attempts stay
        counted.  Returns how many items (outbox messages included) were given back."""
        if not self.instance:
            return 0
        released = await self.store.release_outbox_claims(self.instance)
        async with self.store.transaction() as conn:
            for t, pending in ((m.inbound, m.inbound.c.status == "new"),
                               (m.submissions, m.submissions.c.status == "new"),
                               (m.answer_checks, m.answer_checks.c.status == "due")):
                res = await conn.execute(update(t).where(
                    t.c.claimed_by == self.instance, pending).values(
                    next_attempt=None, claimed_by=None))
                released += int(res.rowcount or 0)
        return released

    # --- adding work ----------------------------------------------------------------

    async def add_inbound(self, *, mail_from: str, rcpt: Sequence[str], peer: str, raw: bytes,
                          now: int) -> int:
        """Store protocol mail durably (the intake answers 250 only after this)."""
        async with self.store.transaction() as conn:
            res = await conn.execute(insert(m.inbound).returning(m.inbound.c.id), dict(
                received_at=now, mail_from=mail_from[:254], rcpt=json.dumps(list(rcpt)),
                peer=peer[:64], raw=b"", size=len(raw)))
            iid = int(res.scalar_one())
            await pieces.write(conn, pieces.of_row("inbound", iid), raw)
            return iid

    async def want_answer_check(self, owner: str, at: int, now: int) -> None:
        """Look at ``owner``'s answer folders at ``at`` (or sooner if already due sooner).
        A quarantined check stays quarantined until an administrator retries it."""
        t = m.answer_checks
        async with self.store.transaction() as conn:
            res = await conn.execute(update(t).where(
                t.c.owner == owner, t.c.status == "idle").values(
                status="due", attempts=0, next_attempt=at, updated_at=now))
            if res.rowcount:
                return
            await conn.execute(update(t).where(
                t.c.owner == owner, t.c.status == "due",
                t.c.next_attempt.is_(None) | (t.c.next_attempt > at)).values(
                next_attempt=at, updated_at=now))
            exists = (await conn.execute(select(t.c.owner).where(t.c.owner == owner))).first()
            if exists is None:
                try:
                    async with conn.begin_nested():
                        await conn.execute(insert(t).values(
                            owner=owner, status="due", next_attempt=at, updated_at=now))
                except IntegrityError:
                    pass  # another worker added it at the same moment

    async def reschedule_answers(self, owner: str, at: int, now: int) -> None:
        """Look at ``owner``'s answer folders again at ``at`` (a notice is still pending)."""
        t = m.answer_checks
        async with self.store.transaction() as conn:
            await conn.execute(update(t).where(t.c.owner == owner, t.c.status == "due").values(
                attempts=0, next_attempt=at, last_error=None, updated_at=now, claimed_by=None))

    # --- outcomes -------------------------------------------------------------------

    async def finish(self, kind: str, key: str | int, now: int, *, status: str = "done",
                     detail: str = "", hints: tuple[str, str] = ("", "")) -> None:
        """End a claimed row: ``done`` or ``rejected`` (with its named reason); for inbound
        mail, ``hints`` is the (kind, tx) its headers claim."""
        async with self.store.transaction() as conn:
            if kind == "inbound":  # a row another worker finished meanwhile stays as it is
                await conn.execute(update(m.inbound).where(
                    m.inbound.c.id == int(key), m.inbound.c.status == "new").values(
                    status=status, detail=detail[:ERROR_LIMIT], finished_at=now,
                    next_attempt=None, raw=b"" if status == "done" else m.inbound.c.raw,
                    kind=hints[0] or None, tx=hints[1] or None))
                if status == "done":  # handled: its mail is not kept (a rejected one is)
                    await pieces.remove(conn, [pieces.of_row("inbound", int(key))])
            elif kind == "answers":
                await conn.execute(update(m.answer_checks).where(
                    m.answer_checks.c.owner == str(key),
                    m.answer_checks.c.status == "due").values(
                    status="idle", attempts=0, next_attempt=None, last_error=None,
                    updated_at=now))
            elif kind == "submission":
                await conn.execute(update(m.submissions).where(
                    m.submissions.c.id == int(key), m.submissions.c.status == "new").values(
                    status=status, detail=detail[:ERROR_LIMIT], next_attempt=None))
            else:
                raise ValueError(f"finish: unknown kind {kind!r}")

    async def fail(self, kind: str, key: str | int, attempts: int, now: int,
                   error: str) -> str:
        """A transient or unexpected failure of a claimed row: retry after the backoff,
        or quarantine it after ``max_attempts`` tries.  Returns the new status."""
        quarantine = attempts >= self.max_attempts
        retry_at = None if quarantine else now + backoff(attempts)
        error = error[:ERROR_LIMIT]
        async with self.store.transaction() as conn:
            if kind in ROWS:
                w = ROWS[kind]
                values: dict[str, Any] = {"next_attempt": retry_at, "last_error": error,
                                          "claimed_by": None}
                if quarantine:
                    values["status"] = "quarantined"
                await conn.execute(update(w.table).where(w.key == w.parse(str(key)))
                                   .values(**values))
            elif kind == "outbox":
                await conn.execute(update(m.messages).where(m.messages.c.id == int(key))
                                   .values(claimed_until=retry_at, last_error=error,
                                           claimed_by=None,
                                           quarantined_at=now if quarantine else None))
            elif kind == "deadline":
                cid, role = run_key(str(key))
                await conn.execute(update(m.runs).where(
                    m.runs.c.cid == cid, m.runs.c.role == role).values(
                    attempts=attempts, next_attempt=retry_at, last_error=error,
                    quarantined=quarantine))
            else:
                raise ValueError(f"fail: unknown kind {kind!r}")
        return "quarantined" if quarantine else "retry"

    # --- the administrator's view ------------------------------------------------------

    async def entries(self, kind: str | None = None, *, everything: bool = False,
                      limit: int = 100) -> list[Entry]:
        """Work that is waiting, failing or quarantined (``everything``: finished too)."""
        return await queueview.entries(self.store, kind, everything=everything, limit=limit)

    async def entry(self, kind: str, key: str) -> Entry | None:
        return await queueview.entry(self.store, kind, key)

    async def retry(self, kind: str, key: str, now: int) -> bool:
        """Try a failed or quarantined row again now, with its attempts reset."""
        async with self.store.transaction() as conn:
            if kind == "inbound":
                res = await conn.execute(update(m.inbound).where(
                    m.inbound.c.id == int_key(key),
                    m.inbound.c.status.in_(("new", "quarantined", "rejected")),
                    mail_kept(m.inbound)).values(
                    status="new", attempts=0, next_attempt=now, detail=None))
            elif kind == "submission":
                res = await conn.execute(update(m.submissions).where(
                    m.submissions.c.id == int_key(key),
                    m.submissions.c.status.in_(("new", "quarantined"))).values(
                    status="new", attempts=0, next_attempt=now))
            elif kind == "outbox":
                res = await conn.execute(update(m.messages).where(
                    m.messages.c.id == int_key(key), m.messages.c.direction == "out",
                    m.messages.c.sent_at.is_(None)).values(
                    quarantined_at=None, attempts=0, claimed_until=now))
            elif kind == "answers":
                res = await conn.execute(update(m.answer_checks).where(
                    m.answer_checks.c.owner == key).values(
                    status="due", attempts=0, next_attempt=now))
            elif kind == "deadline":
                cid, role = run_key(key)
                res = await conn.execute(update(m.runs).where(
                    m.runs.c.cid == cid, m.runs.c.role == role).values(
                    quarantined=False, attempts=0, next_attempt=now))
            else:
                raise ValueError(f"unknown kind of work {kind!r}")
            return bool(res.rowcount)

    async def drop(self, kind: str, key: str, now: int) -> bool:
        """Give up on a row for good (an administrator's decision, kept in the audit)."""
        async with self.store.transaction() as conn:
            if kind == "inbound":
                res = await conn.execute(update(m.inbound).where(
                    m.inbound.c.id == int_key(key),
                    m.inbound.c.status.in_(("new", "quarantined", "rejected"))).values(
                    status="dropped", finished_at=now, next_attempt=None))
            elif kind == "submission":
                res = await conn.execute(update(m.submissions).where(
                    m.submissions.c.id == int_key(key),
                    m.submissions.c.status.in_(("new", "quarantined"))).values(
                    status="dropped", next_attempt=None))
            elif kind == "outbox":
                res = await conn.execute(update(m.messages).where(
                    m.messages.c.id == int_key(key), m.messages.c.direction == "out",
                    m.messages.c.sent_at.is_(None)).values(
                    sent_at=now, claimed_until=None, last_error="dropped by an administrator"))
            elif kind == "answers":
                res = await conn.execute(delete(m.answer_checks).where(
                    m.answer_checks.c.owner == key))
            else:
                raise ValueError(f"cannot drop {kind!r} work (a deadline belongs to its "
                                 "exchange: retry it, or let the exchange end)")
            if res.rowcount:
                await self.store.append_audit(conn, now, "admin", "queue.drop", None,
                                              f"{kind}:{key}")
            return bool(res.rowcount)

