"""The store: async SQLAlchemy over SQLite (aiosqlite, default) or PostgreSQL (asyncpg).

Concurrency rules, so that several gateway or TTP processes can share one PostgreSQL:
- a run is updated with optimistic locking (``version``); a lost race raises
  ``ConcurrentUpdate`` and the caller reloads and retries;
- a run's state, the messages it sends (the outbox) and its audit entries are written in
  one transaction, so a crash never leaves a message sent without the state that sent it;
- the audit chain is appended under a transaction-scoped lock (PostgreSQL advisory lock);
- values that may be large (mail, states, messages, bundles) are passed as execution
  parameters, never with ``.values()``: SQLAlchemy keeps the first statement of each shape
  in its compiled cache, with the values bound into it (a 25 MB mail would stay in memory).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tcms.crypto import h
from tcms.datakeys import DataKeys
from tcms.store import audit as audit_chain
from tcms.store import encrypted, pieces
from tcms.store import models as m
from tcms.store.engine import create_engine, normalise_url
from tcms.store.records import (
    AuditEntry,
    ConcurrentUpdate,
    OutMessage,
    RunRecord,
    StoredMessage,
)


class Store:
    """The database of one process.  ``data_keys`` seal and open the columns encrypted at
    rest (mail, machine state, protocol messages, evidence: tcms/store/encrypted.py); the
    services (TSS, TTP, DC) keep none of those and need none.  A Store without keys reads
    values stored in clear before encryption and raises DataKeyMissing otherwise."""

    def __init__(self, url: str, *, echo: bool = False,
                 data_keys: DataKeys | None = None) -> None:
        self.url = normalise_url(url)
        self.is_postgres = self.url.startswith("postgresql")
        self.engine: AsyncEngine = create_engine(self.url, echo=echo)
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
            res = await conn.execute(insert(m.submissions).returning(m.submissions.c.id), dict(
                message_id=message_id, sender=sender, recipients=json.dumps(recipients),
                subject=subject, raw=b"", created_at=now))
            sid = int(res.scalar_one())
            await pieces.write(conn, pieces.of_row("submissions", sid), raw)
            return sid

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
                await conn.execute(insert(m.runs), dict(
                    cid=run.cid, role=run.role, submission_id=run.submission_id,
                    version=1, created_at=now, **values))
            except IntegrityError:
                raise ConcurrentUpdate("run already exists") from None
            created = now
        else:
            res = await conn.execute(
                update(m.runs)
                .where(m.runs.c.cid == run.cid, m.runs.c.role == run.role,
                       m.runs.c.version == run.version),
                dict(version=run.version + 1, **values))
            if res.rowcount != 1:
                raise ConcurrentUpdate(f"run {run.tx}/{run.role} changed concurrently")
            created = run.created_at
        if run.payload is not None:
            await pieces.write(conn, pieces.of_run(run.cid, run.role), run.payload)
        for kind, data in received:
            await conn.execute(insert(m.messages), dict(
                cid=run.cid, role=run.role, direction="in", kind=kind, data=data, at=now))
        await self._queue(conn, run.cid, run.role, outbox, now)
        for actor, ev, detail in audit:
            await self.append_audit(conn, now, actor, ev, run.cid.hex(), detail)
        return RunRecord(**{**run.__dict__, "version": run.version + 1,
                            "created_at": created, "updated_at": now, "attempts": 0,
                            "next_attempt": None, "last_error": None, "payload": None})

    async def _queue(self, conn: AsyncConnection, cid: bytes, role: str,
                     outbox: Sequence[OutMessage], now: int) -> None:
        for msg in outbox:
            await conn.execute(insert(m.messages), dict(
                cid=cid, role=role, direction="out", destination=msg.destination,
                kind=msg.kind, data=msg.data, at=now, owner=msg.owner, peer=msg.peer))

    async def get_run(self, cid: bytes, role: str) -> RunRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(m.runs).where(
                m.runs.c.cid == cid, m.runs.c.role == role))).mappings().first()
        return RunRecord(**row) if row else None

    async def get_payload(self, cid: bytes, role: str) -> bytes | None:
        """A run's c, None if it has none stored apart (a run stored before table
        pieces: its state holds c)."""
        return await pieces.read(self.engine, pieces.of_run(cid, role))

    async def payload_size(self, cid: bytes, role: str) -> int | None:
        return await pieces.size_of(self.engine, pieces.of_run(cid, role))

    def payload_pieces(self, cid: bytes, role: str, size: int) -> AsyncIterator[bytes]:
        """A run's c (``size`` bytes: ``payload_size``), a stored piece at a time."""
        return pieces.each(self.engine, pieces.of_run(cid, role), size)

    async def run_names(self, cid: bytes, role: str) -> tuple[str, str, str, str] | None:
        """(tx, owner, peer, subject) of a run, without reading its state."""
        t = m.runs
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.c.tx, t.c.owner, t.c.peer, t.c.subject).where(
                t.c.cid == cid, t.c.role == role))).first()
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]), str(row[3]))

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
                           by: str | None = None) -> list[StoredMessage]:
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
        return sorted((StoredMessage(**r) for r in rows), key=lambda r: r.id)

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

    async def messages_of(self, cid: bytes) -> list[StoredMessage]:
        """Every message of an exchange, received and sent, oldest first."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(m.messages).where(
                m.messages.c.cid == cid).order_by(m.messages.c.id))).mappings().all()
        return [StoredMessage(**r) for r in rows]

    # --- evidence --------------------------------------------------------------------

    async def save_evidence(self, cid: bytes, role: str, verdict: str, bundle: str,
                            now: int) -> None:
        async with self.transaction() as conn:
            await conn.execute(m.evidence.delete().where(
                m.evidence.c.cid == cid, m.evidence.c.role == role))
            await conn.execute(insert(m.evidence), dict(
                cid=cid, role=role, verdict=verdict, bundle=bundle, created_at=now))

    # --- audit log -------------------------------------------------------------------

    async def append_audit(self, conn: AsyncConnection, at: int, actor: str, ev: str,
                            cid: str | None, detail: str) -> None:
        """Append to the audit chain in the caller's transaction (tcms/store/audit.py)."""
        await audit_chain.append(conn, postgres=self.is_postgres, at=at, actor=actor, ev=ev,
                                 cid=cid, detail=detail)

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
        return audit_chain.verify(await self.audit_entries())
