"""Retention: what the gateway keeps, and for how long ([retention], docs/operations.md).

Periods count from the moment an exchange is *final*: every run of it stored here has
ended (``runs.terminal``); its time is the newest ``runs.updated_at`` of those runs.  A
purge never touches an exchange that is not final, nor work still waiting (an unsent
outbox message, protocol mail not yet handled or quarantined).

- ``cleartext``: the mail as the user submitted it (``submissions.raw``) is emptied once
  every exchange started from it is final and the period has passed (default 0: as soon
  as the exchanges end); a submission that started none, counted from its submission;
- ``ciphertext``: the protocol messages sent and received (the ``messages`` log) and the
  protocol mail the intake kept (``inbound``, handled or rejected) are deleted;
- ``evidence`` (default 30 months): the exchange itself is deleted: its runs (the state
  and c every evidence bundle and `tcms tx export` is built from), stored bundles, remaining
  messages, and its submission once none of its exchanges is left;
- ``audit`` (default 0: for ever): audit entries older than the period are deleted from
  the head of the chain, and an entry ``retention.audit`` appended in the same
  transaction names the last one removed and its hash, so that the chain that remains
  still verifies (``tcms ttp audit``).

What is kept stays whole: `tcms tx export` of a kept exchange gives the same bundle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    delete,
    exists,
    func,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.queue import mail_kept
from tcms.config_ops import RetentionConfig
from tcms.store import Store, pieces
from tcms.store import models as m
from tcms.store.audit import AUDIT_PURGE_EVENT, audit_purge_detail

log = logging.getLogger("tcms.gateway.retention")
# the append-only triggers of tcms/store/migrations/versions/0001_initial.py
PG_LIFT = "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"
PG_RESTORE = "ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"
SQLITE_LIFT = "DROP TRIGGER audit_log_no_delete"
SQLITE_RESTORE = ("CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
                  "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END")
BATCH = 500  # exchanges handled per step and pass: a pass is one short transaction


@dataclass
class Report:
    """How many rows each step removed (or emptied, for ``cleartext``)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("cleartext", "messages", "inbound", "exchanges", "runs", "evidence", "submissions",
         "audit"), 0))

    def add(self, other: Report) -> None:
        for k, v in other.counts.items():
            self.counts[k] += v

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.counts.items())


def _settled() -> ColumnElement[bool]:
    """Messages that are no longer work: received, or sent (or dropped) already."""
    msgs = m.messages
    return (msgs.c.direction == "in") | msgs.c.sent_at.is_not(None)


def _pending() -> ColumnElement[bool]:
    """Outbox messages still to be sent (a quarantined one waits for an administrator)."""
    msgs = m.messages
    return and_(msgs.c.direction == "out", msgs.c.sent_at.is_(None),
                msgs.c.quarantined_at.is_(None))


async def _cids(conn: AsyncConnection, cutoff: int,
                where: ColumnElement[bool]) -> list[bytes]:
    """Up to BATCH cids of exchanges final at ``cutoff`` or before (every run ended by
    then) that meet ``where``."""
    r = m.runs
    q = (select(r.c.cid).where(where).group_by(r.c.cid)
         .having(func.sum(case((r.c.terminal.is_(True), 0), else_=1)) == 0)
         .having(func.max(r.c.updated_at) <= cutoff).limit(BATCH))
    return [bytes(x[0]) for x in (await conn.execute(q)).all()]


async def _cleartext(conn: AsyncConnection, cutoff: int) -> int:
    s, r, mine = m.submissions, m.runs, m.runs.alias("mine")
    # a run of any exchange started from it (the recipient may be served here too)
    unfinished = exists().where(r.c.cid == mine.c.cid, mine.c.submission_id == s.c.id,
                                (r.c.terminal.is_(False)) | (r.c.updated_at > cutoff))
    ids = [int(x[0]) for x in (await conn.execute(select(s.c.id).where(
        s.c.status != "new", mail_kept(s), s.c.created_at <= cutoff, ~unfinished))).all()]
    if ids:
        await conn.execute(update(s).where(s.c.id.in_(ids)).values(raw=b""))
        await pieces.remove(conn, [pieces.of_row("submissions", x) for x in ids])
    return len(ids)


async def _ciphertext(conn: AsyncConnection, cutoff: int, report: Report) -> None:
    msgs, i = m.messages, m.inbound
    cids = await _cids(conn, cutoff, m.runs.c.cid.in_(select(msgs.c.cid).where(_settled())))
    if cids:
        res = await conn.execute(delete(msgs).where(msgs.c.cid.in_(cids), _settled()))
        report.counts["messages"] += int(res.rowcount or 0)
    handled = (i.c.status.in_(("done", "rejected", "dropped", "probe"))
               & (i.c.finished_at <= cutoff))
    ids = [int(x[0]) for x in (await conn.execute(select(i.c.id).where(handled))).all()]
    if ids:
        await pieces.remove(conn, [pieces.of_row("inbound", x) for x in ids])
        res = await conn.execute(delete(i).where(i.c.id.in_(ids)))
        report.counts["inbound"] += int(res.rowcount or 0)


async def _evidence(conn: AsyncConnection, cutoff: int, report: Report) -> None:
    msgs, r, s = m.messages, m.runs, m.submissions
    # an exchange whose last mails are still to be written waits for them
    cids = await _cids(conn, cutoff, r.c.cid.not_in(select(msgs.c.cid).where(_pending())))
    if cids:
        res = await conn.execute(delete(msgs).where(msgs.c.cid.in_(cids)))
        report.counts["messages"] += int(res.rowcount or 0)
        res = await conn.execute(delete(m.evidence).where(m.evidence.c.cid.in_(cids)))
        report.counts["evidence"] += int(res.rowcount or 0)
        await pieces.remove(conn, [pieces.of_run(cid, role) for cid in cids
                                   for role in ("sender", "receiver")])
        res = await conn.execute(delete(r).where(r.c.cid.in_(cids)))
        report.counts["runs"] += int(res.rowcount or 0)
        report.counts["exchanges"] += len(cids)
    left = exists().where(r.c.submission_id == s.c.id)
    ids = [int(x[0]) for x in (await conn.execute(select(s.c.id).where(
        s.c.status != "new", s.c.created_at <= cutoff, ~left))).all()]
    if ids:
        await pieces.remove(conn, [pieces.of_row("submissions", x) for x in ids])
        res = await conn.execute(delete(s).where(s.c.id.in_(ids)))
        report.counts["submissions"] += int(res.rowcount or 0)


async def _audit(store: Store, conn: AsyncConnection, cutoff: int, now: int,
                 report: Report) -> None:
    a = m.audit_log
    newer = (await conn.execute(select(func.min(a.c.seq)).where(a.c.at > cutoff))).scalar()
    last_q = select(a.c.seq, a.c.hash).order_by(a.c.seq.desc()).limit(1)
    if newer is not None:
        last_q = last_q.where(a.c.seq < newer)
    last = (await conn.execute(last_q)).first()
    if last is None:
        return
    through, through_hash = int(last[0]), str(last[1])
    first = (await conn.execute(select(func.min(a.c.seq)))).scalar()
    # the entry that says so goes first: it is chained after the newest entry
    await store.append_audit(conn, now, "retention", AUDIT_PURGE_EVENT, None,
                             audit_purge_detail(int(first or 1), through, through_hash))
    # the table is append-only (a trigger refuses UPDATE and DELETE): the trigger is
    # lifted for this one DELETE, inside this transaction, and put back before it commits
    pg = store.is_postgres
    await conn.execute(text(PG_LIFT if pg else SQLITE_LIFT))
    res = await conn.execute(delete(a).where(a.c.seq <= through))
    await conn.execute(text(PG_RESTORE if pg else SQLITE_RESTORE))
    report.counts["audit"] += int(res.rowcount or 0)


async def purge_once(store: Store, policy: RetentionConfig, now: int, *,
                     dry_run: bool = False) -> Report:
    """One pass (at most BATCH exchanges per step), in one transaction; ``dry_run``
    rolls it back and only reports."""
    report = Report()
    async with store.engine.connect() as conn:
        trans = await conn.begin()
        try:
            report.counts["cleartext"] += await _cleartext(conn, now - policy.cleartext)
            await _ciphertext(conn, now - policy.ciphertext, report)
            await _evidence(conn, now - policy.evidence, report)
            if policy.audit:
                await _audit(store, conn, now - policy.audit, now, report)
        except BaseException:
            await trans.rollback()
            raise
        if dry_run:
            await trans.rollback()
        else:
            await trans.commit()
    return report


async def purge(store: Store, policy: RetentionConfig, now: int, *,
                dry_run: bool = False, passes: int = 1000) -> Report:
    """Purge everything past its period as of ``now`` (passes until one removes nothing;
    a dry run makes one pass)."""
    from gateway import metrics

    report = Report()
    for _ in range(1 if dry_run else passes):
        step = await purge_once(store, policy, now, dry_run=dry_run)
        report.add(step)
        if dry_run or step.total == 0:
            break
    if not dry_run:
        for what, n in report.counts.items():
            if n:
                metrics.PURGED.labels(what).inc(n)
    return report


async def run_periodically(store: Store, policy: RetentionConfig,
                           clock: Callable[[], int]) -> None:
    """The gateway worker's purge: at start, then every ``policy.interval`` seconds."""
    if not policy.interval:
        log.info("retention: no periodic purge (retention.interval = 0)")
        return
    while True:
        try:
            report = await purge(store, policy, clock())
            if report.total:
                log.info("retention: purged %s", report)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database is down: next time
            log.warning("retention: the purge failed: %r", exc)
        await asyncio.sleep(policy.interval)
