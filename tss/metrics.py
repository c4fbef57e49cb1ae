"""The TSS's Prometheus metrics (docs/operations.md): tokens issued and refused requests;
its HTTP requests are counted by tcms.metrics.instrument, but for a well-formed
``POST /tsa``, which takes a fast path past FastAPI (tss/api.py) and is counted here
only.  The labelled children are bound once: an increment is all a token costs."""

from __future__ import annotations

from prometheus_client import Counter
from sqlalchemy import func, select

from tcms.metrics import Families, SqlGauges, gauge
from tcms.store import Store
from tcms.store import models as m

TOKENS = Counter("tcms_tss_tokens_issued", "Time-stamp tokens this process signed, by "
                 "endpoint (tsa: any RFC 3161 client; m1: a TCMS sender)", ["via"])
REJECTED = Counter("tcms_tss_rejections", "RFC 3161 requests answered with a rejection",
                   ["via"])
TOKENS_TSA, TOKENS_M1 = TOKENS.labels("tsa"), TOKENS.labels("m1")
REJECTED_TSA, REJECTED_M1 = REJECTED.labels("tsa"), REJECTED.labels("m1")


async def read(store: Store) -> Families:
    async with store.engine.connect() as conn:
        n = (await conn.execute(select(func.count()).select_from(m.tss_log))).scalar()
    return [gauge("tcms_tss_log_tokens", "Tokens in the TSS's log (every process sharing "
                  "the database)", [], [((), float(n or 0))])]


def sql_gauges(store: Store) -> SqlGauges:
    return SqlGauges("tss", lambda: read(store))
