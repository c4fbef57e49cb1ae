"""A small IMAP client for the gateway's mailbox work (aioimaplib): open a user's mailbox
through the upstream server's master login, find mail by header, fetch, append once,
move and delete by UID.  Folder names are built with the server's hierarchy delimiter."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType

import aioimaplib

from gateway import imapdata  # noqa: F401 - installs itself in aioimaplib (large APPENDs)

log = logging.getLogger("tcms.gateway.imap")
_QUOTED = re.compile(r'^\(.*?\) (?:"((?:[^"\\]|\\.)*)"|NIL) ')


class ImapError(Exception):
    """The upstream IMAP server refused a command or is unreachable."""


@dataclass(frozen=True)
class MasterLogin:
    connect: Callable[[], aioimaplib.IMAP4]  # a new client of the upstream server
    master_user: str
    master_password: str
    separator: str = "*"
    known: set[str] = field(default_factory=set, compare=False, repr=False)  # user/folder

    # sessions kept open between uses (a TLS handshake and a login saved each time)
    idle: dict[str, list[tuple[Mailbox, float]]] = field(default_factory=dict, compare=False,
                                                          repr=False)
    keep_seconds: float = 20.0
    keep_per_user: int = 2
    keep_total: int = 64

    def open(self, user: str) -> Mailbox:
        """A new session, closed when the ``async with`` ends."""
        return Mailbox(self, user)

    @contextlib.asynccontextmanager
    async def session(self, user: str) -> AsyncIterator[Mailbox]:
        """A session on ``user``'s mailbox, reused if one is idle (checked with NOOP) and
        kept for ``keep_seconds`` afterwards.  A session whose work failed is closed."""
        box = await self._take(user)
        try:
            yield box
        except BaseException:
            await box.close()
            raise
        self._give(user, box)

    async def _take(self, user: str) -> Mailbox:
        pool = self.idle.get(user, [])
        while pool:
            box, since = pool.pop()
            if time.monotonic() - since < self.keep_seconds:
                try:
                    await box.noop()
                    return box
                except ImapError:
                    pass
            await box.close()
        box = Mailbox(self, user)
        await box.__aenter__()
        return box

    def _give(self, user: str, box: Mailbox) -> None:
        pool = self.idle.setdefault(user, [])
        total = sum(len(p) for p in self.idle.values())
        if len(pool) < self.keep_per_user and total < self.keep_total:
            pool.append((box, time.monotonic()))
        else:
            box.discard()

    async def sweep(self) -> None:
        """Close sessions idle for longer than ``keep_seconds``."""
        now = time.monotonic()
        for user, pool in list(self.idle.items()):
            keep = [(b, t) for b, t in pool if now - t < self.keep_seconds]
            for box, t in pool:
                if now - t >= self.keep_seconds:
                    await box.close()
            if keep:
                self.idle[user] = keep
            else:
                del self.idle[user]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Mailbox:
    """``async with login.open(user) as box:`` — one authenticated session on ``user``'s
    mailbox.  Every failing command raises ImapError naming the command."""

    def __init__(self, login: MasterLogin, user: str) -> None:
        self.login = login
        self.user = user
        self.client = login.connect()
        self.selected: str | None = None
        self._delimiter: str | None = None

    async def __aenter__(self) -> Mailbox:
        try:
            await self.client.wait_hello_from_server()
            res = await self.client.login(
                f"{self.user}{self.login.separator}{self.login.master_user}",
                self.login.master_password)
        except (TimeoutError, OSError, aioimaplib.Abort) as exc:
            raise ImapError(f"upstream IMAP unreachable: {exc}") from None
        if res.result != "OK":
            raise ImapError(f"master login to {self.user}'s mailbox refused")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError, OSError, aioimaplib.Abort,
                                 aioimaplib.CommandTimeout, Exception):
            await self.client.logout()

    def discard(self) -> None:
        """Drop the connection without a LOGOUT round trip."""
        with contextlib.suppress(Exception):
            self.client.protocol.transport.close()

    async def noop(self) -> None:
        try:
            await self._ok("NOOP", await self.client.noop())
        except (TimeoutError, OSError, aioimaplib.Abort, aioimaplib.CommandTimeout) as exc:
            raise ImapError(f"NOOP failed for {self.user}: {exc}") from None

    async def _ok(self, what: str, res: aioimaplib.Response) -> list[bytes]:
        if res.result != "OK":
            text = b" ".join(bytes(x) for x in res.lines).decode(errors="replace")
            raise ImapError(f"{what} failed for {self.user}: {text[:200]}")
        return [bytes(x) for x in res.lines]

    async def delimiter(self) -> str:
        if self._delimiter is None:
            lines = await self._ok("LIST", await self.client.list('""', '""'))
            m = _QUOTED.match(lines[0].decode()) if lines else None
            self._delimiter = (m.group(1) or ".") if m else "."
        return self._delimiter

    async def folder(self, *parts: str, subscribe: bool = True) -> str:
        """The folder named by ``parts`` (e.g. Certified, Accept), created (and subscribed,
        so that clients show it) if missing."""
        name = (await self.delimiter()).join(parts)
        if f"{self.user}/{name}" in self.login.known:
            return name
        res = await self.client.create(_quote(name))
        if res.result != "OK" and b"exists" not in b" ".join(bytes(x) for x in res.lines):
            await self._ok(f"CREATE {name}", res)
        if res.result == "OK" and subscribe:
            await self.client.subscribe(_quote(name))
        self.login.known.add(f"{self.user}/{name}")
        return name

    async def select(self, folder: str = "INBOX") -> None:
        if self.selected != folder:
            await self._ok(f"SELECT {folder}", await self.client.select(_quote(folder)))
            self.selected = folder

    async def search_header(self, folder: str, name: str, value: str = "") -> list[str]:
        """UIDs of the messages in ``folder`` whose header ``name`` contains ``value``."""
        await self.select(folder)
        lines = await self._ok("SEARCH", await self.client.uid_search(
            "HEADER", name, _quote(value), charset=None))
        return lines[0].decode().split() if lines and lines[0][:1].isdigit() else []

    async def fetch(self, uid: str) -> bytes | None:
        """The whole message ``uid`` of the selected folder (None if it is gone)."""
        lines = await self._ok("FETCH", await self.client.uid("fetch", uid, "(BODY.PEEK[])"))
        for i, line in enumerate(lines[:-1]):
            if line.endswith(b"}") and b"FETCH" in line:
                return lines[i + 1]
        return None

    async def delete(self, uid: str) -> None:
        await self._ok("STORE", await self.client.uid("store", uid, "+FLAGS.SILENT",
                                                      "(\\Deleted)"))
        await self._ok("EXPUNGE", await self.client.uid("expunge", uid))

    async def move(self, uid: str, folder: str) -> None:
        await self._ok("MOVE", await self.client.uid("move", uid, _quote(folder)))

    async def append_once(self, folder: str, message: bytes, header: str, key: str,
                          flags: str = "", retry: bool = True) -> bool:
        """APPEND ``message`` unless ``folder`` already holds one whose ``header`` is ``key``
        (so a retried delivery never shows twice).  True if appended now.  On a first try
        (``retry`` false: no earlier try can have appended it) the search, whose cost grows
        with the folder, is skipped."""
        if retry and await self.search_header(folder, header, key):
            return False
        res = await self.client.append(message, mailbox=_quote(folder), flags=flags or None)
        await self._ok(f"APPEND to {folder}", res)
        self.selected = None  # the folder's state changed under us
        return True
