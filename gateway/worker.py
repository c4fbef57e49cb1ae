"""The gateway's protocol worker: it turns stored certified submissions into one protocol
run per recipient, reads protocol mail and the accept/refuse folders of the users it
serves, fires deadlines (R1S, R1R, R2S), and drains the outbox.  All state is in SQL, so a
restarted or second worker carries on where another stopped."""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from dc.records import DirectoryError
from gateway import dispatch, mailformat, notices
from gateway.context import GatewayContext
from gateway.imap import ImapError, Mailbox
from gateway.runs import apply, outbox, record
from gateway.subject import strip_tag, subject_of, without_tag
from tcms.identity import normalise_name
from tcms.protocol.events import Accept, Event, Ignored, Received, Refuse, Tick
from tcms.protocol.messages import M3, Description, MessageError
from tcms.protocol.receiver import Receiver
from tcms.protocol.sender import Sender
from tcms.store import ConcurrentUpdate, OutMessage, RunRecord

log = logging.getLogger("tcms.gateway.worker")
ACCEPT, REFUSE = ("Certified", "Accept"), ("Certified", "Refuse")
REJECTED = ("Certified", "Rejected")


def now_s() -> int:
    return int(time.time())


# --- submissions ------------------------------------------------------------------------


async def start_submissions(ctx: GatewayContext, now: int) -> int:
    """One sender run per recipient of each new certified submission; a recipient with no
    usable key at the DC gets no mail, and the sender a notice saying so."""
    done = 0
    for sub in await ctx.store.new_submissions():
        try:
            await _start_submission(ctx, sub, now)
            done += 1
        except (httpx.HTTPError, DirectoryError) as exc:
            log.warning("submission #%d waits: the DC is unavailable (%s)", sub["id"], exc)
    return done


async def _start_submission(ctx: GatewayContext, sub: dict[str, Any], now: int) -> None:
    sid, sender = int(sub["id"]), normalise_name(str(sub["sender"]))
    raw = bytes(sub["raw"])
    me = await ctx.enroll(sender)
    m0 = strip_tag(raw, ctx.tag)
    subject = without_tag(subject_of(raw), ctx.tag)
    desc = Description(subject[:900], len(m0), str(sub["message_id"])[:900])
    runs: list[tuple[RunRecord, list[OutMessage]]] = []
    refused: list[OutMessage] = []
    recipients = dict.fromkeys(normalise_name(r) for r in json.loads(str(sub["recipients"])))
    for rcpt in recipients:
        party = await ctx.party_of(rcpt)
        if party is None:
            why = (f"{rcpt} has no key at the Distribution Center, so the mail cannot be "
                   "certified for them")
            log.warning("submission #%d: %s", sid, why)
            refused.append(OutMessage("mailbox", "uncertifiable", json.dumps(
                {"subject": subject, "text": why}).encode(), sender, rcpt))
            continue
        machine, actions = Sender.start(me, ctx.trust, party, m0, desc, ctx.deadlines(now),
                                        tss=ctx.settings.tss.url,
                                        cipher_alg=ctx.settings.protocol.cipher)
        runs.append((record(machine, "sender", sender, rcpt, submission_id=sid),
                     outbox(actions, sender, rcpt)))
    status = "started" if runs else "failed"
    if await ctx.store.start_submission(sid, runs, refused, now=now, actor=ctx.me.name,
                                        status=status, detail=f"{len(runs)} run(s)"):
        log.info("submission #%d from %s: %d exchange(s) started, %d recipient(s) not "
                 "certifiable", sid, sender, len(runs), len(refused))


# --- protocol mail ------------------------------------------------------------------------


async def take_protocol_mail(ctx: GatewayContext, user: str, raw: bytes, now: int) -> str:
    """Process one protocol mail found in ``user``'s mailbox.  Returns ``done`` (consumed
    or a harmless repeat) or the reason it was rejected."""
    try:
        pm = mailformat.parse(raw)
    except mailformat.MailFormatError as exc:
        return f"malformed protocol mail: {exc}"
    if pm is None:
        return "not a protocol mail"
    if pm.kind == "m3":
        return await _take_m3(ctx, user, pm.data, now)
    role = "receiver" if pm.kind == "m5" else "sender"
    runs = [r for r in await ctx.store.find_runs(pm.tx) if r.role == role and r.owner == user]
    if not runs:
        return f"{pm.kind} for an exchange {pm.tx} that {user} has no {role} run in"
    actions = await apply(ctx, runs[0], Received(pm.data), now,
                          received=(pm.kind, pm.data))
    ignored = [a.reason for a in actions if isinstance(a, Ignored)]
    if ignored and len(ignored) == len(actions):
        if "phase" in ignored[0]:  # a repeat of a message already handled
            return "done"
        return "; ".join(ignored)
    return "done"


async def _take_m3(ctx: GatewayContext, user: str, data: bytes, now: int) -> str:
    me = ctx.identity(user)
    if me is None:
        return f"{user} is not enrolled at this gateway"
    try:
        sender_name = M3.decode(data).core.header.sender.name
    except MessageError as exc:
        return f"m3 does not parse: {exc}"
    sender = await ctx.party_of(sender_name)  # network errors: try the mail again later
    machine, actions = Receiver.from_m3(me, ctx.trust, data, now,
                                        lambda n: sender if n == sender_name else None)
    rec = record(machine, "receiver", user, sender_name)
    try:
        await ctx.store.save_run(rec, now=now, outbox=outbox(actions, user, sender_name),
                                 received=[("m3", data)],
                                 audit=[("receiver", f"phase.{machine.phase}",
                                         machine.state.reason)])
    except ConcurrentUpdate:
        return "done"  # the same m3 again
    if machine.phase == "rejected":
        log.warning("exchange %s: m3 from %s rejected: %s", rec.tx, sender_name,
                    machine.state.reason)
        return f"m3 rejected: {machine.state.reason}"
    log.info("exchange %s: sealed mail from %s for %s", rec.tx, sender_name, user)
    return "done"


async def answer(ctx: GatewayContext, user: str, tx: str, event: Event, now: int) -> str:
    """Accept or refuse, for ``user``'s own receiver run of exchange ``tx`` only."""
    runs = [r for r in await ctx.store.find_runs(tx)
            if r.role == "receiver" and r.owner == user and r.tx == tx]
    if not runs:
        return f"{user} has no certified mail {tx}"
    actions = await apply(ctx, runs[0], event, now)
    ignored = [a.reason for a in actions if isinstance(a, Ignored)]
    return "; ".join(ignored) if ignored else "done"


# --- one scan of a user's mailbox -----------------------------------------------------------


async def scan_mailbox(ctx: GatewayContext, user: str, now: int) -> None:
    async with ctx.imap.open(user) as box:
        hidden = await box.folder(ctx.settings.gateway.protocol_folder, subscribe=False)
        for folder in (hidden, "INBOX"):
            for uid in await box.search_header(folder, "TCMS-Message"):
                raw = await box.fetch(uid)
                if raw is None:
                    continue
                outcome = await take_protocol_mail(ctx, user, raw, now)
                if outcome == "done":
                    await box.delete(uid)
                else:
                    log.warning("%s: protocol mail moved to %s: %s", user,
                                ".".join(REJECTED), outcome)
                    await box.move(uid, await box.folder(*REJECTED))
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


async def fire_deadlines(ctx: GatewayContext, now: int) -> int:
    due = [r for r in await ctx.store.due_runs(now) if ctx.identity(r.owner) is not None]
    for rec in due:
        await apply(ctx, rec, Tick(), now)
    return len(due)


# --- the loop -------------------------------------------------------------------------------


class Worker:
    def __init__(self, ctx: GatewayContext, clock: Callable[[], int] = now_s) -> None:
        self.ctx = ctx
        self.clock = clock
        self.kick = asyncio.Event()

    async def _guard(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await step()
        except (ImapError, OSError, httpx.HTTPError) as exc:
            log.warning("%s: %s (will retry)", what, exc)
        except Exception:
            log.exception("%s failed (will retry)", what)

    async def once(self) -> None:
        """One pass over every kind of work."""
        ctx = self.ctx
        await self._guard("submissions", lambda: start_submissions(ctx, self.clock()))
        await self._guard("outbox", lambda: dispatch.drain(ctx, self.clock()))
        for user in ctx.users():
            await self._guard(f"mailbox of {user}", self._scanner(user))
        await self._guard("deadlines", lambda: fire_deadlines(ctx, self.clock()))
        await self._guard("outbox", lambda: dispatch.drain(ctx, self.clock()))

    def _scanner(self, user: str) -> Callable[[], Awaitable[None]]:
        return lambda: scan_mailbox(self.ctx, user, self.clock())

    async def run(self) -> None:
        interval = self.ctx.settings.gateway.poll_interval
        log.info("protocol worker started for %s (%d user(s)); polling every %.1fs",
                 ", ".join(self.ctx.domains), len(self.ctx.users()), interval)
        while True:
            await self.once()
            self.kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kick.wait(), timeout=interval)
