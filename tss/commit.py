"""Group commit: the requests that arrive while a group is being written wait for the next
group, and one transaction logs them all (tss/store.py).

A request's token is handed back only after the transaction that logged it has committed,
so a crash at any moment loses no token that a client received: a request whose group had
not committed gets no answer (its connection breaks) and its client asks again.  Under load
the groups grow by themselves (many tokens per commit); alone, a request is one group.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

from tcms.store import Store
from tss.authority import TimeStampAuthority
from tss.request import TsRequest
from tss.store import LogEntry, log_tokens

log = logging.getLogger("tcms.tss")
MAX_GROUP = 512


class LogUnavailable(Exception):
    """The log could not be written: no token was issued."""


class GroupCommit:
    """One writer task per process, started with the first request."""

    def __init__(self, store: Store, tsa: TimeStampAuthority,
                 clock: Callable[[], float] = time.time, max_group: int = MAX_GROUP) -> None:
        self.store, self.tsa, self.clock, self.max_group = store, tsa, clock, max_group
        self._waiting: list[tuple[LogEntry, asyncio.Future[bytes]]] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None

    async def issue(self, request: TsRequest, requester: str | None = None,
                    requester_fp: str | None = None) -> bytes:
        """The token for ``request``, once it is durably in the log."""
        if self._writer is None or self._writer.done():
            self._wake = asyncio.Event()
            self._writer = asyncio.create_task(self._write(), name="tss-group-commit")
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.append((LogEntry(request, requester, requester_fp), done))
        assert self._wake is not None
        self._wake.set()
        return await done

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None

    async def _write(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                group = self._waiting[:self.max_group]
                del self._waiting[:self.max_group]
                await self._commit(group)

    async def _commit(self, group: list[tuple[LogEntry, asyncio.Future[bytes]]]) -> None:
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        try:
            tokens = await log_tokens(
                self.store, [e for e, _ in group], now=int(now.timestamp()),
                sign=lambda req, serial: self.tsa.issue(req, now=now, serial=serial))
        except asyncio.CancelledError:
            for _, done in group:
                done.cancel()
            raise
        except Exception as exc:  # the database refused or is gone: no token is issued
            log.error("TSS log: a group of %d time stamps was not logged: %s", len(group), exc)
            for _, done in group:
                if not done.done():
                    done.set_exception(LogUnavailable(str(exc)))
            return
        for (_, done), token in zip(group, tokens, strict=True):
            if not done.done():
                done.set_result(token)
