from __future__ import annotations

import asyncio
import asyncio.runners
import datetime as dt
import os
import signal
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select

from tcms.datakeys import DataKey, DataKeys
from tcms.identity import Identity, Party
from tcms.protocol import ttp as ttp_role
from tcms.protocol.checks import Trust
from tcms.protocol.events import Action, Deliver, Received, Send, TimestampReply
from tcms.protocol.messages import M1, Deadlines, Description
from tcms.protocol.receiver import Receiver
from tcms.protocol.sender import Sender
from tcms.store import Store
from tss.authority import TimeStampAuthority, create_credentials

PG_URL = os.environ.get("TCMS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _interrupted(signum: int, _frame: object) -> None:
    """SIGTERM or SIGHUP (a CI timeout, a closed terminal) ends the run as Ctrl-C does:
    fixtures are torn down and atexit handlers run, so no server a test started is left
    running (tests/services.py, tests/mailstack.py)."""
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


signal.signal(signal.SIGTERM, _interrupted)
signal.signal(signal.SIGHUP, _interrupted)

# When a test's event loop closes, asyncio cancels the tasks left on it and waits for them
# without a limit. A task that cannot end (seen: SQLAlchemy's graceful close of an aiosqlite
# connection whose worker thread is already gone, started when a pooled connection is
# garbage-collected as the loop closes) then holds the whole run at exit. Wait a bounded
# time and name what is left, as a warning in the run's summary, instead of hanging.
LEFT_TASK_PATIENCE = 30.0


def _cancel_all_tasks_bounded(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    done, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=LEFT_TASK_PATIENCE))
    for task in pending:
        warnings.warn(f"a task left on a closing test loop did not end when cancelled: "
                      f"{task!r}", RuntimeWarning, stacklevel=1)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({"message": "unhandled exception during loop close",
                                         "exception": task.exception(), "task": task})


asyncio.runners._cancel_all_tasks = _cancel_all_tasks_bounded  # type: ignore[attr-defined]


# module-scoped fixtures are costly (a mail stack, two gateways, running services): under
# pytest-xdist (`make test`: --dist loadgroup) the tests that share one run on one worker
SHARED_SCOPES = ("module", "package", "session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests of a module that use a fixture of module scope (defined by the tests, not
    pytest's own) form one xdist group, so the fixture is set up once per run; the slow
    tests (end-to-end, batteries) come first, so that a parallel run does not end waiting
    for one long test that started last."""
    grouped = set()
    index: dict[str, int] = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        shared = [name for name, defs in info.name2fixturedefs.items()
                  if defs and defs[-1].scope in SHARED_SCOPES and defs[-1].baseid]
        if shared and item.get_closest_marker("xdist_group") is None:
            # a long module says how many groups (each with its own fixture) it splits into
            module = item.nodeid.split("::", 1)[0]
            n = index[module] = index.get(module, -1) + 1
            groups = getattr(getattr(item, "module", None), "XDIST_GROUPS", 1)
            item.add_marker(pytest.mark.xdist_group(f"{module}#{n % groups}"))
        if item.get_closest_marker("xdist_group") is not None:
            grouped.add(item.nodeid)
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None,
                                 item.nodeid not in grouped))


T0 = 1_800_000_000  # a fixed "now" for protocol tests (2027-01-15)

ALICE = Identity.from_seed("alice@a.test", b"alice" * 6 + b"xx")
BOB = Identity.from_seed("bob@b.test", b"bob" * 10 + b"xx")
CAROL = Identity.from_seed("carol@b.test", b"carol" * 6 + b"xx")
TTP = Identity.from_seed("ttp@tcms.test", b"ttp" * 10 + b"xx", kind="ttp")
MALLORY_TTP = Identity.from_seed("ttp@evil.test", b"evil" * 8, kind="ttp")
# valid from 2026-01-01 for ten years: covers both today (OpenSSL checks against its own
# clock) and T0 (the protocol tests' fixed time)
TSA = TimeStampAuthority(create_credentials("Test TSA", now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)))
TRUST = Trust(TTP.party, TSA.creds.ca_cert)
DEADLINES = Deadlines(T0 + 100, T0 + 200, T0 + 300, T0 + 1000)
PARTIES = {p.name: p for p in (ALICE.party, BOB.party, CAROL.party)}
# the data key of stores made in tests (a gateway's own comes from its keystore)
DATA_KEYS = DataKeys([DataKey(0x7E570001, T0, b"k" * 32)], 0x7E570001)


def known(name: str) -> Party | None:
    return PARTIES.get(name)


class TssClock:
    serial = 0


def stamp(data: bytes, at: int, *, kind: str = "m1") -> bytes:
    TssClock.serial += 1
    tsq = M1.decode(data).tsq if kind == "m1" else data
    return TSA.stamp(tsq, now=dt.datetime.fromtimestamp(at, dt.UTC), serial=TssClock.serial).reply


@dataclass
class Run:
    """A sender, its m3 and (once built) a receiver: the pieces protocol tests need."""

    sender: Sender
    m3: bytes
    _receiver: Receiver | None = None
    ttp_decision: ttp_role.Decision | None = None
    delivered: list[bytes] = field(default_factory=list)

    @property
    def receiver(self) -> Receiver:
        assert self._receiver is not None, "no receiver yet: the recipient has not got m3"
        return self._receiver

    @receiver.setter
    def receiver(self, r: Receiver) -> None:
        self._receiver = r

    def to_ttp(self, data: bytes, at: int) -> bytes:
        decision, answer = ttp_role.handle(TTP, TRUST, data, self.ttp_decision, at)
        if decision is not None:
            self.ttp_decision = decision
        return answer


def start_run(m0: bytes = b"Subject: test\r\n\r\nbody", *, sender: Identity = ALICE,
              recipient: Identity = BOB, at: int = T0,
              deadlines: Deadlines = DEADLINES) -> Run:
    s, acts = Sender.start(sender, TRUST, recipient.party, m0,
                           Description("test", len(m0), "<t@a.test>"), deadlines)
    acts = s.handle(TimestampReply(stamp(one(acts, "m1"), at)), at)
    return Run(s, one(acts, "m3"))


def sends(actions: Sequence[Action], kind: str | None = None) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and (kind is None or a.kind == kind)]


def one(actions: Sequence[Action], kind: str) -> bytes:
    found = sends(actions, kind)
    assert len(found) == 1, f"expected one {kind} in {actions}"
    return found[0].data


def delivered(actions: Sequence[Action]) -> list[bytes]:
    return [a.m0 for a in actions if isinstance(a, Deliver)]


def receive(machine: Sender | Receiver, data: bytes, at: int) -> list[Action]:
    return machine.handle(Received(data), at)


@pytest.fixture
def run_factory() -> Callable[..., Run]:
    return start_run


# --- stores: every store test runs on SQLite and on PostgreSQL -----------------------------


async def stored_values(store: Store, column: Any, *where: Any) -> list[Any]:
    """A column's values as the store reads them (sealed columns opened with its data key),
    in key order: a test's look at rows no production code reads back."""
    key = list(column.table.primary_key.columns)
    async with store.engine.connect() as conn:
        return list((await conn.execute(select(column).where(*where).order_by(*key))
                     ).scalars().all())


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'tcms.db'}", data_keys=DATA_KEYS)
        await s.upgrade()
        yield s
        await s.close()
        return
    async with pg_database() as url:
        s = Store(url, data_keys=DATA_KEYS)
        await s.upgrade()
        yield s
        await s.close()


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two organisations' gateways (a.test on PostgreSQL, b.test on SQLite), the TSS, TTP
    and DC, over a real Postfix and Dovecot (tests/gateways.py)."""
    import asyncio

    from gateways import start_orgs

    pg = pg_database()
    a_db = asyncio.run(pg.__aenter__())
    work = tmp_path_factory.mktemp("orgs")
    o = start_orgs(work, f"sqlite:///{work / 'services.db'}", a_db,
                   f"sqlite:///{work / 'b.db'}")
    try:
        yield o
    finally:
        o.stop()
        asyncio.run(pg.__aexit__(None, None, None))


class pg_database:
    """A fresh PostgreSQL database on the test server, dropped afterwards."""

    async def __aenter__(self) -> str:
        self.name = f"tcms_t_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        return PG_URL.rsplit("/", 1)[0] + "/" + self.name

    async def __aexit__(self, *exc: object) -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()
