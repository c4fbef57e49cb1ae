"""The TSS's log in SQL (on the shared ``Store``; the table is ``tss_log`` of
tcms/store/models.py, its migrations in the core chain): one row per token.

A token's serial number is its row's key.  A process reserves serials in blocks
(``reserve_serials``), so serials are unique across processes and increasing across
restarts (a block cut short by a stop leaves a gap, as RFC 3161 allows).  A ``log_writer``
writes a whole group of signed tokens in one transaction, which commits durably (SQLite
``synchronous=FULL``, PostgreSQL's default ``synchronous_commit``) before any of them is
handed out (tss/commit.py).  It talks to the driver directly, on a connection of its own,
so that a group costs one step: the TSS writes thousands of tokens a second.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import asyncpg
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from tcms.store import Store
from tcms.store import models as m
from tss.request import TsRequest


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One token and what is logged with it: who asked (m1), if known."""

    serial: int
    at: int
    request: TsRequest
    token: bytes
    requester: str | None = None
    requester_fp: str | None = None


async def reserve_serials(conn: AsyncConnection, n: int) -> list[int]:
    """``n`` fresh serials for this process, in one committed transaction on ``conn``.
    PostgreSQL: from the column's sequence (whose increments are never taken back).
    SQLite: after the largest serial ever given (AUTOINCREMENT's own mark, moved on by
    ``n`` here), under the write lock that the transaction takes at BEGIN IMMEDIATE."""
    async with conn.begin():
        if conn.dialect.name == "postgresql":
            rows = await conn.execute(text(
                "SELECT nextval(pg_get_serial_sequence('tss_log', 'serial')) "
                "FROM generate_series(1, :n)"), {"n": n})
            return sorted(int(r[0]) for r in rows)
        last = int((await conn.execute(text(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'tss_log'), 0),"
            " coalesce((SELECT max(serial) FROM tss_log), 0))"))).scalar_one())
        moved = await conn.execute(text(
            "UPDATE sqlite_sequence SET seq = :seq WHERE name = 'tss_log'"), {"seq": last + n})
        if moved.rowcount == 0:
            await conn.execute(text(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('tss_log', :seq)"),
                {"seq": last + n})
    return list(range(last + 1, last + 1 + n))


_COLUMNS = "serial, at, hash_alg, imprint, nonce, requester, requester_fp, token"


def _row(e: LogEntry) -> tuple[object, ...]:
    return (e.serial, e.at, e.request.hash_alg, e.request.imprint,
            None if e.request.nonce is None else str(e.request.nonce), e.requester,
            e.requester_fp, e.token)


class LogWriter(Protocol):
    async def write(self, entries: Sequence[LogEntry]) -> None:
        """Log every token of ``entries`` in one transaction: when this returns, they
        are durable."""

    async def close(self) -> None: ...


def log_writer(store: Store) -> LogWriter:
    """A connection of its own that writes groups of log entries, each in one step: one
    statement (PostgreSQL), one call into the thread that owns the SQLite connection."""
    url = store.engine.url
    if store.is_postgres:
        return _PostgresLog(url.set(drivername="postgresql").render_as_string(
            hide_password=False))
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise ValueError("the TSS log needs a database file (sqlite:///PATH)")
    return _SqliteLog(url.database)


class _SqliteLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tss-log")
        self._conn: sqlite3.Connection | None = None

    def _write(self, rows: list[tuple[object, ...]]) -> None:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._conn = conn
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(f"INSERT INTO tss_log ({_COLUMNS}) "  # noqa: S608
                                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.close()
            self._conn = None  # the transaction, if any, is rolled back with it
            raise

    async def write(self, entries: Sequence[LogEntry]) -> None:
        await asyncio.get_running_loop().run_in_executor(
            self._thread, self._write, [_row(e) for e in entries])

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown()


class _PostgresLog:
    INSERT = (f"INSERT INTO tss_log ({_COLUMNS}) SELECT * FROM unnest("  # noqa: S608
              "$1::integer[], $2::bigint[], $3::text[], $4::bytea[], $5::text[], $6::text[], "
              "$7::text[], $8::bytea[])")

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: asyncpg.Connection | None = None

    async def write(self, entries: Sequence[LogEntry]) -> None:
        columns = list(zip(*(_row(e) for e in entries), strict=True))
        if self._conn is None:
            self._conn = await asyncpg.connect(self.dsn, timeout=30)
        try:  # one statement: its own transaction, committed when it returns
            await self._conn.execute(self.INSERT, *columns)
        except BaseException:
            conn, self._conn = self._conn, None
            conn.terminate()
            raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


async def logged_tokens(store: Store) -> dict[int, bytes | None]:
    """Every serial in the log and its token (for audits and tests)."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(m.tss_log.c.serial, m.tss_log.c.token))).all()
    return {int(s): (bytes(tok) if tok is not None else None) for s, tok in rows}
