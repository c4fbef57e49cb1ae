"""The DC's Prometheus metrics (docs/operations.md): registered gateways and published
keys by status, read from SQL at scrape time; lookups, publications and revocations are
counted by route and status by tcms.metrics.instrument."""

from __future__ import annotations

from sqlalchemy import func, select

from tcms.metrics import Families, SqlGauges, gauge
from tcms.store import Store
from tcms.store import models as m


async def read(store: Store) -> Families:
    k = m.dc_keys
    async with store.engine.connect() as conn:
        gateways = (await conn.execute(select(func.count()).select_from(m.dc_gateways))
                    ).scalar()
        keys = (await conn.execute(select(k.c.status, func.count()).group_by(k.c.status))
                ).all()
    return [
        gauge("tcms_dc_gateways", "Domains with a registered gateway", [],
              [((), float(gateways or 0))]),
        gauge("tcms_dc_keys", "Key versions published, by status (active, superseded, "
              "revoked)", ["status"], [((str(s),), float(n)) for s, n in keys]),
    ]


def sql_gauges(store: Store) -> SqlGauges:
    return SqlGauges("dc", lambda: read(store))
