"""The TSS's log in SQL (on the shared ``Store``; the table is ``tss_log`` of
tcms/store/models.py, its migrations in the core chain): one row per token.

A token's serial number is its row's key, so serials are unique and increasing across
restarts and processes.  ``log_tokens`` writes a whole group of tokens in one transaction:
a row per request is inserted, each token is signed with its row's serial, the tokens are
written into their rows, and the transaction commits, durably (SQLite ``synchronous=FULL``,
PostgreSQL's default ``synchronous_commit``), before any of them is handed out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, insert, select, update

from tcms.store import Store
from tcms.store import models as m
from tss.request import TsRequest


@dataclass(frozen=True, slots=True)
class LogEntry:
    """What is logged with a token besides itself: who asked (m1), if known."""

    request: TsRequest
    requester: str | None = None
    requester_fp: str | None = None


async def log_tokens(store: Store, entries: Sequence[LogEntry], *, now: int,
                     sign: Callable[[TsRequest, int], bytes]) -> list[bytes]:
    """Allocate a serial per entry, sign each token with it and log every token, in one
    transaction; returns the tokens in the order of ``entries``."""
    t = m.tss_log
    rows = [{"at": now, "hash_alg": e.request.hash_alg, "imprint": e.request.imprint,
             "nonce": None if e.request.nonce is None else str(e.request.nonce),
             "requester": e.requester, "requester_fp": e.requester_fp} for e in entries]
    async with store.transaction() as conn:
        res = await conn.execute(
            insert(t).returning(t.c.serial, sort_by_parameter_order=True), rows)
        serials = [int(r[0]) for r in res.all()]
        tokens = [sign(e.request, serial) for e, serial in zip(entries, serials, strict=True)]
        await conn.execute(
            update(t).where(t.c.serial == bindparam("b_serial"))
            .values(token=bindparam("b_token")),
            [{"b_serial": s, "b_token": tok} for s, tok in zip(serials, tokens, strict=True)])
    return tokens


async def logged_tokens(store: Store) -> dict[int, bytes | None]:
    """Every serial in the log and its token (for audits and tests)."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(m.tss_log.c.serial, m.tss_log.c.token))).all()
    return {int(s): (bytes(tok) if tok is not None else None) for s, tok in rows}
