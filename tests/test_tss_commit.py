"""The TSS's group commit: many tokens per commit, and never a token out whose log entry is
not durable: `tcms serve tss` killed (SIGKILL) under load from several clients, on SQLite
and on PostgreSQL, has every token that a client received in its log."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from asn1crypto import cms, tsp
from conftest import TSA, pg_database
from services import Services, prepare_keys

from tcms.store import Store
from tcms.timestamp import make_request, token_from_reply
from tss import store as tss_store
from tss.commit import GroupCommit, LogUnavailable

QUERY = {"Content-Type": "application/timestamp-query"}


def serial_of(token: bytes) -> int:
    content = cms.ContentInfo.load(token)["content"]
    info = tsp.TSTInfo.load(content["encap_content_info"]["content"].parsed.dump())
    return int(info["serial_number"].native)


async def load_until_killed(svc: Services, clients: int, kill_after: int) -> list[bytes]:
    """``clients`` keep-alive clients ask for time stamps; once ``kill_after`` tokens have
    arrived the server gets SIGKILL while the others' requests are in flight."""
    received: list[bytes] = []
    killed = asyncio.Event()

    async def client(i: int) -> None:
        async with httpx.AsyncClient(timeout=30) as c:
            n = 0
            while not killed.is_set():
                query = make_request(hashlib.sha256(f"{i}/{n}".encode()).digest())[0]
                n += 1
                try:
                    r = await c.post(svc.tss + "/tsa", content=query, headers=QUERY)
                except httpx.HTTPError:
                    return  # the server is gone
                assert r.status_code == 200, r.text
                received.append(token_from_reply(r.content))
                if len(received) >= kill_after and not killed.is_set():
                    killed.set()
                    assert svc.proc is not None
                    svc.proc.send_signal(signal.SIGKILL)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return received


async def log_of(url: str) -> dict[int, bytes | None]:
    store = Store(url)
    try:
        return await tss_store.logged_tokens(store)
    finally:
        await store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tss.db'}"
        return
    async with pg_database() as url:
        yield url


def test_a_crash_loses_no_issued_token(db_url: str, tmp_path: Path) -> None:
    prepare_keys(tmp_path / "keys")
    svc = Services(tmp_path, db_url, which="tss").start()
    try:
        received = asyncio.run(load_until_killed(svc, clients=8, kill_after=400))
    finally:
        svc.stop(signal.SIGKILL)
    assert svc.proc is not None and svc.proc.returncode == -signal.SIGKILL
    logged = asyncio.run(log_of(db_url))
    assert len(received) >= 400
    for token in received:
        assert logged.get(serial_of(token)) == token
    assert len({serial_of(t) for t in received}) == len(received)

    # restarted, the server goes on with serials above every one it gave before
    svc.start()
    try:
        r = httpx.post(svc.tss + "/tsa", content=make_request(os.urandom(32))[0],
                       headers=QUERY)
        after = serial_of(token_from_reply(r.content))
    finally:
        svc.stop()
    assert after > max(logged)


async def test_many_tokens_per_commit(store: Store) -> None:
    groups: list[int] = []
    commit = GroupCommit(store, TSA, serial_block=16)
    real = tss_store.log_writer

    def counting(s: Store) -> tss_store.LogWriter:
        writer = real(s)
        write = writer.write

        async def counted(entries: Sequence[tss_store.LogEntry]) -> None:
            groups.append(len(entries))
            await write(entries)

        writer.write = counted  # type: ignore[method-assign]
        return writer

    requests = [TSA.parse_request(make_request(hashlib.sha256(bytes([i])).digest())[0])
                for i in range(100)]
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("tss.commit.log_writer", counting)
            tokens = await asyncio.gather(*(commit.issue(r) for r in requests))
    finally:
        await commit.close()
    logged = await tss_store.logged_tokens(store)
    assert sorted(logged.values()) == sorted(tokens)  # type: ignore[type-var]
    assert sum(groups) == 100 and len(groups) < 100 and max(groups) > 1
    assert len(set(logged)) == 100


async def test_no_token_when_the_log_cannot_be_written(store: Store) -> None:
    commit = GroupCommit(store, TSA)
    request = TSA.parse_request(make_request(bytes(32))[0])
    try:
        first = await commit.issue(request)
        async with store.transaction() as conn:  # the log's table is gone
            await conn.exec_driver_sql("ALTER TABLE tss_log RENAME TO tss_log_away")
        with pytest.raises(LogUnavailable):
            await commit.issue(request)
        async with store.transaction() as conn:
            await conn.exec_driver_sql("ALTER TABLE tss_log_away RENAME TO tss_log")
        second = await commit.issue(request)  # and the writer goes on afterwards
    finally:
        await commit.close()
    assert set((await tss_store.logged_tokens(store)).values()) == {first, second}
