"""Carrying out the outbox: protocol messages to the peer as e-mail through the upstream
MTA, m1 and receipt stamps to the TSS, recovery requests to the TTP (their answers fed
back to the machine in the same transaction that marks the request done), and mails the
local user must see APPENDed to their mailbox exactly once (worded and signed by the
context's notices.Writer)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import aiosmtplib
import httpx

from gateway import mailformat, metrics, notices
from gateway.context import GatewayContext
from gateway.imap import Mailbox
from gateway.runs import apply
from gateway.wording import STATUS_KINDS
from tcms import evidence
from tcms.protocol import checks
from tcms.protocol.events import Ignored, Received, TimestampFailed, TimestampReply
from tcms.protocol.messages import M3
from tcms.protocol.receiver import ReceiverState
from tcms.protocol.state import load_state
from tcms.store import RunRecord, StoredMessage
from tcms.text import printable
from tcms.web import CBOR, read_answer

log = logging.getLogger("tcms.gateway.outbox")
LEASE = 30  # seconds a claimed message is ours before another worker may retry it
MAX_TSS_ATTEMPTS = 8
# A mailed evidence bundle carries c up to this size; a larger c is left out (the mail
# stays readable and small), and `tcms tx export` writes the complete bundle from the store.
MAILED_C_LIMIT = 1024 * 1024
# the most of a TSS's or TTP's answer read: a reply with its certificates is a few KB
MAX_ANSWER = 1024 * 1024


class Retry(Exception):
    """A temporary failure: try this message again later."""


async def _run_of(ctx: GatewayContext, row: StoredMessage) -> RunRecord | None:
    return await ctx.store.get_run(row.cid, row.role)


async def dispatch(ctx: GatewayContext, row: StoredMessage, now: int) -> None:
    dest = row.destination
    if dest == "mailbox":
        await to_mailbox(ctx, row, now)
        return
    if dest == "peer":  # the run's names only: a message to the peer needs no state
        names = await ctx.store.run_names(row.cid, row.role)
        if names is None:
            log.error("outbox #%d belongs to no exchange; dropped", row.id)
            await ctx.store.outbox_done(row.id, now)
            return
        await to_peer(ctx, names, row)
        await ctx.store.outbox_done(row.id, now)
        metrics.MAILS_OUT.labels("peer", row.kind).inc()
        log.info("exchange %s: %s sent to %s", names[0], row.kind, names[2])
        return
    rec = await _run_of(ctx, row)
    if rec is None:
        log.error("outbox #%d belongs to no exchange; dropped", row.id)
        await ctx.store.outbox_done(row.id, now)
        return
    if dest == "tss":
        await to_tss(ctx, rec, row, now)
    elif dest == "ttp":
        await to_ttp(ctx, rec, row, now)
    else:
        log.error("outbox #%d: unknown destination %r; dropped", row.id, dest)
        await ctx.store.outbox_done(row.id, now)


async def to_peer(ctx: GatewayContext, names: tuple[str, str, str, str],
                  row: StoredMessage) -> None:
    """A protocol message to the peer's gateway: from this gateway's protocol address to
    the one the DC publishes for the peer's domain; the users are named inside it.
    ``names``: the run's tx, owner, peer and subject (Store.run_names)."""
    tx, owner, peer, subject = names
    domain = owner.rsplit("@", 1)[-1]
    ours = ctx.protocol_address(domain)
    theirs = await ctx.protocol_address_of(peer)
    mail = await _mail_of(ctx, row, sender=ours, recipient=theirs, tx=tx, domain=domain,
                          description=subject)
    try:
        await ctx.upstream.send_mail(mail, ours, [theirs])
    except aiosmtplib.SMTPResponseException as exc:
        raise Retry(f"upstream SMTP answered {exc.code} {exc.message}") from None


async def _mail_of(ctx: GatewayContext, row: StoredMessage, **frame: str) -> bytes:
    """The mail of an outbox message to the peer.  An m3 queued with c left out
    (gateway/runs.py) gets the run's c written into its mail a stored piece at a time."""
    m3 = M3.decode(row.data) if row.kind == "m3" else None
    if m3 is None or m3.c:
        return mailformat.build(row.data, **frame)
    size = await ctx.store.payload_size(row.cid, row.role)
    if size is None:
        raise Retry(f"exchange {frame['tx']}: the sender's c is missing")
    before, after = m3.encoded_around_c(size)
    writer = mailformat.MailWriter("m3", len(before) + size + len(after), **frame)
    writer.write(before)
    async for piece in ctx.store.payload_pieces(row.cid, row.role, size):
        writer.write(piece)
    writer.write(after)
    return writer.finish()  # type: ignore[return-value]  # a bytearray, not copied again


async def _post(ctx: GatewayContext, url: str, data: bytes, media: str) -> httpx.Response:
    """The service's answer, read up to MAX_ANSWER bytes: a larger one is a Retry, as a
    service that cannot be reached is."""
    try:
        async with ctx.http.stream("POST", url, content=data,
                                   headers={"Content-Type": media}) as r:
            body = await read_answer(r, MAX_ANSWER)
    except httpx.HTTPError as exc:
        raise Retry(f"{url}: {exc!r}") from None
    if body is None:
        raise Retry(f"{url}: answered {r.status_code} with more than {MAX_ANSWER} bytes")
    # the body as read (decoded already): its Content-Encoding must not be applied again
    media_type = r.headers.get("content-type")
    return httpx.Response(r.status_code, content=body,
                          headers={"Content-Type": media_type} if media_type else None)


async def to_tss(ctx: GatewayContext, rec: RunRecord, row: StoredMessage, now: int) -> None:
    base = ctx.settings.tss.url.rstrip("/")
    data = row.data
    with metrics.Timer(metrics.ROUND_TRIP.labels("tss", row.kind)):
        if row.kind == "m1":
            r = await _post(ctx, base + "/m1", data, CBOR)
        else:  # receipt-stamp: a plain RFC 3161 query over H(m6)
            r = await _post(ctx, base + "/tsa", data, "application/timestamp-query")
    if r.status_code != 200:
        if row.kind == "m1" and (r.status_code < 500 or row.attempts >= MAX_TSS_ATTEMPTS):
            await apply(ctx, rec, TimestampFailed(answered("TSS", r)), now, done=row.id)
            return
        raise Retry(answered("TSS", r))
    actions = await apply(ctx, rec, TimestampReply(r.content), now, done=row.id)
    if row.kind == "m1" and all(isinstance(a, Ignored) for a in actions):
        reason = "; ".join(a.reason for a in actions if isinstance(a, Ignored))
        await apply(ctx, rec, TimestampFailed(reason), now)


def answered(peer: str, r: httpx.Response) -> str:
    """What a service's refusal says, for a user's mail and the log: its status and the
    check it names (``{"error": check, "reason": ...}``), bounded and printable."""
    said = f"{peer} answered {r.status_code}"
    try:
        body = json.loads(r.content[:4096])
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes
        return said
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return said
    reason = body.get("reason")
    named = f"{body['error']}: {reason}" if isinstance(reason, str) and reason else body["error"]
    return f"{said} ({printable(named)})"


async def to_ttp(ctx: GatewayContext, rec: RunRecord, row: StoredMessage, now: int) -> None:
    url = ctx.settings.ttp.url.rstrip("/") + ("/abort" if row.kind == "abort"
                                              else "/resolve")
    try:
        with metrics.Timer(metrics.ROUND_TRIP.labels("ttp", row.kind)):
            r = await _post(ctx, url, row.data, CBOR)
    except Retry:
        metrics.RECOVERY.labels(row.kind, "unreachable").inc()
        raise
    metrics.RECOVERY.labels(row.kind, "answered" if r.status_code == 200 else
                            "error" if r.status_code >= 500 else "refused").inc()
    if r.status_code >= 500:
        raise Retry(f"TTP answered {r.status_code}")
    if r.status_code != 200:
        # the TTP refused the request (named check); the machine asks again on its timer
        log.warning("exchange %s: the TTP refused %s: %s", rec.tx, row.kind,
                    answered("TTP", r))
        await ctx.store.outbox_done(row.id, now)
        return
    log.info("exchange %s: the TTP answered the %s request", rec.tx, row.kind)
    await apply(ctx, rec, Received(r.content), now, received=("ttp-answer", r.content),
                done=row.id)


# --- the local user's mailbox ---------------------------------------------------------------


async def to_mailbox(ctx: GatewayContext, row: StoredMessage, now: int) -> None:
    owner, peer = row.owner, row.peer
    if owner is None or peer is None:  # the gateway names both in every message it queues
        log.error("outbox #%d: %s mail for nobody; dropped", row.id, row.kind)
        await ctx.store.outbox_done(row.id, now)
        return
    rec = await _run_of(ctx, row)
    delivery_id = f"{row.cid.hex()[:32]}.{row.id}"
    async with ctx.imap.session(owner) as box:
        mail = await render(ctx, box, row, rec, owner, peer, delivery_id, now)
        if mail is not None:
            # attempts counts claims: 1 means no earlier claim can have appended it
            added = await box.append_once("INBOX", mail, notices.DELIVERY_ID, delivery_id,
                                          flags="" if row.kind != "submitted" else "\\Seen",
                                          retry=row.attempts > 1)
            if added:
                log.info("%s: %s mail for %s", rec.tx if rec else "-", row.kind, owner)
                await _count_mailbox(ctx, row.kind, rec)
    if row.kind == "notice":  # look at the user's answer folders until they answer
        poll = ctx.settings.gateway.answer_poll_interval
        await ctx.queues.want_answer_check(owner, int(now + poll), now)
    await ctx.store.outbox_done(row.id, now)


async def _count_mailbox(ctx: GatewayContext, kind: str, rec: RunRecord | None) -> None:
    """A mail for a user was written: count it, and time the steps it ends."""
    metrics.MAILS_OUT.labels("mailbox", kind).inc()
    if rec is None:
        return
    now = time.time()
    if kind == "notice" and rec.role == "receiver":
        stamped = load_state(ReceiverState, rec.state).sent_at
        if stamped:
            metrics.SUBMISSION_TO_NOTICE.observe(max(0.0, now - stamped))
    elif kind == "receipt" and rec.role == "sender":
        accepted = await metrics.m4_received_at(ctx.store, rec.cid)
        if accepted is not None:
            metrics.ACCEPT_TO_RECEIPT.observe(max(0.0, now - accepted))


async def render(ctx: GatewayContext, box: Mailbox, row: StoredMessage,
                 rec: RunRecord | None, owner: str, peer: str, delivery_id: str,
                 now: int) -> bytes | None:
    """The mail ``row`` shows ``owner`` (the local user; ``peer`` the other party): worded
    and signed by ``ctx.writer``, but the original."""
    kind, text, write = row.kind, row.data.decode(), ctx.writer
    if rec is None:
        if kind != "uncertifiable":
            log.error("outbox #%d: %s mail without an exchange; dropped", row.id, kind)
            return None
        info = json.loads(text)
        return write.status(kind, owner=owner, peer=peer, subject=info["subject"],
                            text=info["text"], tx="", delivery_id=delivery_id, issued=now)
    if rec.role == "receiver":
        st = load_state(ReceiverState, rec.state)
        m3 = M3.decode(st.m3)
        hdr = m3.core.header
        if kind == "notice":
            domain = owner.rsplit("@", 1)[-1]
            info = notices.NoticeInfo(
                tx=rec.tx, owner=owner, sender=hdr.sender.name,
                subject=hdr.description.subject, size=hdr.description.size,
                stamped=checks.utc(st.sent_at), accept_by=checks.utc(hdr.deadlines.accept_by),
                accept_folder=await box.folder("Certified", "Accept"),
                refuse_folder=await box.folder("Certified", "Refuse"),
                accept_address=f"tcms+accept-{rec.tx}@{domain}",
                refuse_address=f"tcms+refuse-{rec.tx}@{domain}")
            return write.notice(info, ctx.me, delivery_id)
        if kind == "deliver":
            if st.k_r is None or st.k_t is None:
                log.error("exchange %s: nothing to deliver yet", rec.tx)
                return None
            c = m3.c or await ctx.store.get_payload(rec.cid, rec.role)
            if not c:
                raise Retry(f"exchange {rec.tx}: the receiver's c is missing")
            m0 = checks.decrypt_payload(m3.core, c, st.k_r, st.k_t)
            del c, m3
            return notices.delivered(m0, tx=rec.tx, stamped=checks.utc(st.sent_at),
                                     delivered_at=checks.utc(rec.updated_at), how=st.reason,
                                     delivery_id=delivery_id)
    items = evidence.stored_items(rec.role, rec.state,
                                  await ctx.store.get_payload(rec.cid, rec.role))
    mailed, note = mailed_bundle(rec.role, items, rec.tx)
    if kind == "receipt":
        try:
            verdict = evidence.verify_items(items, ctx.trust)
        except evidence.EvidenceInvalid as exc:  # never expected: say so loudly
            log.error("exchange %s: own evidence does not verify: %s", rec.tx, exc)
            raise
        del items
        return write.receipt(owner=owner, peer=peer, subject=rec.subject, tx=rec.tx,
                             verdict=_noted(verdict, note), bundle=mailed,
                             delivery_id=delivery_id, issued=now)
    if rec.role == "receiver" and kind == "aborted":
        kind = "withdrawn"  # the same event, told from the recipient's side
    if kind not in STATUS_KINDS:
        log.error("outbox #%d: unknown mail kind %r; dropped", row.id, kind)
        return None
    attach, proven = None, None
    if kind in ("aborted", "refused"):
        attach = mailed
        try:
            proven = _noted(evidence.verify_items(items, ctx.trust), note)
        except evidence.EvidenceInvalid as exc:  # the bundle goes, without a summary
            log.error("exchange %s: own %s evidence does not verify: %s", rec.tx, kind, exc)
    return write.status(kind, owner=owner, peer=peer, subject=rec.subject, text=text,
                        tx=rec.tx, delivery_id=delivery_id, issued=now, bundle=attach,
                        verdict=proven)


def mailed_bundle(role: str, items: dict[str, bytes | None], tx: str) -> tuple[str, str | None]:
    """The bundle file a mail carries, and what it says of a c left out (larger than
    MAILED_C_LIMIT: the complete bundle is in the store, for `tcms tx export`)."""
    c = items.get("c")
    if c is None or len(c) <= MAILED_C_LIMIT:
        return evidence.dumps(evidence.bundle_of(role, items)), None
    mailed: dict[str, Any] = evidence.bundle_of(role, {**items, "c": None})
    return evidence.dumps(mailed), (
        f"the ciphertext c ({len(c)} bytes) is not attached, to keep this mail small: "
        f"`tcms tx export {tx}` at the gateway writes the complete evidence, which "
        "`tcms verify` checks")


def _noted(verdict: evidence.Verdict, note: str | None) -> evidence.Verdict:
    """The verdict a mail shows (without m0, which the mail does not carry: not kept in
    memory while it is written), with ``note`` as its last statement."""
    return dataclasses.replace(verdict, m0=None, statements=[*verdict.statements]
                               + ([note] if note else []))
