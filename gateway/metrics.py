"""The gateway's Prometheus metrics (docs/operations.md, "Metrics").

Counters and histograms count what this instance did; the gauges (work waiting and
quarantined per kind, exchanges by role and phase) are read from SQL at scrape time, so
every instance sharing a database reports the same values.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from sqlalchemy import and_, func, select

from tcms.metrics import HUMAN_BUCKETS, ROUND_TRIP_BUCKETS, Families, SqlGauges, gauge
from tcms.store import Store
from tcms.store import models as m

MAILS_IN = Counter("tcms_gateway_mails_in", "Mails the gateway took: a certified "
                   "submission, protocol mail from the MTA, an answer by mail", ["kind"])
MAILS_OUT = Counter("tcms_gateway_mails_out", "Mails the gateway wrote: protocol mail to "
                    "a peer gateway (m3-m6, refusal), mails for its users (notice, "
                    "receipt, ...)", ["to", "kind"])
EXCHANGES_ENDED = Counter("tcms_gateway_exchanges_ended", "Runs this instance saw end, by "
                          "role and final phase", ["role", "outcome"])
DEADLINES = Counter("tcms_gateway_deadlines_fired", "Deadlines (R1S, R1R, R2S timers) this "
                    "instance acted on", ["role"])
RECOVERY = Counter("tcms_gateway_recovery_requests", "Abort and resolve requests sent to "
                   "the TTP, by what it answered", ["kind", "answer"])
ROUND_TRIP = Histogram("tcms_gateway_round_trip_seconds", "Request to answer with the TSS "
                       "(m1, receipt stamp) and the TTP (abort, resolve)",
                       ["service", "kind"], buckets=ROUND_TRIP_BUCKETS)
SUBMISSION_TO_NOTICE = Histogram(
    "tcms_gateway_submission_to_notice_seconds", "From the sender's time stamp (taken when "
    "the mail was submitted) to the notice in the recipient's mailbox (recipient side)",
    buckets=HUMAN_BUCKETS)
ACCEPT_TO_RECEIPT = Histogram(
    "tcms_gateway_accept_to_receipt_seconds", "From the recipient's acceptance (m4) "
    "reaching the sender's gateway to the receipt in the sender's mailbox (sender side)",
    buckets=HUMAN_BUCKETS)
PURGED = Counter("tcms_gateway_retention_purged", "What retention removed", ["what"])


class Timer:
    """``with Timer(ROUND_TRIP.labels("tss", "m1")):`` observes the block's duration."""

    def __init__(self, hist: Histogram) -> None:
        self.hist = hist

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hist.observe(time.perf_counter() - self.start)


async def m4_received_at(store: Store, cid: bytes) -> int | None:
    """When the recipient's m4 reached this (the sender's) gateway, if it did."""
    t = m.messages
    q = select(func.min(t.c.at)).where(t.c.cid == cid, t.c.role == "sender",
                                       t.c.direction == "in", t.c.kind == "m4")
    async with store.engine.connect() as conn:
        value = (await conn.execute(q)).scalar()
    return int(value) if value is not None else None


async def _counts(store: Store, q: object) -> list[tuple[tuple[str, ...], float]]:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(q)).all()  # type: ignore[call-overload]
    return [(tuple(str(v) for v in r[:-1]), float(r[-1])) for r in rows]


async def read(store: Store, now: int | None = None) -> Families:
    """The SQL gauges: work waiting and quarantined per kind, exchanges by phase."""
    now = int(time.time()) if now is None else now
    i, s, a, o, r = m.inbound, m.submissions, m.answer_checks, m.messages, m.runs
    async with store.engine.connect() as conn:
        async def count(table: object, cond: object) -> float:
            q = select(func.count()).select_from(table).where(cond)  # type: ignore[arg-type]
            return float((await conn.execute(q)).scalar() or 0)

        outbox = and_(o.c.direction == "out", o.c.sent_at.is_(None))
        waiting = [
            ("inbound", await count(i, i.c.status == "new")),
            ("submission", await count(s, s.c.status == "new")),
            ("outbox", await count(o, and_(outbox, o.c.quarantined_at.is_(None)))),
            ("answers", await count(a, a.c.status == "due")),
            ("deadline", await count(r, and_(r.c.terminal.is_(False), r.c.deadline <= now,
                                              r.c.quarantined.is_(False)))),
        ]
        quarantined = [
            ("inbound", await count(i, i.c.status == "quarantined")),
            ("submission", await count(s, s.c.status == "quarantined")),
            ("outbox", await count(o, and_(outbox, o.c.quarantined_at.is_not(None)))),
            ("answers", await count(a, a.c.status == "quarantined")),
            ("deadline", await count(r, and_(r.c.terminal.is_(False),
                                              r.c.quarantined.is_(True)))),
        ]
    phases = await _counts(store, select(r.c.role, r.c.phase, r.c.terminal, func.count())
                           .group_by(r.c.role, r.c.phase, r.c.terminal))
    return [
        gauge("tcms_gateway_queue_depth", "Units of work waiting (due or not yet due), by "
              "kind", ["kind"], [((k,), v) for k, v in waiting]),
        gauge("tcms_gateway_queue_quarantined", "Units of work set aside after "
              "max_attempts tries, waiting for an administrator (`tcms queue`)", ["kind"],
              [((k,), v) for k, v in quarantined]),
        gauge("tcms_gateway_exchanges", "Runs stored, by role, phase and whether they "
              "ended (the final phase is the outcome)", ["role", "phase", "state"],
              [((role, phase, "ended" if term in ("True", "1", "true") else "active"), v)
               for (role, phase, term), v in phases]),
    ]


def sql_gauges(store: Store) -> SqlGauges:
    return SqlGauges("gateway", lambda: read(store))
