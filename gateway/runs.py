"""Role machines kept in SQL: load a run, apply one event, and store the new state together
with what it must send (the outbox) and what the user must see, in one transaction.

A run's c (its payload, as large as the mail) is stored once, with the run, in table
``pieces``; a step loads it only in the phases that read it (``needs_payload``), and the
sender's m3 is queued with c left out (gateway/dispatch.py puts it back when it mails m3).

Machine actions become outbox rows: ``Send`` keeps its destination (peer, tss, ttp);
``Notify`` and ``Deliver`` become ``mailbox`` rows (a mail for the local user).  A lost
optimistic-locking race reloads the run and applies the event again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway import metrics
from gateway.context import GatewayContext
from tcms.protocol.events import Action, Deliver, Event, Ignored, Notify, Send
from tcms.protocol.receiver import Receiver
from tcms.protocol.sender import Sender
from tcms.store import ConcurrentUpdate, OutMessage, RunRecord

log = logging.getLogger("tcms.gateway.runs")
Machine = Sender | Receiver


class UnknownRun(Exception):
    pass


async def load(ctx: GatewayContext, rec: RunRecord) -> tuple[Machine, bytes | None]:
    """The run's machine, holding c if its phase reads it; and c if the stored state
    itself held it (a run stored before table pieces: c moves there at its next save)."""
    me = ctx.identity(rec.owner)
    if me is None:
        raise UnknownRun(f"no key for {rec.owner}: cannot act on exchange {rec.tx}")
    cls: type[Machine] = Sender if rec.role == "sender" else Receiver
    machine = cls.load(me, ctx.trust, rec.state)
    if machine.payload:
        return machine, machine.payload
    if cls.needs_payload(rec.phase):
        c = await ctx.store.get_payload(rec.cid, rec.role)
        if c is None:
            raise UnknownRun(f"exchange {rec.tx}: the {rec.role}'s c is missing")
        machine = cls.load(me, ctx.trust, rec.state, c)
    return machine, None


def record(machine: Machine, role: str, owner: str, peer: str,
           prev: RunRecord | None = None, submission_id: int | None = None,
           payload: bytes | None = None) -> RunRecord:
    """The run to store: its state without c; c itself (``payload``) with a new run, or
    given as ``payload`` (a run whose state held it)."""
    hdr = machine.core.header
    return RunRecord(machine.cid, role, hdr.tx.hex(), owner, peer, hdr.description.subject,
                     machine.phase, machine.terminal, machine.deadline, machine.stored(),
                     prev.version if prev else 0,
                     prev.submission_id if prev else submission_id,
                     prev.created_at if prev else 0,
                     payload=machine.payload if prev is None else payload)


def outbox(actions: Sequence[Action], owner: str, peer: str) -> list[OutMessage]:
    out = []
    for a in actions:
        if isinstance(a, Send):
            out.append(OutMessage(a.to, a.kind, a.data, owner, peer))
        elif isinstance(a, Notify):
            out.append(OutMessage("mailbox", a.kind, a.text.encode(), owner, peer))
        elif isinstance(a, Deliver):  # m0 is derived again from the state when delivered
            out.append(OutMessage("mailbox", "deliver", b"", owner, peer))
    return out


def audit(actions: Sequence[Action], role: str, phase: str) -> list[tuple[str, str, str]]:
    sent = ", ".join(f"{a.kind} to {a.to}" for a in actions if isinstance(a, Send))
    return [(role, f"phase.{phase}", f"sent {sent}" if sent else "")]


async def apply(ctx: GatewayContext, rec: RunRecord, event: Event, now: int, *,
                received: tuple[str, bytes] | None = None,
                done: int | None = None) -> list[Action]:
    """Apply ``event`` to the stored run ``rec``; store state, outbox and audit at once.
    ``received`` records the incoming message; ``done`` marks an outbox message sent."""
    for _ in range(10):
        machine, moving = await load(ctx, rec)
        before = machine.phase
        actions = machine.handle(event, now)
        ignored = [a.reason for a in actions if isinstance(a, Ignored)]
        for reason in ignored:
            log.info("exchange %s (%s of %s): ignored: %s", rec.tx, rec.role, rec.owner,
                     reason)
        if ignored and len(ignored) == len(actions):
            if done is not None:
                await ctx.store.outbox_done(done, now)
            return actions
        try:
            await ctx.store.save_run(
                record(machine, rec.role, rec.owner, rec.peer, rec, payload=moving), now=now,
                outbox=outbox(actions, rec.owner, rec.peer),
                received=[received] if received else [],
                audit=audit(actions, rec.role, machine.phase), done=done)
        except ConcurrentUpdate:
            fresh = await ctx.store.get_run(rec.cid, rec.role)
            if fresh is None:
                raise UnknownRun(f"exchange {rec.tx} vanished") from None
            rec = fresh
            continue
        if machine.phase != before:
            if machine.terminal:
                metrics.EXCHANGES_ENDED.labels(rec.role, machine.phase).inc()
            log.info("exchange %s: %s %s -> %s", rec.tx, rec.role, before, machine.phase)
        return actions
    raise ConcurrentUpdate(f"exchange {rec.tx}: too many concurrent updates")
