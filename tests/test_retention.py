"""Retention (gateway/retention.py) on SQLite and PostgreSQL, with a clock: what each
period removes, that an exchange that is not final is never touched, that `tcms tx
export` still gives the same bundle for what is kept, and that the audit chain still
verifies once its head is purged."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Run, start_run
from mailstack import PATIENCE
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError

from gateway import retention
from gateway.queue import Queues
from gateway.retention import purge
from tcms import evidence
from tcms.config_ops import MONTH, RetentionConfig
from tcms.store import OutMessage, RunRecord, Store
from tcms.store import models as m

T0 = 1_800_000_000
DAY = 86400
POLICY = RetentionConfig(cleartext=0, ciphertext=30 * DAY, evidence=30 * MONTH,
                         audit=365 * DAY)


async def exchange(store: Store, run: Run, *, final: bool, at: int, raw: bytes = b"mail",
                   receiver_too: bool = False, pending_mail: bool = False) -> RunRecord:
    """A stored exchange: its submission, its sender run (ended or not at ``at``), the
    messages it sent and received."""
    sid = await store.add_submission(message_id="<x@a.test>", sender="alice@a.test",
                                     recipients=["bob@b.test"], subject="s", raw=raw, now=at)
    s = run.sender
    rec = RunRecord(s.cid, "sender", s.core.header.tx.hex(), "alice@a.test", "bob@b.test",
                    "s", "done" if final else "await-m4", final, None if final else at + 10,
                    s.stored(), submission_id=sid, payload=s.payload)  # c apart, as a gateway
    out = [OutMessage("peer", "m3", run.m3, "alice@a.test", "bob@b.test")]
    if pending_mail:
        out.append(OutMessage("mailbox", "receipt", b"", "alice@a.test", "bob@b.test"))
    stored = await store.save_run(rec, now=at, outbox=out, received=[("m4", b"m4 bytes")],
                                  audit=[("alice@a.test", "phase.x", "")])
    async with store.transaction() as conn:  # m3 went out
        await conn.execute(update(m.messages).where(
            m.messages.c.cid == s.cid, m.messages.c.kind == "m3").values(sent_at=at))
        await conn.execute(update(m.submissions).where(m.submissions.c.id == sid).values(
            status="started"))
    if receiver_too:  # the recipient is served here too, and has not finished
        await store.save_run(RunRecord(s.cid, "receiver", rec.tx, "bob@b.test",
                                       "alice@a.test", "s", "pending", False, at + 10,
                                       s.dump()), now=at)
    return stored


async def count(store: Store, table: object, *where: object) -> int:
    async with store.engine.connect() as conn:
        q = select(func.count()).select_from(table).where(*where)  # type: ignore[arg-type]
        return int((await conn.execute(q)).scalar() or 0)


async def submission(store: Store, sid: int | None) -> bytes | None:
    """The stored mail of submission ``sid`` (None: the row is gone)."""
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(m.submissions.c.id).where(
            m.submissions.c.id == int(sid or 0)))).first()
    return None if row is None else await Queues(store).mail_of("submission", int(sid or 0))


async def raw_of(store: Store, sid: int | None) -> bytes:
    raw = await submission(store, sid)
    assert raw is not None
    return raw


async def test_each_period_removes_its_part_and_never_an_unfinished_exchange(
        store: Store) -> None:
    done = await exchange(store, start_run(), final=True, at=T0)
    going = await exchange(store, start_run(), final=False, at=T0)
    half = await exchange(store, start_run(), final=True, at=T0, receiver_too=True)
    waiting = await exchange(store, start_run(), final=True, at=T0, pending_mail=True)
    bundles = {r.cid: evidence.from_stored("sender", r.state,
                                           await store.get_payload(r.cid, "sender"))
               for r in (done, going, half, waiting)}
    assert all(b["c"] for b in bundles.values())
    q = Queues(store)
    for status in ("done", "rejected", "quarantined", "new"):
        iid = await q.add_inbound(mail_from="x@b.test", rcpt=["tcms-gateway@a.test"],
                                  peer="127.0.0.1", raw=b"protocol mail", now=T0)
        async with store.transaction() as conn:
            await conn.execute(update(m.inbound).where(m.inbound.c.id == iid).values(
                status=status, finished_at=T0))

    # a dry run says what would go and removes nothing
    report = await purge(store, POLICY, T0 + 1, dry_run=True)
    assert report.counts["cleartext"] == 2  # done and waiting: final, period 0
    assert await raw_of(store, done.submission_id) == b"mail"

    # at once: the clear text of final exchanges only
    report = await purge(store, POLICY, T0 + 1)
    assert report.counts["cleartext"] == 2 and report.counts["messages"] == 0
    assert await raw_of(store, done.submission_id) == b""
    assert await raw_of(store, going.submission_id) == b"mail"
    assert await raw_of(store, half.submission_id) == b"mail"  # bob has not answered

    # after 30 days: the protocol messages of final exchanges, and handled protocol mail
    report = await purge(store, POLICY, T0 + 31 * DAY)
    assert await count(store, m.messages, m.messages.c.cid == done.cid) == 0
    assert await count(store, m.messages, m.messages.c.cid == going.cid) == 2
    assert await count(store, m.messages, m.messages.c.cid == half.cid) == 2
    # the receipt still to be written stays; what was sent and received goes
    assert await count(store, m.messages, m.messages.c.cid == waiting.cid) == 1
    assert await count(store, m.inbound) == 2  # the quarantined and the new one stay
    assert report.counts["inbound"] == 2

    # after 30 months: the final exchanges themselves, evidence and all
    report = await purge(store, POLICY, T0 + 30 * MONTH + 1)
    assert report.counts["exchanges"] == 1 and report.counts["submissions"] == 1
    assert await store.get_run(done.cid, "sender") is None
    assert await store.get_payload(done.cid, "sender") is None  # c went with its run
    assert await submission(store, done.submission_id) is None
    for kept in (going, half, waiting):  # not final, or its last mail unwritten: kept whole
        rec = await store.get_run(kept.cid, "sender")
        assert rec is not None
        assert evidence.from_stored("sender", rec.state, await store.get_payload(
            kept.cid, "sender")) == bundles[kept.cid]
    # once the receipt is written, the exchange can go too
    async with store.transaction() as conn:
        await conn.execute(update(m.messages).where(m.messages.c.cid == waiting.cid)
                           .values(sent_at=T0 + 1))
    await purge(store, POLICY, T0 + 30 * MONTH + 1)
    assert await store.get_run(waiting.cid, "sender") is None
    assert await store.get_run(going.cid, "sender") is not None


async def test_purging_the_audit_head_keeps_the_chain_verifiable(store: Store) -> None:
    for day in range(10):
        await store.audit("admin", "test.event", f"day {day}", now=T0 + day * DAY)
    policy = RetentionConfig(audit=365 * DAY)
    report = await purge(store, policy, T0 + 365 * DAY + 4 * DAY + 1)
    assert report.counts["audit"] == 5  # days 0-4 are past the year
    entries = await store.audit_entries()
    assert [e.detail for e in entries[:5]] == [f"day {d}" for d in range(5, 10)]
    assert entries[-1].event == "retention.audit" and "entries 1..5" in entries[-1].detail
    assert await store.verify_audit_chain() == (6, None)
    # a second purge later on, and entries appended after it, still verify
    await purge(store, policy, T0 + 365 * DAY + 8 * DAY + 1)
    await store.audit("admin", "test.event", "later", now=T0 + 400 * DAY)
    n, bad = await store.verify_audit_chain()
    assert bad is None and n == 4  # day 9, the two purges, the later entry
    # the table is still append-only; someone who lifts that and removes an entry
    # without a purge saying so is found out
    with pytest.raises(DBAPIError, match="append-only"):
        async with store.transaction() as conn:
            await conn.execute(m.audit_log.delete())
    async with store.transaction() as conn:
        first = (await conn.execute(select(func.min(m.audit_log.c.seq)))).scalar()
        await conn.execute(text(retention.PG_LIFT if store.is_postgres
                                else retention.SQLITE_LIFT))
        await conn.execute(m.audit_log.delete().where(m.audit_log.c.seq == first))
    n, bad = await store.verify_audit_chain()
    assert bad is not None and "missing" in bad


def test_tx_purge_and_export_through_the_command(tmp_path: Path) -> None:
    """`tcms tx purge --now`, then `tcms tx export` of what it kept."""
    import asyncio

    from tcms import datakeys

    db = tmp_path / "gw.db"
    keys = datakeys.load_or_create(tmp_path / "keys", b"retention-test")

    async def setup() -> tuple[str, str]:
        store = Store(f"sqlite:///{db}", data_keys=keys)
        await store.upgrade()
        old = await exchange(store, start_run(), final=True, at=T0)
        new = await exchange(store, start_run(), final=True, at=T0 + 20 * MONTH)
        await store.close()
        return old.tx, new.tx

    old, new = asyncio.run(setup())
    env = {"TCMS_DATABASE__URL": f"sqlite:///{db}", "PATH": "/usr/bin:/bin",
           "TCMS_KEYS__DIR": str(tmp_path / "keys"), "TCMS_KEYS__PASSPHRASE": "retention-test"}

    def tcms(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tcms.cli", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    res = tcms("tx", "purge", "--now", "2029-09-01T00:00:00Z", "--dry-run")
    assert res.returncode == 0 and "would remove" in res.stdout and "1 exchanges" in res.stdout
    res = tcms("tx", "purge", "--now", "2029-09-01T00:00:00Z")  # 30 months after T0
    assert res.returncode == 0, res.stderr
    assert "1 exchanges" in res.stdout, res.stdout
    gone = tcms("tx", "export", old)
    assert gone.returncode != 0 and "no exchange" in gone.stderr
    kept = tcms("tx", "export", new)
    assert kept.returncode == 0, kept.stderr
    exported = json.loads(kept.stdout)
    assert exported["holder"] == "sender" and exported["c"]  # c from table pieces
    bad = tcms("tx", "purge", "--now", "yesterday")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
    # a --now past any date is purged against and said as such, not a traceback
    far = tcms("tx", "purge", "--now", str(10**17), "--dry-run")
    assert far.returncode == 0, far.stderr
    assert f"retention as of @{10**17} (not a representable date): would remove" in far.stdout


async def test_the_worker_purges_on_its_own(store: Store) -> None:
    """The gateway worker's loop (gateway/retention.py run_periodically), every interval:
    watched until the clear text of a final exchange is gone (test_each_period... shows
    what is kept before its period ends)."""
    import asyncio

    from gateway.retention import run_periodically

    clock = {"now": T0}
    done = await exchange(store, start_run(), final=True, at=T0)
    task = asyncio.create_task(run_periodically(
        store, RetentionConfig(cleartext=3600, interval=1), lambda: clock["now"]))
    try:
        clock["now"] = T0 + 3601  # the next pass (within a second) finds it past its period
        deadline = time.monotonic() + PATIENCE
        while await raw_of(store, done.submission_id) != b"":
            assert time.monotonic() < deadline and not task.done(), "never purged"
            await asyncio.sleep(0.05)
        assert await store.get_run(done.cid, "sender") is not None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
