"""The TTP's Prometheus metrics (docs/operations.md): its decisions, read from SQL at
scrape time; its requests (abort, resolve, release, status, dispute) are counted by
route and status by tcms.metrics.instrument."""

from __future__ import annotations

from tcms.metrics import Families, SqlGauges, gauge
from tcms.store import Store
from ttp import store as ttp_store


async def read(store: Store) -> Families:
    counts = await ttp_store.count_decisions(store)
    return [gauge("tcms_ttp_decisions", "Exchanges the TTP decided, by decision (aborted, "
                  "resolved, bad-escrow)", ["state"],
                  [((state,), float(n)) for state, n in sorted(counts.items())])]


def sql_gauges(store: Store) -> SqlGauges:
    return SqlGauges("ttp", lambda: read(store))
