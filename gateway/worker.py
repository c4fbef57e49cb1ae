"""The gateway's protocol worker: independent loops, one per kind of work, each claiming
rows from SQL (gateway/queue.py) and handling every row on its own.

- inbound: protocol mail the intake stored (gateway/inbound.py);
- submissions: a certified submission becomes one sender run per recipient;
- answers: the accept/refuse folders of one user who filed a notice there (the IMAP
  proxy says so at once) or who has a notice pending (polled, for other clients);
- deadlines: R1S, R1R, R2S for runs whose timer is due;
- outbox: m1 to the TSS, m3-m6 to the peer gateway, requests to the TTP, mails for users
  (gateway/dispatch.py).

One item never delays another: each kind of work is a lane that keeps up to
``CONCURRENCY`` items in flight and claims the next as soon as one finishes, and an item
that raises is retried with backoff or quarantined without touching the rest (logged once
with its traceback when the failure is unexpected).  All state is in SQL, so a restarted
or second worker carries on where another stopped; a local kick wakes the lane that has
new work at once (the intake: inbound; the submission proxy: submissions; the IMAP proxy:
answers; a finished item: the outbox), and every lane also looks for work every
``poll_interval`` seconds (work stored by another replica).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiosmtplib
import httpx

from dc.records import DirectoryError
from gateway import dispatch, inbound, metrics, notices, retention
from gateway.context import GatewayContext
from gateway.imap import ImapError, Mailbox
from gateway.queue import AnswerCheck, InboundItem, SubmissionItem, backoff
from gateway.runs import apply, outbox, record
from gateway.subject import strip_tag, subject_of, without_tag
from tcms.identity import check_party_name, normalise_name
from tcms.protocol.events import Accept, Event, Ignored, Refuse, Tick
from tcms.protocol.fields import one_line
from tcms.protocol.messages import Description
from tcms.protocol.sender import Sender
from tcms.store import ConcurrentUpdate, OutMessage, RunRecord, StoredMessage

log = logging.getLogger("tcms.gateway.worker")
ACCEPT, REFUSE = ("Certified", "Accept"), ("Certified", "Refuse")
CONCURRENCY = 8  # items of one kind handled at the same time
# failures that may pass: retried quietly (a warning), quarantined past max_attempts
TRANSIENT: tuple[type[BaseException], ...] = (
    inbound.Transient, ImapError, OSError, TimeoutError, httpx.HTTPError,
    aiosmtplib.SMTPException, ConcurrentUpdate, DirectoryError, dispatch.Retry)
T = TypeVar("T")


def now_s() -> int:
    return int(time.time())


# --- submissions ------------------------------------------------------------------------


async def start_submission(ctx: GatewayContext, sub: SubmissionItem, now: int) -> None:
    """One sender run per recipient; a recipient that cannot be certified (no usable key
    at the DC, or not an address a party can have) gets no mail, and the sender a notice
    saying so.  Raises (to be retried) only when the DC cannot be asked."""
    sender = normalise_name(sub.sender)
    me = await ctx.enroll(sender)
    raw = await ctx.queues.mail_of("submission", sub.id)
    m0 = strip_tag(raw, ctx.tag)
    subject = one_line(without_tag(subject_of(raw), ctx.tag))
    del raw  # m0 is a copy: one mail fewer in memory while it is encrypted
    desc = Description(subject, len(m0), one_line(sub.message_id))
    runs: list[tuple[RunRecord, list[OutMessage]]] = []
    refused: list[OutMessage] = []
    wanted: dict[str, None] = {}
    for raw_rcpt in sub.recipients:
        try:
            wanted[check_party_name(raw_rcpt)] = None
        except ValueError as exc:
            log.warning("submission #%d: %s", sub.id, exc)
            refused.append(OutMessage("mailbox", "uncertifiable", _status_json(
                subject, str(exc)), sender, one_line(raw_rcpt, 200)))
    for rcpt in wanted:
        party = await ctx.party_of(rcpt)
        if party is None:
            why = (f"{rcpt} has no key at the Distribution Center, so the mail cannot be "
                   "certified for them")
            log.warning("submission #%d: %s", sub.id, why)
            refused.append(OutMessage("mailbox", "uncertifiable", _status_json(subject, why),
                                      sender, rcpt))
            continue
        machine, actions = Sender.start(me, ctx.trust, party, m0, desc, ctx.deadlines(now),
                                        tss=ctx.settings.tss.url,
                                        cipher_alg=ctx.settings.protocol.cipher)
        runs.append((record(machine, "sender", sender, rcpt, submission_id=sub.id),
                     outbox(actions, sender, rcpt)))
    status = "started" if runs else "failed"
    if await ctx.store.start_submission(sub.id, runs, refused, now=now, actor=ctx.me.name,
                                        status=status, detail=f"{len(runs)} run(s)"):
        log.info("submission #%d from %s: %d exchange(s) started, %d recipient(s) not "
                 "certifiable", sub.id, sender, len(runs), len(refused))


def _status_json(subject: str, text: str) -> bytes:
    return json.dumps({"subject": subject, "text": text}).encode()


# --- answers --------------------------------------------------------------------------------


async def answer(ctx: GatewayContext, user: str, tx: str, event: Event, now: int) -> str:
    """Accept or refuse, for ``user``'s own receiver run of exchange ``tx`` only."""
    runs = [r for r in await ctx.store.find_runs(tx)
            if r.role == "receiver" and r.owner == user and r.tx == tx]
    if not runs:
        return f"{user} has no certified mail {tx}"
    actions = await apply(ctx, runs[0], event, now)
    ignored = [a for a in actions if isinstance(a, Ignored)]
    return "; ".join(a.reason for a in ignored) if ignored else "done"


def is_answer_folder(name: str) -> bool:
    """``Certified.Accept``, ``Certified/Refuse``... (any delimiter, any case)."""
    flat = name.strip('"').replace("/", ".").lower()
    return flat in ("certified.accept", "certified.refuse")


async def check_answers(ctx: GatewayContext, user: str, now: int) -> None:
    """Act on the notices ``user`` filed into Certified.Accept / Certified.Refuse."""
    async with ctx.imap.session(user) as box:
        for parts, event in ((ACCEPT, Accept()), (REFUSE, Refuse())):
            await _answers(ctx, box, user, await box.folder(*parts), event, now)


async def _answers(ctx: GatewayContext, box: Mailbox, user: str, folder: str, event: Event,
                   now: int) -> None:
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    for uid in await box.search_header(folder, notices.NOTICE):
        raw = await box.fetch(uid)
        if raw is None:
            continue
        head = parser.parsebytes(raw)
        tx = str(head.get(notices.NOTICE, "")).strip().lower()
        sig = str(head.get(notices.NOTICE_SIG, "")).strip()
        if not notices.notice_is_genuine(ctx.me.party, tx, user, sig):
            log.warning("%s: a mail in %s is not a genuine notice; moved back to INBOX",
                        user, folder)
            await box.move(uid, "INBOX")
            continue
        outcome = await answer(ctx, user, tx, event, now)
        verb = "accepted" if isinstance(event, Accept) else "refused"
        if outcome == "done":
            log.info("exchange %s: %s %s it (folder %s)", tx, user, verb, folder)
        else:
            log.warning("exchange %s: %s could not be %s: %s", tx, user, verb, outcome)
        await box.delete(uid)


# --- deadlines ---------------------------------------------------------------------------------


def deadline_key(rec: RunRecord) -> str:
    return f"{rec.cid.hex()}/{rec.role}"


# --- the loops -------------------------------------------------------------------------------


class Worker:
    def __init__(self, ctx: GatewayContext, clock: Callable[[], int] = now_s) -> None:
        self.ctx = ctx
        self.clock = clock
        self._wake: dict[str, asyncio.Event] = {}

    def kick(self, *lanes: str) -> None:
        """New work was stored here: wake those lanes now (all of them if none is named)."""
        for name, ev in self._wake.items():
            if not lanes or name in lanes:
                ev.set()

    def kick_inbound(self) -> None:
        self.kick("inbound")

    def kick_submissions(self, kind: str) -> None:
        """The submission proxy (of this process or a worker process) took a mail of
        ``kind``: a certified submission, stored, or an answer to a notice by mail (its m4
        is in the outbox).  Counted, and the lanes look at once."""
        metrics.MAILS_IN.labels(kind).inc()
        self.kick("submissions", "outbox")

    async def answers_filed(self, user: str, folder: str) -> None:
        """The IMAP proxy saw ``user`` file mail into ``folder``: if it is an answer
        folder, look at that user's answers now."""
        if not is_answer_folder(folder):
            return
        try:
            name = normalise_name(user)
        except ValueError:
            return
        now = self.clock()
        await self.ctx.queues.want_answer_check(name, now, now)
        log.info("%s filed mail into %s: looking at their answers now", name, folder)
        self.kick("answers")

    # --- isolation ------------------------------------------------------------------

    async def isolated(self, kind: str, key: str | int, attempts: int,
                       work: Callable[[], Awaitable[object]], what: str = "") -> None:
        """Run one item; a failure is the item's alone: retried with backoff, or
        quarantined after max_attempts.  An unexpected one is logged with its traceback
        on its first try only.  ``what`` describes the item in log lines."""
        name = f"{kind} {key}" + (f" ({what})" if what else "")
        try:
            await work()
            return
        except asyncio.CancelledError:
            raise
        except TRANSIENT as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            error = f"unexpected {type(exc).__name__}: {exc}"
            if attempts <= 1:
                log.exception("%s failed unexpectedly", name)
        try:
            status = await self.ctx.queues.fail(kind, key, attempts, self.clock(), error)
        except Exception as exc:  # the database itself: the lease runs out, then a retry
            log.warning("%s: %s; could not record the failure: %r", name, error, exc)
            return
        if status == "quarantined":
            log.error("%s quarantined after %d tries: %s (see `tcms queue show %s %s`)",
                      name, attempts, error, kind, key)
        else:
            log.warning("%s: %s (try %d; retrying in %ds)", name, error, attempts,
                        backoff(attempts))

    # --- the lanes: how each kind of work is claimed and handled -------------------

    def lanes(self) -> list[Lane[Any]]:
        ctx = self.ctx
        poll = ctx.settings.gateway.answer_poll_interval

        async def inbound_item(item: InboundItem) -> None:
            async def work() -> None:
                outcome, hints = await inbound.handle_stored(ctx, item.id, self.clock())
                if outcome.status == "rejected":
                    log.warning("inbound #%d from %s rejected: %s", item.id, item.mail_from,
                                outcome.detail)
                await ctx.queues.finish("inbound", item.id, self.clock(),
                                        status=outcome.status, detail=outcome.detail,
                                        hints=hints)
            await self.isolated("inbound", item.id, item.attempts, work)

        async def submission(sub: SubmissionItem) -> None:
            await self.isolated("submission", sub.id, sub.attempts,
                                lambda: start_submission(ctx, sub, self.clock()))

        async def answers(check: AnswerCheck) -> None:
            async def work() -> None:
                await check_answers(ctx, check.owner, self.clock())
                now = self.clock()
                if await ctx.store.has_pending_notice(check.owner):
                    await ctx.queues.reschedule_answers(check.owner, int(now + poll), now)
                else:
                    await ctx.queues.finish("answers", check.owner, now)
            await self.isolated("answers", check.owner, check.attempts, work)

        async def due(limit: int) -> list[RunRecord]:
            runs = await ctx.store.due_runs(self.clock(), limit)
            return [r for r in runs if ctx.identity(r.owner) is not None]

        async def deadline(rec: RunRecord) -> None:
            async def work() -> None:
                await apply(ctx, rec, Tick(), self.clock())
                metrics.DEADLINES.labels(rec.role).inc()
            await self.isolated("deadline", deadline_key(rec), rec.attempts + 1, work)

        async def outbox(limit: int) -> list[StoredMessage]:
            await ctx.imap.sweep()
            return await ctx.store.claim_outbox(self.clock(), dispatch.LEASE, limit,
                                                by=ctx.queues.instance)

        async def send(row: StoredMessage) -> None:
            await self.isolated("outbox", row.id, row.attempts,
                                lambda: dispatch.dispatch(ctx, row, self.clock()),
                                f"{row.kind} to {row.destination}")

        return [
            Lane("inbound", lambda n: ctx.queues.claim_inbound(self.clock(), n),
                 inbound_item, lambda i: i.id),
            Lane("submissions", lambda n: ctx.queues.claim_submissions(self.clock(), n),
                 submission, lambda i: i.id),
            Lane("answers", lambda n: ctx.queues.claim_answer_checks(self.clock(), n),
                 answers, lambda i: i.owner),
            # a due run stays due while its tick runs: skip it then, and look at most
            # once a second (a deadline is a time in seconds)
            Lane("deadlines", due, deadline, deadline_key, queue_same_key=False,
                 min_interval=1.0),
            # one exchange's messages go out in order (a receipt after the stamp it shows)
            Lane("outbox", outbox, send, lambda r: (r.cid, r.role)),
        ]

    async def run_lane(self, lane: Lane[Any]) -> None:
        """Claim and handle ``lane``'s work for ever: up to CONCURRENCY items in flight,
        more claimed as soon as one finishes, a kick, or every poll_interval."""
        wake = self._wake.setdefault(lane.name, asyncio.Event())
        interval = self.ctx.settings.gateway.poll_interval
        queues: dict[Hashable, deque[Any]] = {}
        tasks: set[asyncio.Task[None]] = set()
        last = 0.0

        async def drain(k: Hashable) -> None:
            q = queues[k]
            try:
                while q:
                    await lane.handle(q[0])
                    q.popleft()
            finally:
                del queues[k]
                self.kick("outbox")  # what an item did is sent by the outbox

        try:
            while True:
                wake.clear()
                started = 0
                room = CONCURRENCY - len(tasks)
                if room > 0 and time.monotonic() - last >= lane.min_interval:
                    last = time.monotonic()
                    try:
                        items = await lane.claim(room)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # e.g. the database is down: look again later
                        log.warning("%s: could not look for work: %r", lane.name, exc)
                        items = []
                    for item in items:
                        k = lane.key(item)
                        if k in queues:
                            if lane.queue_same_key:
                                queues[k].append(item)
                            continue
                        queues[k] = deque([item])
                        task = asyncio.create_task(drain(k))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        started += 1
                    # an item is its queue's alone: held here, the last one (a 25 MB mail)
                    # would stay in memory until the lane next claims something
                    item, items = None, []
                if started and len(tasks) < CONCURRENCY:
                    continue  # there may be more waiting
                waiter = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait([waiter, *tasks], timeout=interval,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        finally:  # cancelled (shutdown): the items in hand end with the lane, not after it
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> None:
        ctx = self.ctx
        lanes = self.lanes()
        self._wake = {lane.name: asyncio.Event() for lane in lanes}
        released = await ctx.queues.release_claims()
        if released:
            log.info("took back %d item(s) this instance (%s) held when it stopped", released,
                     ctx.queues.instance)
        log.info("protocol worker started for %s (protocol mail to %s); looking for work "
                 "every %.1fs", ", ".join(ctx.domains),
                 ", ".join(ctx.protocol_address(d) for d in ctx.domains),
                 ctx.settings.gateway.poll_interval)
        await asyncio.gather(*(self.run_lane(lane) for lane in lanes),
                             retention.run_periodically(ctx.store, ctx.settings.retention,
                                                        self.clock))


@dataclass
class Lane(Generic[T]):
    """One kind of work: how to claim up to n items, how to handle one (isolated), and the
    key that keeps items in order (items of one key never run at the same time)."""

    name: str
    claim: Callable[[int], Awaitable[list[T]]]
    handle: Callable[[T], Awaitable[None]]
    key: Callable[[T], Hashable]
    queue_same_key: bool = True  # False: an item whose key is in flight is skipped
    min_interval: float = 0.0  # seconds between two claims at the least
