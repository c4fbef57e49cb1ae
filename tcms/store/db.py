"""The store: async SQLAlchemy over SQLite (aiosqlite, default) or PostgreSQL (asyncpg).

Concurrency rules, so that several gateway or TTP processes can share one PostgreSQL:
- a run is updated with optimistic locking (``version``); a lost race raises
  ``ConcurrentUpdate`` and the caller reloads and retries;
- a run's state, the messages it sends (the outbox) and its audit entries are written in
  one transaction, so a crash never leaves a message sent without the state that sent it;
- a TTP decision is an INSERT on its primary key: the first one wins, the others read it;
- the audit chain is appended under a transaction-scoped lock (PostgreSQL advisory lock).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tcms.crypto import h
from tcms.datakeys import DataKeys
from tcms.protocol.ttp import Decision
from tcms.store import auditchain, encrypted
from tcms.store import models as m
from tcms.store.auditchain import GENESIS, AuditEntry, entry_hash

log = logging.getLogger("tcms.store")
AUDIT_LOCK = 0x7C3A_0001


class ConcurrentUpdate(Exception):
    """Another process changed the run first; reload and retry."""


@dataclass(frozen=True)
class RunRecord:
    cid: bytes
    role: str
    tx: str
    owner: str
    peer: str
    subject: str
    phase: str
    terminal: bool
    deadline: int | None
    state: bytes
    version: int = 0
    submission_id: int | None = None
    created_at: int = 0
    updated_at: int = 0
    # the deadline as a unit of work (see gateway/queue.py)
    attempts: int = 0
    next_attempt: int | None = None
    last_error: str | None = None
    quarantined: bool = False


@dataclass(frozen=True)
class OutMessage:
    destination: str  # peer | tss | ttp | mailbox (a mail for the local user to see)
    kind: str
    data: bytes
    owner: str | None = None
    peer: str | None = None


def normalise_url(url: str) -> str:
    """Accept plain ``sqlite:///`` and ``postgresql://`` URLs and pick the async drivers."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


class Store:
    """The database of one process.  ``data_keys`` seal and open the columns encrypted at
    rest (mail, machine state, protocol messages, evidence: tcms/store/encrypted.py); the
    services (TSS, TTP, DC) keep none of those and need none.  A Store without keys reads
    values stored in clear before encryption and raises DataKeyMissing otherwise."""

    def __init__(self, url: str, *, echo: bool = False,
                 data_keys: DataKeys | None = None) -> None:
        self.url = normalise_url(url)
        self.is_postgres = self.url.startswith("postgresql")
        if self.url.startswith("sqlite"):
            path = self.url.split(":///", 1)[1]
            if path and path != ":memory:" and not path.startswith("file:"):
                private_sqlite_file(Path(path))
            self.engine: AsyncEngine = create_async_engine(
                self.url, echo=echo, connect_args={"timeout": 30})
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin_immediate)
        else:
            self.engine = create_async_engine(self.url, echo=echo, pool_size=10,
                                              max_overflow=20)
        self.data_keys = data_keys

    @property
    def data_keys(self) -> DataKeys | None:
        return encrypted.keys_of(self.engine.sync_engine.dialect)

    @data_keys.setter
    def data_keys(self, keys: DataKeys | None) -> None:
        encrypted.attach(self.engine.sync_engine.dialect, keys)

    async def close(self) -> None:
        await self.engine.dispose()

    async def upgrade(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from tcms.store.migrate import upgrade

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    # --- submissions -----------------------------------------------------------------

    async def add_submission(self, *, message_id: str, sender: str, recipients: list[str],
                             subject: str, raw: bytes, now: int) -> int:
        async with self.transaction() as conn:
            res = await conn.execute(insert(m.submissions).values(
                message_id=message_id, sender=sender, recipients=json.dumps(recipients),
                subject=subject, raw=raw, created_at=now).returning(m.submissions.c.id))
            return int(res.scalar_one())

    async def get_submission(self, sid: int) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                select(m.submissions).where(m.submissions.c.id == sid))).mappings().first()
            return dict(row) if row else None

    async def new_submissions(self, limit: int = 20) -> list[dict[str, Any]]:
        q = (select(m.submissions).where(m.submissions.c.status == "new")
             .order_by(m.submissions.c.id).limit(limit))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings().all()]

    async def start_submission(self, sid: int, runs: Sequence[tuple[RunRecord,
                               Sequence[OutMessage]]], notices: Sequence[OutMessage], *,
                               now: int, actor: str, status: str = "started",
                               detail: str = "") -> bool:
        """Turn a stored submission into its runs (and notices for the recipients that
        cannot be certified), all in one transaction.  False if another worker already
        did: the status moves from ``new`` exactly once."""
        async with self.transaction() as conn:
            res = await conn.execute(update(m.submissions).where(
                m.submissions.c.id == sid, m.submissions.c.status == "new"
            ).values(status=status, detail=detail))
            if res.rowcount != 1:
                return False
            for run, outbox in runs:
                await self._write_run(conn, run, now, outbox, (),
                                      [(actor, "run.started", f"submission #{sid}")])
            await self._queue(conn, h(f"submission:{sid}".encode()), "sender", notices, now)
        return True

    # --- runs ------------------------------------------------------------------------

    async def save_run(self, run: RunRecord, *, now: int,
                       outbox: Sequence[OutMessage] = (),
                       received: Sequence[tuple[str, bytes]] = (),
                       audit: Sequence[tuple[str, str, str]] = (),
                       done: int | None = None) -> RunRecord:
        """Insert (version 0) or update (optimistic) a run, with its messages and audit entries,
        atomically; ``done`` marks that outbox message sent in the same transaction.
        Returns the record as stored (new version)."""
        async with self.transaction() as conn:
            stored = await self._write_run(conn, run, now, outbox, received, audit)
            if done is not None:
                await conn.execute(update(m.messages).where(m.messages.c.id == done)
                                   .values(sent_at=now, claimed_until=None))
        return stored

    async def _write_run(self, conn: AsyncConnection, run: RunRecord, now: int,
                         outbox: Sequence[OutMessage], received: Sequence[tuple[str, bytes]],
                         audit: Sequence[tuple[str, str, str]]) -> RunRecord:
        values = dict(tx=run.tx, owner=run.owner, peer=run.peer, subject=run.subject,
                      phase=run.phase, terminal=run.terminal, deadline=run.deadline,
                      state=run.state, updated_at=now, attempts=0, next_attempt=None,
                      last_error=None)
        if run.version == 0:
            try:
                await conn.execute(insert(m.runs).values(
                    cid=run.cid, role=run.role, submission_id=run.submission_id,
                    version=1, created_at=now, **values))
            except IntegrityError:
                raise ConcurrentUpdate("run already exists") from None
            created = now
        else:
            res = await conn.execute(
                update(m.runs)
                .where(m.runs.c.cid == run.cid, m.runs.c.role == run.role,
                       m.runs.c.version == run.version)
                .values(version=run.version + 1, **values))
            if res.rowcount != 1:
                raise ConcurrentUpdate(f"run {run.tx}/{run.role} changed concurrently")
            created = run.created_at
        for kind, data in received:
            await conn.execute(insert(m.messages).values(
                cid=run.cid, role=run.role, direction="in", kind=kind, data=data, at=now))
        await self._queue(conn, run.cid, run.role, outbox, now)
        for actor, ev, detail in audit:
            await self.append_audit(conn, now, actor, ev, run.cid.hex(), detail)
        return RunRecord(**{**run.__dict__, "version": run.version + 1,
                            "created_at": created, "updated_at": now, "attempts": 0,
                            "next_attempt": None, "last_error": None})

    async def _queue(self, conn: AsyncConnection, cid: bytes, role: str,
                     outbox: Sequence[OutMessage], now: int) -> None:
        for msg in outbox:
            await conn.execute(insert(m.messages).values(
                cid=cid, role=role, direction="out", destination=msg.destination,
                kind=msg.kind, data=msg.data, at=now, owner=msg.owner, peer=msg.peer))

    async def get_run(self, cid: bytes, role: str) -> RunRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(m.runs).where(
                m.runs.c.cid == cid, m.runs.c.role == role))).mappings().first()
        return RunRecord(**row) if row else None

    async def find_runs(self, tx_prefix: str) -> list[RunRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(m.runs).where(
                m.runs.c.tx.startswith(tx_prefix.lower())))).mappings().all()
        return [RunRecord(**r) for r in rows]

    async def list_runs(self, *, owner: str | None = None, active_only: bool = False,
                        limit: int = 100) -> list[RunRecord]:
        q = select(m.runs).order_by(m.runs.c.created_at.desc()).limit(limit)
        if owner:
            q = q.where(m.runs.c.owner == owner)
        if active_only:
            q = q.where(m.runs.c.terminal.is_(False))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [RunRecord(**r) for r in rows]

    async def has_pending_notice(self, owner: str) -> bool:
        """Whether ``owner`` has a certified mail waiting for their accept or refuse."""
        q = select(m.runs.c.cid).where(m.runs.c.owner == owner, m.runs.c.role == "receiver",
                                       m.runs.c.phase == "pending").limit(1)
        async with self.engine.connect() as conn:
            return (await conn.execute(q)).first() is not None

    async def due_runs(self, now: int, limit: int = 100) -> list[RunRecord]:
        """Runs whose next deadline has passed: the timer's work list (survives restarts).
        A run whose timer failed waits for its backoff; a quarantined one for an admin."""
        q = (select(m.runs)
             .where(m.runs.c.terminal.is_(False), m.runs.c.deadline.is_not(None),
                    m.runs.c.deadline <= now, m.runs.c.quarantined.is_(False),
                    m.runs.c.next_attempt.is_(None) | (m.runs.c.next_attempt <= now))
             .order_by(m.runs.c.deadline).limit(limit))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [RunRecord(**r) for r in rows]

    # --- outbox ----------------------------------------------------------------------

    async def claim_outbox(self, now: int, lease: int, limit: int = 50,
                           by: str | None = None) -> list[dict[str, Any]]:
        """Claim unsent outbox messages for ``lease`` seconds, oldest first, in one
        statement (PostgreSQL: rows another worker is claiming are skipped).  A message
        whose lease ran out (its worker died) is claimed again: delivery is at least once,
        and every receiver of a protocol message or mailbox copy treats a repeat as a
        no-op.  Quarantined messages wait for an administrator."""
        t = m.messages
        free = ((t.c.claimed_until.is_(None) | (t.c.claimed_until <= now))
                & t.c.quarantined_at.is_(None))
        pending = (t.c.direction == "out") & t.c.sent_at.is_(None)
        pick = (select(t.c.id).where(pending, free).order_by(t.c.id).limit(limit)
                .with_for_update(skip_locked=True))
        async with self.transaction() as conn:
            ids = [r[0] for r in (await conn.execute(pick)).all()]
            if not ids:
                return []
            rows = (await conn.execute(
                update(t).where(t.c.id.in_(ids), pending, free)
                .values(claimed_until=now + lease, attempts=t.c.attempts + 1, claimed_by=by)
                .returning(*t.c))).mappings().all()
        return sorted((dict(r) for r in rows), key=lambda r: int(r["id"]))

    async def release_outbox_claims(self, by: str) -> int:
        """A gateway instance (re)starting gives back the outbox messages it held when it
        stopped: they are sent at once instead of when their lease runs out."""
        t = m.messages
        async with self.transaction() as conn:
            res = await conn.execute(update(t).where(
                t.c.claimed_by == by, t.c.direction == "out", t.c.sent_at.is_(None),
                t.c.quarantined_at.is_(None)).values(claimed_until=None, claimed_by=None))
        return int(res.rowcount or 0)

    async def outbox_done(self, message_id: int, now: int) -> None:
        async with self.transaction() as conn:
            await conn.execute(update(m.messages).where(m.messages.c.id == message_id)
                               .values(sent_at=now, claimed_until=None, last_error=None))

    async def messages_of(self, cid: bytes) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(m.messages).where(
                m.messages.c.cid == cid).order_by(m.messages.c.id))).mappings().all()
            return [dict(r) for r in rows]

    # --- evidence --------------------------------------------------------------------

    async def save_evidence(self, cid: bytes, role: str, verdict: str, bundle: str,
                            now: int) -> None:
        async with self.transaction() as conn:
            await conn.execute(m.evidence.delete().where(
                m.evidence.c.cid == cid, m.evidence.c.role == role))
            await conn.execute(insert(m.evidence).values(
                cid=cid, role=role, verdict=verdict, bundle=bundle, created_at=now))

    async def get_evidence(self, cid: bytes, role: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(m.evidence).where(
                m.evidence.c.cid == cid, m.evidence.c.role == role))).mappings().first()
            return dict(row) if row else None

    # --- TTP decisions ---------------------------------------------------------------

    async def get_decision(self, cid: bytes) -> Decision | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(m.ttp_decisions).where(
                m.ttp_decisions.c.cid == cid))).mappings().first()
        return Decision(**row) if row else None

    async def record_decision(self, d: Decision, actor: str) -> Decision:
        """Insert the decision unless one exists; return the one that stands."""
        try:
            async with self.transaction() as conn:
                await conn.execute(insert(m.ttp_decisions).values(**d.__dict__))
                await self.append_audit(conn, d.at, actor, f"ttp.{d.state}", d.cid.hex(),
                                         f"requested by {d.by}; S={d.sender} R={d.recipient}")
            return d
        except IntegrityError:
            existing = await self.get_decision(d.cid)
            assert existing is not None
            return existing

    async def count_decisions(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(m.ttp_decisions.c.state, func.count()).group_by(
                m.ttp_decisions.c.state))).all()
        return {str(s): int(n) for s, n in rows}

    # --- TSS log ---------------------------------------------------------------------

    async def issue_timestamp(self, *, now: int, hash_alg: str, imprint: bytes,
                              nonce: int | None, requester: str | None,
                              requester_fp: str | None,
                              sign: Callable[[int], bytes]) -> tuple[int, bytes]:
        """Allocate the next serial, sign with it, and log the token, in one transaction:
        a serial is never reused, even across restarts or several TSS processes."""
        async with self.transaction() as conn:
            res = await conn.execute(insert(m.tss_log).values(
                at=now, hash_alg=hash_alg, imprint=imprint,
                nonce=None if nonce is None else str(nonce), requester=requester,
                requester_fp=requester_fp).returning(m.tss_log.c.serial))
            serial = int(res.scalar_one())
            token = sign(serial)
            await conn.execute(update(m.tss_log).where(m.tss_log.c.serial == serial)
                               .values(token=token))
        return serial, token

    # --- audit log -------------------------------------------------------------------

    async def append_audit(self, conn: AsyncConnection, at: int, actor: str, ev: str,
                            cid: str | None, detail: str) -> None:
        if self.is_postgres:
            await conn.execute(select(func.pg_advisory_xact_lock(AUDIT_LOCK)))
        last = (await conn.execute(select(m.audit_log.c.seq, m.audit_log.c.hash).order_by(
            m.audit_log.c.seq.desc()).limit(1))).first()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        await conn.execute(insert(m.audit_log).values(
            seq=seq, at=at, actor=actor, event=ev, cid=cid, detail=detail, prev_hash=prev,
            hash=entry_hash(prev, seq, at, actor, ev, cid, detail)))

    async def audit(self, actor: str, ev: str, detail: str, *, now: int,
                    cid: bytes | None = None) -> None:
        async with self.transaction() as conn:
            await self.append_audit(conn, now, actor, ev, cid.hex() if cid else None, detail)

    async def audit_entries(self) -> list[AuditEntry]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(m.audit_log).order_by(
                m.audit_log.c.seq))).mappings().all()
        return [AuditEntry(**r) for r in rows]

    async def verify_audit_chain(self) -> tuple[int, str | None]:
        """Return (entries checked, None) or (index, reason) of the first broken link."""
        return auditchain.verify(await self.audit_entries())


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
