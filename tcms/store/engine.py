"""The database engine: plain ``sqlite:///`` and ``postgresql://`` URLs with the async drivers;
a SQLite file private to its owner, in WAL mode, whose transactions take the write lock at
BEGIN."""

from __future__ import annotations

import logging
import os
from contextlib import suppress
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger("tcms.store")


def normalise_url(url: str) -> str:
    """Accept plain ``sqlite:///`` and ``postgresql://`` URLs and pick the async drivers."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An engine for a normalised URL: SQLite with its pragmas and BEGIN IMMEDIATE (the
    file created private first), PostgreSQL with a pool for several workers."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        if path and path != ":memory:" and not path.startswith("file:"):
            private_sqlite_file(Path(path))
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_async_engine(url, echo=echo, pool_size=10, max_overflow=20)


def private_sqlite_file(path: Path) -> None:
    """The database file, created empty with mode 0600 before SQLite opens it (SQLite gives
    its -wal and -shm files the database file's mode), in a directory created 0700; an
    existing file and its companions lose any group and other permissions."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"),
              path.with_name(path.name + "-journal")):
        try:
            mode = f.stat().st_mode & 0o777
            if mode & 0o077:
                f.chmod(mode & 0o700)
        except FileNotFoundError:
            pass
        except PermissionError:
            log.warning("%s is readable by others and not ours to change (mode %o)", f, mode)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, issue BEGIN (see _sqlite_begin_immediate).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    """SQLite transactions take the write lock at BEGIN, so a read-then-write transaction
    (the audit chain, optimistic updates) cannot lose a race half-way; writers queue on
    the busy timeout instead of failing."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")
