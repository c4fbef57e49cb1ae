"""The TTP's state in SQL (on the shared ``Store``): its decisions, one per exchange.

A decision is an INSERT on its primary key (the cid): the first one wins, the others read
it, so concurrent requests, on one process or several sharing PostgreSQL, all get the same
signed answer.  The table is ``ttp_decisions`` (tcms/store/models.py, in the one Alembic
chain); its rows are never updated or deleted (triggers)."""

from __future__ import annotations

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from tcms.protocol.ttp import Decision
from tcms.store import Store
from tcms.store import models as m


async def get_decision(store: Store, cid: bytes) -> Decision | None:
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(m.ttp_decisions).where(
            m.ttp_decisions.c.cid == cid))).mappings().first()
    return Decision(**row) if row else None


async def record_decision(store: Store, d: Decision, actor: str) -> Decision:
    """Insert the decision unless one exists; return the one that stands."""
    try:
        async with store.transaction() as conn:
            await conn.execute(insert(m.ttp_decisions).values(**d.__dict__))
            await store.append_audit(conn, d.at, actor, f"ttp.{d.state}", d.cid.hex(),
                                     f"requested by {d.by}; S={d.sender} R={d.recipient}")
        return d
    except IntegrityError:
        existing = await get_decision(store, d.cid)
        assert existing is not None
        return existing


async def count_decisions(store: Store) -> dict[str, int]:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(m.ttp_decisions.c.state, func.count()).group_by(
            m.ttp_decisions.c.state))).all()
    return {str(s): int(n) for s, n in rows}
