"""The store, on SQLite and on PostgreSQL alike (the ``store`` fixture runs both)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import DATA_KEYS, DEADLINES, T0, TTP, pg_database, start_run, stored_values
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from tcms.protocol import ttp as ttp_role
from tcms.protocol.events import Tick
from tcms.store import ConcurrentUpdate, OutMessage, RunRecord, Store, models
from ttp import store as ttp_store


def record(cid: bytes = b"c" * 32, **kw: object) -> RunRecord:
    base = dict(cid=cid, role="sender", tx=cid.hex()[:32], owner="alice@a.test",
                peer="bob@b.test", subject="hi", phase="await-m4", terminal=False,
                deadline=T0 + 100, state=b"state-1")
    base.update(kw)
    return RunRecord(**base)  # type: ignore[arg-type]


async def test_upgrade_is_idempotent(store: Store) -> None:
    await store.upgrade()
    await store.upgrade()
    assert await store.list_runs() == []


async def test_run_roundtrip_with_messages_and_audit(store: Store) -> None:
    saved = await store.save_run(
        record(), now=T0, outbox=[OutMessage("peer", "m3", b"m3-bytes")],
        received=[("m2", b"token")], audit=[("alice@a.test", "run.created", "to bob")])
    assert saved.version == 1
    got = await store.get_run(b"c" * 32, "sender")
    assert got is not None and got.state == b"state-1" and got.created_at == T0
    msgs = await store.messages_of(b"c" * 32)
    assert [(m.direction, m.kind, m.data) for m in msgs] == [
        ("in", "m2", b"token"), ("out", "m3", b"m3-bytes")]
    entries = await store.audit_entries()
    assert [(e.event, e.detail) for e in entries] == [("run.created", "to bob")]


async def test_optimistic_locking_rejects_a_stale_writer(store: Store) -> None:
    v1 = await store.save_run(record(), now=T0)
    v2 = await store.save_run(record(version=v1.version, state=b"state-2"), now=T0 + 1)
    assert v2.version == 2
    with pytest.raises(ConcurrentUpdate):
        await store.save_run(record(version=v1.version, state=b"stale"), now=T0 + 2)
    with pytest.raises(ConcurrentUpdate):
        await store.save_run(record(), now=T0 + 3)  # a second insert of the same run
    got = await store.get_run(b"c" * 32, "sender")
    assert got is not None and got.state == b"state-2"


async def test_a_failed_update_writes_nothing(store: Store) -> None:
    v1 = await store.save_run(record(), now=T0)
    await store.save_run(record(version=v1.version), now=T0 + 1)
    with pytest.raises(ConcurrentUpdate):
        await store.save_run(record(version=v1.version),
                             now=T0 + 2, outbox=[OutMessage("peer", "m5", b"x")],
                             audit=[("a", "b", "c")])
    assert await store.claim_outbox(T0 + 2, lease=60) == []
    assert await store.audit_entries() == []


async def test_due_runs_are_the_timer_work_list(store: Store) -> None:
    await store.save_run(record(b"a" * 32, deadline=T0 + 10), now=T0)
    await store.save_run(record(b"b" * 32, deadline=T0 + 20), now=T0)
    await store.save_run(record(b"d" * 32, deadline=None), now=T0)
    await store.save_run(record(b"e" * 32, deadline=T0 + 5, terminal=True), now=T0)
    assert [r.cid for r in await store.due_runs(T0 + 15)] == [b"a" * 32]
    assert [r.cid for r in await store.due_runs(T0 + 25)] == [b"a" * 32, b"b" * 32]


# --- the outbox: claimed under a lease, as the gateway's worker does ------------------------


async def queue_outbox(store: Store, runs: int = 3, per_run: int = 4) -> list[int]:
    """``runs`` runs with ``per_run`` outgoing messages each (and one incoming); their ids."""
    for r in range(runs):
        await store.save_run(record(bytes([r + 1]) * 32), now=T0, received=[("m2", b"in")],
                             outbox=[OutMessage("peer", f"m{i}", b"%d/%d" % (r, i))
                                     for i in range(per_run)])
    ids = []
    for r in range(runs):
        ids += [m.id for m in await store.messages_of(bytes([r + 1]) * 32)
                if m.direction == "out"]
    return sorted(ids)


async def test_the_outbox_is_claimed_oldest_first_each_message_once(store: Store) -> None:
    """(On PostgreSQL one UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP
    LOCKED) did not keep its limit: the subquery may be rescanned.  The claim picks the
    rows first, then updates exactly those.)"""
    ids = await queue_outbox(store)
    first = await store.claim_outbox(T0, lease=60, limit=2)
    assert [r.id for r in first] == ids[:2]  # oldest first
    assert [(r.kind, r.data) for r in first] == [("m0", b"0/0"), ("m1", b"0/1")]
    # eight workers race for the rest: nobody gets a message another one holds
    claims = await asyncio.gather(*(store.claim_outbox(T0, lease=60, limit=3)
                                    for _ in range(8)))
    claimed = [r.id for batch in claims for r in batch]
    assert all(batch == sorted(batch, key=lambda r: r.id) for batch in claims)
    assert len(claimed) == len(set(claimed))
    claimed += [r.id for r in await store.claim_outbox(T0, lease=60, limit=100)]
    assert sorted(claimed) == ids[2:]  # every outgoing message once, no incoming one
    rows = [m for r in range(3) for m in await store.messages_of(bytes([r + 1]) * 32)
            if m.direction == "out"]
    assert {(m.claimed_until, m.attempts, m.sent_at) for m in rows} == {
        (T0 + 60, 1, None)}


async def test_an_outbox_lease_holds_until_it_runs_out_and_sent_is_final(
        store: Store) -> None:
    ids = await queue_outbox(store, runs=1, per_run=3)
    assert [r.id for r in await store.claim_outbox(T0, lease=60)] == ids
    assert await store.claim_outbox(T0 + 59, lease=60) == []  # held by the lease
    await store.outbox_done(ids[1], T0 + 10)  # its worker sent it
    # the lease ran out on the others (their worker died): claimed again, one more attempt
    again = await store.claim_outbox(T0 + 60, lease=60)
    assert [(r.id, r.attempts) for r in again] == [(ids[0], 2), (ids[2], 2)]
    for i in (0, 2):
        await store.outbox_done(ids[i], T0 + 61)
    assert await store.claim_outbox(T0 + 100_000, lease=60) == []  # sent is never resent
    sent = {m.id: (m.sent_at, m.claimed_until)
            for m in await store.messages_of(b"\x01" * 32) if m.direction == "out"}
    assert sent == {ids[0]: (T0 + 61, None), ids[1]: (T0 + 10, None),
                    ids[2]: (T0 + 61, None)}


async def test_a_real_machine_state_survives_the_store(store: Store) -> None:
    run = start_run()
    rec = RunRecord(run.sender.cid, "sender", run.sender.core.header.tx.hex(), "alice@a.test",
                    "bob@b.test", "test", run.sender.phase, run.sender.terminal,
                    run.sender.deadline, run.sender.dump())
    await store.save_run(rec, now=T0)
    [due] = await store.due_runs(DEADLINES.accept_by + 1)
    from conftest import ALICE, TRUST

    from tcms.protocol.sender import Sender

    sender = Sender.load(ALICE, TRUST, due.state)
    acts = sender.handle(Tick(), DEADLINES.accept_by + 1)
    assert sender.phase == "aborting" and acts


async def test_evidence_is_stored_per_role(store: Store) -> None:
    await store.save_evidence(b"c" * 32, "sender", "received", '{"a": 1}', T0)
    await store.save_evidence(b"c" * 32, "sender", "received", '{"a": 2}', T0 + 1)
    ev = models.evidence.c
    assert await stored_values(store, ev.bundle, ev.cid == b"c" * 32) == ['{"a": 2}']
    assert await stored_values(store, ev.bundle, ev.role == "receiver") == []


# --- the TTP's decisions ----------------------------------------------------------------


def _decision(state: str, cid: bytes = b"x" * 32, by: str = "S") -> ttp_role.Decision:
    return ttp_role.Decision(cid, state, state.encode(), T0, by, "alice@a.test", "bob@b.test")


async def test_the_first_ttp_decision_stands(store: Store) -> None:
    first = await ttp_store.record_decision(store, _decision("aborted"), "ttp")
    second = await ttp_store.record_decision(store, _decision("resolved", by="R"), "ttp")
    assert first.state == second.state == "aborted"
    assert (await ttp_store.count_decisions(store)) == {"aborted": 1}


async def test_concurrent_decisions_have_exactly_one_winner(store: Store) -> None:
    racers = [_decision("aborted" if i % 2 else "resolved", by="SR"[i % 2]) for i in range(20)]
    results = await asyncio.gather(*(ttp_store.record_decision(store, d, "ttp") for d in racers))
    assert len({r.state for r in results}) == 1
    assert sum((await ttp_store.count_decisions(store)).values()) == 1


async def test_decisions_and_audit_log_are_append_only(store: Store) -> None:
    await ttp_store.record_decision(store, _decision("aborted"), "ttp")
    for stmt in ("UPDATE ttp_decisions SET state = 'resolved'", "DELETE FROM ttp_decisions",
                 "UPDATE audit_log SET detail = 'forged'", "DELETE FROM audit_log"):
        with pytest.raises((IntegrityError, OperationalError, DBAPIError)):
            async with store.transaction() as conn:
                await conn.execute(text(stmt))
    assert (await ttp_store.count_decisions(store)) == {"aborted": 1}
    assert len(await store.audit_entries()) == 1


# --- the audit chain ----------------------------------------------------------------------


async def test_audit_chain_verifies_and_detects_tampering(store: Store) -> None:
    for i in range(5):
        await store.audit("gw", "event", f"detail {i}", now=T0 + i, cid=bytes([i]) * 32)
    assert await store.verify_audit_chain() == (5, None)
    # an attacker with raw database access drops the trigger and edits an entry
    async with store.transaction() as conn:
        if store.is_postgres:
            await conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        else:
            await conn.execute(text("DROP TRIGGER audit_log_no_update"))
        await conn.execute(text("UPDATE audit_log SET detail = 'forged' WHERE seq = 3"))
    n, why = await store.verify_audit_chain()
    assert n == 3 and why is not None and "does not match its hash" in why


async def test_concurrent_audit_appends_keep_one_chain(store: Store) -> None:
    await asyncio.gather(*(store.audit("gw", "event", f"d{i}", now=T0) for i in range(20)))
    assert await store.verify_audit_chain() == (20, None)


async def test_concurrent_run_updates_have_one_winner(store: Store) -> None:
    v1 = await store.save_run(record(), now=T0)

    async def write(i: int) -> bool:
        try:
            await store.save_run(record(version=v1.version, state=f"s{i}".encode()), now=T0)
            return True
        except ConcurrentUpdate:
            return False

    wins = await asyncio.gather(*(write(i) for i in range(10)))
    assert wins.count(True) == 1


# --- several processes on one PostgreSQL ---------------------------------------------------


@pytest.mark.postgres
async def test_two_gateway_replicas_on_one_postgres_claim_each_message_once() -> None:
    async with pg_database() as url:
        a, b = Store(url, data_keys=DATA_KEYS), Store(url, data_keys=DATA_KEYS)
        await a.upgrade()
        try:
            ids = await queue_outbox(a, runs=4, per_run=5)
            claims = await asyncio.gather(*(s.claim_outbox(T0, lease=60, limit=3)
                                            for _ in range(6) for s in (a, b)))
            claimed = [r.id for batch in claims for r in batch]
            claimed += [r.id for r in await b.claim_outbox(T0, lease=60, limit=100)]
            assert sorted(claimed) == ids  # each outgoing message by one replica, once
        finally:
            await a.close()
            await b.close()


@pytest.mark.postgres
async def test_two_stores_on_one_postgres_race_for_decisions() -> None:
    async with pg_database() as url:
        a, b = Store(url), Store(url)
        await a.upgrade()
        try:
            decisions = [_decision("aborted", cid=bytes([i]) * 32) for i in range(30)]
            rivals = [_decision("resolved", cid=bytes([i]) * 32, by="R") for i in range(30)]
            res = await asyncio.gather(
                *(ttp_store.record_decision(a, d, TTP.name) for d in decisions),
                *(ttp_store.record_decision(b, d, TTP.name) for d in rivals))
            by_cid: dict[bytes, set[str]] = {}
            for r in res:
                by_cid.setdefault(r.cid, set()).add(r.state)
            assert all(len(states) == 1 for states in by_cid.values())
            assert sum((await ttp_store.count_decisions(a)).values()) == 30
            assert (await a.verify_audit_chain()) == (30, None)
        finally:
            await a.close()
            await b.close()
