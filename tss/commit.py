"""Group commit: a request's token is signed at once, with a serial from the block this
process reserved (tss/store.py), and waits for the next group; one transaction logs a
whole group, and only when it has committed do its tokens go out.

So a crash at any moment loses no token that a client received: a request whose group had
not committed gets no answer (its connection breaks) and its client asks again.  Under load
the groups grow by themselves (many tokens per commit); alone, a request is one group.
On PostgreSQL several groups commit at once (its WAL flush serves them together); SQLite
has one writer at a time, so one group commits at a time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable

from tcms.store import Store
from tss.authority import TimeStampAuthority
from tss.request import TsRequest
from tss.store import LogEntry, log_writer, reserve_serials

log = logging.getLogger("tcms.tss")
MAX_GROUP = 512
SERIAL_BLOCK = 256


class LogUnavailable(Exception):
    """The log could not be written: no token was issued."""


class GroupCommit:
    """Writer tasks, started with the first request: one on SQLite, ``pg_writers`` on
    PostgreSQL, each on a connection of its own."""

    def __init__(self, store: Store, tsa: TimeStampAuthority,
                 clock: Callable[[], float] = time.time, *, max_group: int = MAX_GROUP,
                 serial_block: int = SERIAL_BLOCK, pg_writers: int = 4) -> None:
        self.store, self.tsa, self.clock = store, tsa, clock
        self.max_group, self.serial_block = max_group, serial_block
        self.writers = pg_writers if store.is_postgres else 1
        self._waiting: deque[tuple[LogEntry, asyncio.Future[None]]] = deque()
        self._serials: deque[int] = deque()
        self._reserving: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def issue(self, request: TsRequest, requester: str | None = None,
                    requester_fp: str | None = None) -> bytes:
        """The token for ``request``, once it is durably in the log."""
        if not self._tasks:
            self._start()
        serial = await self._serial()
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        token = self.tsa.issue(request, now=now, serial=serial)
        entry = LogEntry(serial, int(now.timestamp()), request, token, requester, requester_fp)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, done))
        assert self._wake is not None
        self._wake.set()
        await done
        return token

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _start(self) -> None:
        self._reserving, self._wake = asyncio.Lock(), asyncio.Event()
        self._tasks = [asyncio.create_task(self._write(), name=f"tss-group-commit-{i}")
                       for i in range(self.writers)]

    async def _serial(self) -> int:
        assert self._reserving is not None
        while not self._serials:
            async with self._reserving:
                if self._serials:
                    break
                try:
                    async with self.store.engine.connect() as conn:
                        self._serials.extend(await reserve_serials(conn, self.serial_block))
                except Exception as exc:
                    log.error("TSS log: no serial numbers could be reserved: %s", exc)
                    raise LogUnavailable(str(exc)) from None
        return self._serials.popleft()

    async def _write(self) -> None:
        assert self._wake is not None
        writer = log_writer(self.store)
        try:
            while True:
                while not self._waiting:
                    self._wake.clear()
                    await self._wake.wait()
                group = [self._waiting.popleft()
                         for _ in range(min(self.max_group, len(self._waiting)))]
                try:
                    await writer.write([e for e, _ in group])
                except Exception as exc:  # the database refused or is gone: nothing issued
                    log.error("TSS log: a group of %d time stamps was not logged: %s",
                              len(group), exc)
                    for _, done in group:
                        if not done.done():
                            done.set_exception(LogUnavailable(str(exc)))
                    continue
                for _, done in group:
                    if not done.done():
                        done.set_result(None)
        finally:
            await writer.close()
