"""Units of work (gateway/queue.py) on SQLite and PostgreSQL: claimed once, retried with
backoff, quarantined past the bound, and handled by an administrator with `tcms queue`;
the worker's isolation: one item's failure is that item's alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import DATA_KEYS
from mailstack import PATIENCE

from gateway.queue import Queues, backoff
from gateway.worker import Lane, Worker
from tcms.store import OutMessage, RunRecord, Store

T0 = 1_800_000_000


async def add(q: Queues, n: int = 1) -> list[int]:
    return [await q.add_inbound(mail_from=f"m{i}@x.test", rcpt=["tcms-gateway@b.test"],
                                peer="127.0.0.1", raw=b"raw %d" % i, now=T0) for i in range(n)]


async def test_an_item_is_claimed_once_even_by_racing_workers(store: Store) -> None:
    q = Queues(store, lease=60)
    ids = await add(q, 20)
    claims = await asyncio.gather(*(q.claim_inbound(T0, limit=5) for _ in range(8)))
    claimed = [item.id for batch in claims for item in batch]
    assert len(claimed) == len(set(claimed))  # none twice
    claimed += [item.id for item in await q.claim_inbound(T0, limit=100)]
    assert sorted(claimed) == ids  # every item once
    assert all(item.attempts == 1 for batch in claims for item in batch)
    assert await q.claim_inbound(T0 + 59) == []  # held by the lease
    again = await q.claim_inbound(T0 + 60)  # the lease ran out: the worker died
    assert sorted(i.id for i in again) == ids[:len(again)] and again[0].attempts == 2


async def test_failures_back_off_then_quarantine(store: Store) -> None:
    q = Queues(store, lease=60, max_attempts=3)
    (item,) = await add(q)
    now = T0
    for attempt in (1, 2):
        (got,) = await q.claim_inbound(now)
        assert got.attempts == attempt
        assert await q.fail("inbound", item, got.attempts, now, "boom") == "retry"
        assert await q.claim_inbound(now + backoff(attempt) - 1) == []
        now += backoff(attempt)
    (got,) = await q.claim_inbound(now)
    assert await q.fail("inbound", item, got.attempts, now, "boom again") == "quarantined"
    assert await q.claim_inbound(now + 10_000) == []  # never again on its own
    entry = await q.entry("inbound", str(item))
    assert entry is not None and entry.status == "quarantined"
    assert entry.attempts == 3 and entry.last_error == "boom again"
    assert [e.key for e in await q.entries("inbound")] == [str(item)]
    assert await q.retry("inbound", str(item), now)
    (got,) = await q.claim_inbound(now)
    assert got.attempts == 1
    await q.finish("inbound", item, now, status="rejected", detail="m3.format: bad")
    entry = await q.entry("inbound", str(item))
    assert entry is not None and (entry.status, entry.detail) == ("rejected", "m3.format: bad")
    assert await q.entries("inbound") == []  # finished items only with everything=True
    assert len(await q.entries("inbound", everything=True)) == 1


async def test_done_inbound_mail_is_emptied_and_answer_checks_coalesce(store: Store) -> None:
    q = Queues(store)
    (item,) = await add(q)
    await q.claim_inbound(T0)
    await q.finish("inbound", item, T0)
    with pytest.raises(ValueError):
        await q.entry("inbound", "not-a-number")
    assert not await q.retry("inbound", str(item), T0)  # nothing left to retry
    await q.want_answer_check("bob@b.test", T0 + 60, T0)
    await q.want_answer_check("bob@b.test", T0 + 5, T0)  # sooner wins
    await q.want_answer_check("bob@b.test", T0 + 90, T0)
    assert await q.claim_answer_checks(T0 + 4) == []
    (check,) = await q.claim_answer_checks(T0 + 5)
    assert check.owner == "bob@b.test"
    await q.finish("answers", check.owner, T0 + 5)
    assert await q.claim_answer_checks(T0 + 10_000) == []  # idle until asked again
    await q.want_answer_check("bob@b.test", T0 + 6, T0 + 6)
    assert [c.owner for c in await q.claim_answer_checks(T0 + 6)] == ["bob@b.test"]


async def test_a_late_worker_never_overwrites_what_another_finished(store: Store) -> None:
    """Two workers hold the same protocol mail (the first one's lease ran out): the first
    finishes it; the second then finds its mail gone, and its outcome changes nothing."""
    q = Queues(store, lease=60)
    (item,) = await add(q)
    (first,) = await q.claim_inbound(T0)
    (second,) = await q.claim_inbound(T0 + 61)  # the first one's lease is over
    assert first.id == second.id == item
    await q.finish("inbound", item, T0 + 62, detail="exchange x: notice for bob@b.test",
                   hints=("m3", "ab" * 16))
    assert await q.mail_of("inbound", item) == b""  # what the second one reads now
    await q.finish("inbound", item, T0 + 63, status="rejected",
                   detail="mail.format: not a TCMS protocol mail")
    entry = await q.entry("inbound", str(item))
    assert entry is not None and entry.status == "done" and "notice" in entry.detail, entry


async def test_outbox_failures_back_off_then_quarantine(store: Store) -> None:
    """The outbox as the worker drives it: claim_outbox under a lease, a failure through
    Queues.fail (retry after the backoff, quarantine past the bound), retried by an
    administrator, then sent once."""
    q = Queues(store, lease=60, max_attempts=3)
    cid = b"o" * 32
    await store.save_run(RunRecord(cid, "sender", cid.hex()[:32], "alice@a.test", "bob@b.test",
                                   "hi", "await-m4", False, T0 + 100, b"state"),
                         now=T0, outbox=[OutMessage("peer", "m3", b"m3-bytes")])
    now = T0
    for attempt in (1, 2):
        (got,) = await store.claim_outbox(now, q.lease)
        assert got.attempts == attempt and got.kind == "m3"
        assert await q.fail("outbox", got.id, got.attempts, now, "451 try later") == "retry"
        assert await store.claim_outbox(now + backoff(attempt) - 1, q.lease) == []
        now += backoff(attempt)
    (got,) = await store.claim_outbox(now, q.lease)
    key = str(got.id)
    assert await q.fail("outbox", got.id, got.attempts, now, "550 no") == "quarantined"
    assert await store.claim_outbox(now + 10_000, q.lease) == []  # never again on its own
    entry = await q.entry("outbox", key)
    assert entry is not None and (entry.status, entry.attempts) == ("quarantined", 3)
    assert entry.last_error == "550 no"
    assert await q.retry("outbox", key, now)  # the administrator's `tcms queue retry`
    (got,) = await store.claim_outbox(now, q.lease)
    assert got.attempts == 1
    await store.outbox_done(got.id, now)
    assert await store.claim_outbox(now + 10_000, q.lease) == []
    assert not await q.retry("outbox", key, now)  # sent: nothing left to retry
    entry = await q.entry("outbox", key)
    assert entry is not None and entry.status == "sent"


def _worker(store: Store, max_attempts: int = 3) -> Worker:
    settings = SimpleNamespace(gateway=SimpleNamespace(poll_interval=0.05))
    ctx: Any = SimpleNamespace(queues=Queues(store, max_attempts=max_attempts),
                               settings=settings)
    return Worker(ctx, clock=lambda: T0)


async def test_one_failing_or_slow_item_never_delays_another(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """A lane of the worker, on real rows: one item raises, one hangs; the others are all
    handled meanwhile, the failing one is retried later and logged with a traceback once."""
    worker = _worker(store)
    ids = await add(worker.ctx.queues, 12)
    handled: list[int] = []
    release = asyncio.Event()

    async def handle(item: Any) -> None:
        async def work() -> None:
            if item.id == ids[0]:
                raise RuntimeError("a bug in this item's handling")
            if item.id == ids[1]:
                await release.wait()  # a slow item
            handled.append(item.id)
            await worker.ctx.queues.finish("inbound", item.id, T0)
        await worker.isolated("inbound", item.id, item.attempts, work)

    lane = Lane("inbound", lambda n: worker.ctx.queues.claim_inbound(T0, n), handle,
                lambda i: i.id)
    with caplog.at_level(logging.INFO, logger="tcms.gateway.worker"):
        task = asyncio.create_task(worker.run_lane(lane))
        while set(ids[2:]) - set(handled):  # all the others, while the slow one waits
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
        assert ids[1] not in handled
        release.set()
        while ids[1] not in handled:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # the lane ends with what it held: no query left on a closing store
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "failed unexpectedly" in tracebacks[0].getMessage()
    entry = await worker.ctx.queues.entry("inbound", str(ids[0]))
    assert entry is not None and entry.status == "new" and entry.next_attempt == T0 + 2
    assert entry.last_error == "unexpected RuntimeError: a bug in this item's handling"


async def test_an_unexpected_failure_is_logged_with_its_traceback_once(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    worker = _worker(store, max_attempts=3)
    (item,) = await add(worker.ctx.queues)

    async def boom() -> None:
        raise KeyError("deep inside")

    with caplog.at_level(logging.INFO, logger="tcms.gateway.worker"):
        for attempts in (1, 2, 3):
            await worker.isolated("inbound", item, attempts, boom)
    assert sum(1 for r in caplog.records if r.exc_info) == 1
    assert any("quarantined after 3 tries" in r.getMessage() for r in caplog.records)
    entry = await worker.ctx.queues.entry("inbound", str(item))
    assert entry is not None and entry.status == "quarantined"


def tcms(args: list[str], db: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCMS_")}
    env["TCMS_DATABASE__URL"] = f"sqlite:///{db}"
    return subprocess.run([sys.executable, "-m", "tcms.cli", *args], env=env,
                          capture_output=True, text=True, timeout=PATIENCE)


def test_an_administrator_lists_shows_retries_and_drops(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"

    async def prepare() -> list[int]:
        store = Store(f"sqlite:///{db}", data_keys=DATA_KEYS)
        await store.upgrade()
        q = Queues(store, max_attempts=1)
        ids = await add(q, 2)
        for item in await q.claim_inbound(T0):
            await q.fail("inbound", item.id, item.attempts, T0, "DC unreachable")
        await store.close()
        return ids

    first, second = asyncio.run(prepare())
    listed = tcms(["queue", "list"], db)
    assert listed.returncode == 0, listed.stderr
    lines = [x for x in listed.stdout.splitlines() if x.startswith("inbound")]
    assert len(lines) == 2 and all("quarantined" in x and "DC unreachable" in x for x in lines)
    assert "2 item(s), 2 quarantined" in listed.stderr
    shown = tcms(["queue", "show", "inbound", str(first)], db)
    assert shown.returncode == 0 and "last error: DC unreachable" in shown.stdout
    assert tcms(["queue", "retry", "inbound", str(first)], db).returncode == 0
    assert "status:     new" in tcms(["queue", "show", "inbound", str(first)], db).stdout
    dropped = tcms(["queue", "drop", "inbound", str(second)], db)
    assert dropped.returncode == 0 and "dropped" in dropped.stdout
    assert tcms(["queue", "drop", "inbound", str(second)], db).returncode == 1
    assert tcms(["queue", "show", "inbound", "999"], db).returncode == 1
    bad = tcms(["queue", "show", "deadline", "nonsense"], db)
    assert bad.returncode == 2 and "CID/role" in bad.stderr
    assert "drop" in tcms(["queue", "--help"], db).stdout


async def test_a_restarted_instance_takes_back_what_it_held(store: Store) -> None:
    """A gateway killed while holding items gets them back at start, not after the
    lease; what another instance holds stays with it."""
    mine, other = Queues(store, instance="gw-1:8587"), Queues(store, instance="gw-2:8587")
    ids = await add(mine, 2)
    (held,) = await mine.claim_inbound(T0, limit=1)
    (theirs,) = await other.claim_inbound(T0, limit=1)
    assert (held.id, theirs.id) == (ids[0], ids[1])
    restarted = Queues(store, instance="gw-1:8587")
    assert await restarted.release_claims() == 1
    again = await restarted.claim_inbound(T0 + 1)
    assert [i.id for i in again] == [held.id] and again[0].attempts == 2
    assert await Queues(store, instance="gw-3:8587").release_claims() == 0


def _run(cid: bytes, deadline: int | None = T0) -> RunRecord:
    return RunRecord(cid, "sender", cid.hex()[:32], "alice@a.test", "bob@b.test", "hi",
                     "await-m4", False, deadline, b"state")


async def test_submissions_are_claimed_retried_and_finished(store: Store) -> None:
    q = Queues(store, lease=60, max_attempts=3)
    sid = await store.add_submission(message_id="<1@a.test>", sender="alice@a.test",
                                     recipients=["bob@b.test", "carol@b.test"],
                                     subject="hi", raw=b"mail", now=T0)
    (sub,) = await q.claim_submissions(T0)
    assert (sub.id, sub.sender, sub.recipients, sub.attempts) == (
        sid, "alice@a.test", ["bob@b.test", "carol@b.test"], 1)
    assert await q.mail_of("submission", sub.id) == b"mail"  # read per item, not claimed
    assert await q.claim_submissions(T0 + 59) == []  # held by the lease
    assert await q.fail("submission", sid, sub.attempts, T0, "DC down") == "retry"
    assert await q.claim_submissions(T0 + backoff(1) - 1) == []
    (sub,) = await q.claim_submissions(T0 + backoff(1))
    assert sub.attempts == 2
    await q.finish("submission", sid, T0 + 5, status="started")
    assert await q.claim_submissions(T0 + 10_000) == []
    entry = await q.entry("submission", str(sid))
    assert entry is not None and entry.status == "started" and entry.last_error == "DC down"


async def test_a_failing_deadline_backs_off_then_waits_for_an_administrator(
        store: Store) -> None:
    q = Queues(store, max_attempts=2)
    rec = await store.save_run(_run(b"d" * 32), now=T0)
    key = f"{rec.cid.hex()}/sender"
    assert [r.cid for r in await store.due_runs(T0)] == [rec.cid]
    assert await q.fail("deadline", key, 1, T0, "TTP down") == "retry"
    assert await store.due_runs(T0 + backoff(1) - 1) == []
    assert [r.attempts for r in await store.due_runs(T0 + backoff(1))] == [1]
    assert await q.fail("deadline", key, 2, T0 + 2, "TTP down again") == "quarantined"
    assert await store.due_runs(T0 + 10_000) == []  # the exchange's timer waits
    assert [e.key for e in await q.entries("deadline")] == [key]
    assert await q.retry("deadline", key, T0 + 3)
    (due,) = await store.due_runs(T0 + 3)
    assert (due.attempts, due.quarantined) == (0, False)
    with pytest.raises(ValueError, match="cannot drop"):
        await q.drop("deadline", key, T0 + 3)


async def test_answer_checks_fail_and_are_rescheduled(store: Store) -> None:
    q = Queues(store, max_attempts=3)
    await q.want_answer_check("bob@b.test", T0, T0)
    (check,) = await q.claim_answer_checks(T0)
    assert await q.fail("answers", check.owner, check.attempts, T0, "IMAP down") == "retry"
    assert await q.claim_answer_checks(T0 + backoff(1) - 1) == []
    (check,) = await q.claim_answer_checks(T0 + backoff(1))
    assert check.attempts == 2
    # a notice is still pending: look again later, the failures forgotten
    await q.reschedule_answers(check.owner, T0 + 500, T0 + 2)
    assert await q.claim_answer_checks(T0 + 499) == []
    (check,) = await q.claim_answer_checks(T0 + 500)
    assert check.attempts == 1
    entry = await q.entry("answers", "bob@b.test")
    assert entry is not None and entry.last_error is None
    assert await q.drop("answers", "bob@b.test", T0 + 501)
    assert await q.entry("answers", "bob@b.test") is None


async def test_a_restarted_instance_takes_back_its_outbox_and_submissions(
        store: Store) -> None:
    mine = Queues(store, lease=60, instance="gw-1:8587")
    await store.save_run(_run(b"r" * 32, None), now=T0,
                         outbox=[OutMessage("peer", "m3", b"m3-bytes")])
    await store.add_submission(message_id="<2@a.test>", sender="alice@a.test",
                               recipients=["bob@b.test"], subject="s", raw=b"m", now=T0)
    (msg,) = await store.claim_outbox(T0, mine.lease, by=mine.instance)
    (sub,) = await mine.claim_submissions(T0)
    other = Queues(store, instance="gw-2:8587")
    assert await other.release_claims() == 0  # not theirs to give back
    assert await store.claim_outbox(T0 + 1, mine.lease) == []
    restarted = Queues(store, lease=60, instance="gw-1:8587")
    assert await restarted.release_claims() == 2
    (again,) = await store.claim_outbox(T0 + 1, mine.lease)
    assert (again.id, again.attempts, again.data) == (msg.id, 2, b"m3-bytes")
    assert [s.id for s in await restarted.claim_submissions(T0 + 1)] == [sub.id]


async def test_an_administrator_drops_an_outbox_message_for_good(store: Store) -> None:
    q = Queues(store)
    await store.save_run(_run(b"x" * 32, None), now=T0,
                         outbox=[OutMessage("ttp", "abort", b"request")])
    (msg,) = await store.claim_outbox(T0, q.lease)
    assert await q.drop("outbox", str(msg.id), T0 + 1)
    assert await store.claim_outbox(T0 + 10_000, q.lease) == []
    assert not await q.drop("outbox", str(msg.id), T0 + 2)  # already finished
    assert [(e.event, e.detail) for e in await store.audit_entries()] == [
        ("queue.drop", f"outbox:{msg.id}")]
