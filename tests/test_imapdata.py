"""A large APPEND literal sent a piece at a time (gateway/imapdata.py) when the command ends
before the literal does, or the connection goes while the literal waits: the real Dovecot
behind a proxy that stops reading (so that the client's writes pause, as on a slow link)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import aioimaplib
import pytest
from mailstack import MASTER, PATIENCE, MailStack

from gateway import imapdata
from gateway.imap import MasterLogin

pytestmark = pytest.mark.slow
USERS = {"carol@b.test": "carol-password"}
SIZE = 12 * 1024 * 1024  # more than the kernel's buffers hold between client and proxy


@pytest.fixture(scope="module")
def stack() -> Iterator[MailStack]:
    s = MailStack(USERS).start()
    yield s
    s.remove()


class StallingProxy:
    """Forwards to Dovecot; stops reading the client ``stall_after`` bytes into an APPEND
    until ``flowing`` is set; keeps what it forwarded to the server (``upward``)."""

    def __init__(self, upstream: int, stall_after: int = 1024 * 1024,
                 rate: float | None = None) -> None:
        """``rate``: the bytes a second it passes of an APPEND (a slow link), if given."""
        self.upstream, self.stall_after, self.rate = upstream, stall_after, rate
        self.flowing = asyncio.Event()
        self.stalled = asyncio.Event()
        self.server_done = asyncio.Event()
        self.upward = bytearray()
        self.clients: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # no autotuning
        sock.bind(("127.0.0.1", 0))
        self.server = await asyncio.start_server(self._serve, sock=sock)
        return int(sock.getsockname()[1])

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.clients.append(cwriter)
        ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def down() -> None:
            while data := await ureader.read(65536):
                cwriter.write(data)
            self.server_done.set()
            cwriter.close()

        async def up() -> None:
            appending: int | None = None
            while True:
                if appending is not None and self.rate is None \
                        and len(self.upward) - appending >= self.stall_after:
                    self.stalled.set()
                    await self.flowing.wait()
                try:
                    data = await creader.read(65536)
                except ConnectionError:
                    data = b""
                if not data:
                    break
                if appending is None and b" APPEND " in data:
                    appending = len(self.upward)
                self.upward += data
                uwriter.write(data)
                await uwriter.drain()
                if appending is not None and self.rate is not None:
                    await asyncio.sleep(len(data) / self.rate)  # the slow link
            uwriter.write_eof()

        await asyncio.gather(down(), up())


@pytest.fixture
async def proxy(stack: MailStack) -> AsyncIterator[tuple[StallingProxy, MasterLogin]]:
    p = StallingProxy(stack.imap_port)
    port = await p.start()
    login = MasterLogin(lambda: aioimaplib.IMAP4("127.0.0.1", port, timeout=1), *MASTER)
    yield p, login
    p.flowing.set()
    p.server.close()


async def test_a_literal_slower_than_the_timeout_but_moving_arrives_whole(
        stack: MailStack) -> None:
    """The command's timeout (2 s) is for a connection that stops, not for a literal that
    takes longer than it to go (24 MB at 8 MB/s; what the kernel's buffers hold after the
    last piece, at most about 4 MB, goes in well under it): it goes on, and Dovecot stores
    the same bytes."""
    p = StallingProxy(stack.imap_port, rate=8 * 1024 * 1024)
    port = await p.start()
    login = MasterLogin(lambda: aioimaplib.IMAP4("127.0.0.1", port, timeout=2), *MASTER)
    mail = _mail(2 * SIZE)
    mark = mail.split(b"X-Mark: ", 1)[1][:32].decode()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with login.open("carol@b.test") as box:
        assert await box.append_once("INBOX", mail, "X-Mark", mark, retry=False)
    print(f"APPEND of {len(mail)} bytes took {loop.time() - started:.1f} s (timeout 2 s)")
    p.server.close()
    direct = MasterLogin(lambda: aioimaplib.IMAP4("127.0.0.1", stack.imap_port, timeout=30),
                         *MASTER)
    async with direct.open("carol@b.test") as box:
        (uid,) = await box.search_header("INBOX", "X-Mark", mark)
        assert await box.fetch(uid) == mail


def _mail(size: int = SIZE) -> bytes:
    head = f"Subject: slow append\r\nX-Mark: {uuid.uuid4().hex}\r\n\r\n".encode()
    return head + os.urandom(size // 2).hex().encode()


async def _sending() -> asyncio.Task[None]:
    for _ in range(int(PATIENCE * 20)):
        if imapdata._SENDING:
            return next(iter(imapdata._SENDING))
        await asyncio.sleep(0.05)
    raise AssertionError("no literal is being sent")


async def test_a_command_after_an_unfinished_literal_never_lands_inside_it(
        proxy: tuple[StallingProxy, MasterLogin]) -> None:
    """The APPEND times out while its literal waits for the connection; the session is
    closed (LOGOUT): the server must never get another command's bytes inside the literal
    (it would store a different mail and read the literal's tail as commands)."""
    p, login = proxy
    mail = _mail()
    with pytest.raises(aioimaplib.CommandTimeout):
        async with login.session("carol@b.test") as box:
            await box.append_once("INBOX", mail, "X-Mark", "x", retry=False)
    task = await _sending()
    assert p.stalled.is_set() and len(p.upward) < len(mail)  # the timeout cut it short
    p.flowing.set()
    await asyncio.wait_for(asyncio.shield(task), PATIENCE)
    for w in p.clients:  # the client's end, if the gateway left it open
        w.transport.abort()
    await asyncio.wait_for(p.server_done.wait(), PATIENCE)  # Dovecot read it all and closed
    head = f" {{{len(mail)}}}\r\n".encode()
    at = p.upward.index(head) + len(head)
    literal = bytes(p.upward[at:at + len(mail)])
    print(f"the server got {len(literal)} of the literal's {len(mail)} bytes")
    assert literal == mail[:len(literal)], "another command was written inside the literal"


async def test_a_literal_waiting_on_a_lost_connection_ends(
        proxy: tuple[StallingProxy, MasterLogin]) -> None:
    """The connection goes while the literal waits for it to take more: the task sending
    it ends (it held the whole mail) and the APPEND fails."""
    p, login = proxy
    box = login.open("carol@b.test")
    await box.__aenter__()
    append = asyncio.ensure_future(box.append_once("INBOX", _mail(), "X-Mark", "x",
                                                   retry=False))
    task = await _sending()
    await asyncio.wait_for(p.stalled.wait(), PATIENCE)
    for w in p.clients:
        w.transport.abort()
    with pytest.raises(Exception):  # noqa: B017  # a timeout or a lost connection
        await append
    done, _ = await asyncio.wait([task], timeout=30)  # a bound, not a figure: it must end
    print(f"the literal's task ended: {bool(done)}")
    assert done, "the task sending the literal still waits, holding the mail"
    box.discard()
