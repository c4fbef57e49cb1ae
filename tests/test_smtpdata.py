"""gateway/smtpdata.py: the gateway's SMTP client gives the MTA the same bytes as
aiosmtplib's own code, a large mail a piece at a time (the byte-for-byte relay of a large
mail with leading dots through the real Postfix: tests/test_gateway_submission.py)."""

from __future__ import annotations

import contextlib
import random
import tracemalloc
from collections.abc import AsyncIterator

import aiosmtplib
import aiosmtplib.protocol
import aiosmtplib.smtp
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from mailstack import free_port

from gateway import smtpdata

PIECES = [b"\r", b"\n", b"\r\n", b"a", b".", b"..", b" ", b"\r\r\n"]


def mixes(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def test_installed_in_this_aiosmtplib() -> None:
    assert aiosmtplib.smtp.normalize_message_line_endings is smtpdata.normalized  # type: ignore[attr-defined]
    assert aiosmtplib.protocol.normalize_message_line_endings is smtpdata.normalized
    assert aiosmtplib.protocol.SMTPProtocol.execute_data_command \
        is smtpdata.execute_data_command


def test_line_endings_are_normalised_as_aiosmtplib_does() -> None:
    original = smtpdata._normalize
    assert original is not None
    for raw in mixes(5000, 5):
        assert smtpdata.normalized(raw) == original(raw), raw
    crlf = b"Subject: x\r\n\r\nbody\r\n" * 1000
    assert smtpdata.normalized(crlf) is crlf  # no copy


@pytest.mark.parametrize("raw", [b"a\r\n" * 1_000_000 + b"no CRLF at the end",
                                 b"ab\n" * 1_000_000, b"ab\r" * 1_000_000])
def test_normalising_a_mail_costs_a_few_copies_of_it(raw: bytes) -> None:
    """Found by an attacker's pass: a mail ending without CRLF, or with lone CRs or LFs,
    went through aiosmtplib's regular expression, which builds a piece per line (a mail
    of 30 MB ending without CRLF: 1.8 GB, twice per mail)."""
    tracemalloc.start()
    try:
        got = smtpdata.normalized(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == smtpdata._normalize(raw)  # type: ignore[misc]
    assert peak < 4 * len(got)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_pieces_are_dot_stuffed_as_aiosmtplib_does(size: int) -> None:
    for raw in mixes(2000, size):
        mail = smtpdata.normalized(raw)
        pieces = list(smtpdata.stuffed_pieces(mail, size))
        assert b"".join(pieces) == aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", mail), mail
        assert all(p.endswith(b"\n") for p in pieces), pieces  # each ends a line


class Keep:
    def __init__(self) -> None:
        self.got: list[bytes] = []

    async def handle_DATA(self, server: SMTPServer, session: Session,
                          envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.got.append(envelope.original_content)
        return "250 2.0.0 Kept"


@contextlib.asynccontextmanager
async def client_of(handler: Keep) -> AsyncIterator[aiosmtplib.SMTP]:
    """An aiosmtplib client connected to a real SMTP server (aiosmtpd) with ``handler``."""
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, data_size_limit=0)
    controller.start()
    try:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        try:
            yield client
        finally:
            client.close()
    finally:
        controller.stop()


@pytest.mark.parametrize("size", [smtpdata.CHUNK // 2, 3 * smtpdata.CHUNK + 17])
async def test_a_mail_reaches_an_smtp_server_byte_for_byte(size: int) -> None:
    """Small (aiosmtplib's own DATA) and large (in pieces, with lines that start with a
    dot at and around the pieces' ends) through a real SMTP server (aiosmtpd)."""
    rng = random.Random(size)
    lines = [b"Subject: big\r\n\r\n"]
    while sum(map(len, lines)) < size:
        lines.append(rng.choice([b".", b"..", b"", b"x"]) + b"y" * rng.randint(0, 200) + b"\r\n")
    mail = b"".join(lines)
    keep = Keep()
    async with client_of(keep) as client:
        refused, answer = await client.sendmail("a@a.test", ["b@b.test"], mail)
    assert (refused, answer) == ({}, "2.0.0 Kept")
    assert keep.got == [mail]  # aiosmtpd undoes the dot-stuffing: the very bytes sent


async def test_a_refusal_after_data_is_an_smtp_error() -> None:
    class Refuse(Keep):
        async def handle_DATA(self, server: SMTPServer, session: Session,
                              envelope: Envelope) -> str:
            return "554 5.6.0 Not this one"

    async with client_of(Refuse()) as client:
        with pytest.raises(aiosmtplib.SMTPDataError) as err:
            await client.sendmail("a@a.test", ["b@b.test"], b"Subject: x\r\n\r\n"
                                  + (b"z" * 76 + b"\r\n") * (smtpdata.CHUNK // 30))
        assert err.value.code == 554
        assert (await client.noop())[0] == 250  # the session goes on
