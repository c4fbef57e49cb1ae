"""gateway/smtpin.py: DATA read into one buffer gives the replies and the mail aiosmtpd's
own reading gives, on the same input (two real servers side by side, one client)."""

from __future__ import annotations

import asyncio
import functools
import random
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.smtpin import OneBufferData

LIMIT = 20_000  # the servers' data_size_limit: some inputs are past it


class Keep:
    def __init__(self) -> None:
        self.mails: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.original_content is not None
        self.mails.append(bytes(envelope.original_content))
        return "250 kept"


async def converse(port: int, data: bytes) -> list[bytes]:
    """A whole session with ``data`` as the mail (already dot-stuffed, without the
    final dot); every reply from DATA on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**22)
    await reader.readline()
    writer.write(b"EHLO client\r\n")
    while not (await reader.readline()).startswith(b"250 "):
        pass
    writer.write(b"MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\n")
    await reader.readline()
    await reader.readline()
    writer.write(b"DATA\r\n")
    replies = [await reader.readline()]
    writer.write(data + b".\r\n")
    await writer.drain()
    replies.append(await reader.readline())
    writer.write(b"QUIT\r\n")
    replies.append(await reader.readline())
    writer.close()
    return replies


def stuffed(mail: bytes) -> bytes:
    """``mail`` as a client sends it in DATA: a line (up to CRLF) starting with a dot
    gets another."""
    return b"\r\n".join(b"." + line if line.startswith(b".") else line
                         for line in mail.split(b"\r\n"))


def inputs() -> list[bytes]:
    rng = random.Random(5)
    pieces = [b"a", b"b" * 70, b".", b"..", b"\r", b"\n", b" ", b"x" * 300, b"\xff", b"=?"]
    out = [b"Subject: x\r\n\r\nhello\r\n", b"", b"..\r\n.x\r\n...\r\n", b"." * 999 + b"\r\n",
           b"y" * 998 + b"\r\n", b"y" * 999 + b"\r\n", b"z" * 200_000 + b"\r\nafter\r\n",
           b"w" * 1000 + b"\r\n" * 30, (b"q" * 78 + b"\r\n") * 400]
    for _ in range(150):
        lines = [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
                 for _ in range(rng.randint(0, 40))]
        out.append(b"".join(line + b"\r\n" for line in lines))
    return [stuffed(mail) for mail in out]


async def test_one_buffer_reads_data_as_aiosmtpd_does() -> None:
    loop = asyncio.get_running_loop()
    kept: dict[str, Keep] = {"aiosmtpd": Keep(), "one buffer": Keep()}
    servers: dict[str, Any] = {}
    for name, cls in (("aiosmtpd", SMTP), ("one buffer", OneBufferData)):
        servers[name] = await loop.create_server(
            functools.partial(cls, kept[name], data_size_limit=LIMIT, hostname="t"),
            "127.0.0.1", 0)
    try:
        ports = {n: s.sockets[0].getsockname()[1] for n, s in servers.items()}
        cases = inputs()
        for data in cases:
            replies = {n: await converse(p, data) for n, p in ports.items()}
            assert replies["aiosmtpd"] == replies["one buffer"], data[:80]
        assert kept["aiosmtpd"].mails == kept["one buffer"].mails
        refused = len(cases) - len(kept["aiosmtpd"].mails)
        assert 0 < refused < len(cases) // 2, refused  # both kinds of input are there
    finally:
        for s in servers.values():
            s.close()
            await s.wait_closed()
