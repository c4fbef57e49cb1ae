"""Handling one protocol mail that the intake stored: decide, from the signed message
alone, whose exchange it belongs to, and apply it.

The envelope and the headers are only hints: the owner of the work is read from the
signed protocol message.  An m3 belongs to the recipient its core names (who must be a
user of this gateway); m4, m6 and refusals to the sender run, and m5 to the receiver run,
of the exchange whose cid they carry.  So a replayed or misdirected m3 can never consume,
block or overwrite another user's exchange, and an m3 that fails a check leaves no run
behind: a forged copy that arrives first cannot occupy the genuine mail's place.

Outcomes: ``Outcome("done", ...)`` (applied, or a harmless repeat) and
``Outcome("rejected", reason)`` with the named check.  Anything transient (the DC or the
database unavailable) raises, and the worker retries the item with backoff.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dc.records import DirectoryError
from gateway import mailformat
from gateway.context import GatewayContext
from gateway.runs import apply, outbox, record
from tcms.identity import Party
from tcms.protocol.events import Ignored, Received
from tcms.protocol.messages import M3, M4, M5, M6, MessageError, Refusal
from tcms.protocol.receiver import Receiver
from tcms.store import ConcurrentUpdate

log = logging.getLogger("tcms.gateway.inbound")


class Transient(Exception):
    """A failure that may pass (a service unavailable): try the item again later."""


@dataclass(frozen=True)
class Outcome:
    status: str  # done | rejected
    detail: str


def done(detail: str) -> Outcome:
    return Outcome("done", detail)


def rejected(detail: str) -> Outcome:
    return Outcome("rejected", detail)


async def handle(ctx: GatewayContext, raw: bytes, now: int) -> Outcome:
    pm = read(raw)
    return pm if isinstance(pm, Outcome) else await take(ctx, pm, now)


async def handle_stored(ctx: GatewayContext, key: int,
                        now: int) -> tuple[Outcome, tuple[str, str]]:
    """``handle`` of the protocol mail the intake stored as ``key``, and the (kind, tx)
    its headers claim; the mail is let go once its message is read from it (an m3 holds
    c: the mail and the message would be in memory twice while the exchange starts)."""
    raw = await ctx.queues.mail_of("inbound", key)
    hints = mailformat.hints(raw)
    pm = read(raw)
    del raw
    return (pm if isinstance(pm, Outcome) else await take(ctx, pm, now)), hints


def read(raw: bytes) -> mailformat.ProtocolMail | Outcome:
    """The protocol message ``raw`` carries, or why it is rejected."""
    try:
        pm = mailformat.parse(raw)
    except mailformat.MailFormatError as exc:
        return rejected(f"mail.format: {exc}")
    if pm is None:
        return rejected("mail.format: not a TCMS protocol mail (no TCMS-Message header)")
    return pm


async def take(ctx: GatewayContext, pm: mailformat.ProtocolMail, now: int) -> Outcome:
    if pm.kind == "m3":
        return await take_m3(ctx, pm.data, now)
    return await take_step(ctx, pm.kind, pm.data, now)


async def _sender_party(ctx: GatewayContext, name: str) -> Party | None:
    """The sender's key at the DC; None if the DC knows no usable key (a check fails);
    Transient if the DC cannot be asked now."""
    try:
        return await ctx.party_of(name)
    except DirectoryError as exc:
        if exc.check == "unknown":
            return None
        raise Transient(f"the DC: {exc}") from None


async def take_m3(ctx: GatewayContext, data: bytes, now: int) -> Outcome:
    try:
        m3 = M3.decode(data)
    except MessageError as exc:
        return rejected(f"m3.format: {exc}")
    hdr = m3.core.header
    owner, sender_name = hdr.recipient.name, hdr.sender.name
    if not ctx.serves(owner):
        return rejected(f"m3.recipient: {owner} is not in this gateway's domains")
    me = ctx.identity(owner)
    if me is None:
        return rejected(f"m3.recipient: {owner} is not enrolled at this gateway")
    existing = await ctx.store.get_run(m3.cid, "receiver")
    if existing is not None:
        if existing.owner == owner:
            return done(f"exchange {existing.tx}: a repeat of its m3")
        return rejected("m3.cid: the exchange belongs to another user")
    sender = await _sender_party(ctx, sender_name)
    cid = m3.cid
    del m3  # it holds c, as big as the mail: the machine decodes data again
    machine, actions = Receiver.from_m3(me, ctx.trust, data, now,
                                        lambda n: sender if n == sender_name else None)
    tx = hdr.tx.hex()
    if machine.phase == "rejected":
        log.warning("exchange %s: m3 from %s for %s rejected: %s", tx, sender_name, owner,
                    machine.state.reason)
        await ctx.store.audit("receiver", "m3.rejected", machine.state.reason[:500], now=now,
                              cid=cid)
        return rejected(machine.state.reason)
    rec = record(machine, "receiver", owner, sender_name)
    try:
        await ctx.store.save_run(rec, now=now, outbox=outbox(actions, owner, sender_name),
                                 received=[("m3", machine.m3_without_payload())],
                                 audit=[("receiver", f"phase.{machine.phase}", "")])
    except ConcurrentUpdate:
        return done(f"exchange {tx}: a repeat of its m3")
    log.info("exchange %s: sealed mail from %s for %s", tx, sender_name, owner)
    return done(f"exchange {tx}: notice for {owner}")


def step_cid(kind: str, data: bytes) -> bytes:
    """The exchange a step message names (MessageError if it does not parse)."""
    if kind == "m5":
        return M5.decode(data).cid
    cls = {"m4": M4, "m6": M6, "refusal": Refusal}[kind]
    return cls.decode(data).cid


async def take_step(ctx: GatewayContext, kind: str, data: bytes, now: int) -> Outcome:
    try:
        cid = step_cid(kind, data)
    except MessageError as exc:
        return rejected(f"{kind}.format: {exc}")
    role = "receiver" if kind == "m5" else "sender"
    rec = await ctx.store.get_run(cid, role)
    if rec is None or ctx.identity(rec.owner) is None:
        return rejected(f"{kind}.cid: this gateway has no {role} run of that exchange")
    actions = await apply(ctx, rec, Received(data), now, received=(kind, data))
    ignored = [a for a in actions if isinstance(a, Ignored)]
    if ignored and len(ignored) == len(actions):
        if all(a.repeat for a in ignored):
            return done(f"exchange {rec.tx}: {kind} again ({ignored[0].reason})")
        return rejected("; ".join(a.reason for a in ignored))
    return done(f"exchange {rec.tx}: {kind} applied")
