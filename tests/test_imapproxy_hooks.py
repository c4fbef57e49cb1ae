"""The IMAP proxy's ``on_filed`` hook, in process: a real proxy (TLS) in front of a scripted
upstream server, driven over a socket. Called once per COPY/MOVE the server accepted."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
from pathlib import Path

import pytest
from mailstack import PATIENCE

from gateway import imapproxy
from gateway.imapcommand import Atom, Command, Continue, Limits, Reading, String
from gateway.imapwire import CommandReader

ANY = Limits(1 << 20, 1 << 20, 1 << 20, 1 << 20)


async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """A scripted IMAP server: logins succeed, COPY/MOVE succeed unless the destination is
    "Refused"."""
    w.write(b"* OK scripted\r\n")
    reader = CommandReader(lambda _: Reading(), ANY)
    while data := await r.read(65536):
        reader.feed(data)
        while (cmd := reader.next()) is not None:
            if isinstance(cmd, Continue):
                continue
            assert isinstance(cmd, Command), cmd
            tag = cmd.tag
            if cmd.name == b"CAPABILITY":
                w.write(b"* CAPABILITY IMAP4rev1 MOVE CATENATE\r\n")
            elif cmd.name == b"LIST":
                w.write(b'* LIST (\\Noselect) "." ""\r\n')
            elif cmd.name == b"LOGOUT":
                w.write(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                await w.drain()
                w.close()
                return
            elif cmd.name.removeprefix(b"UID ") in (b"COPY", b"MOVE"):
                box = cmd.args[1]
                assert isinstance(box, Atom | String)
                if box.value == b"Refused":
                    w.write(tag + b" NO [TRYCREATE] refused\r\n")
                    continue
            w.write(tag + b" OK done\r\n")
        await w.drain()


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    subprocess.run(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k.pem "
        "-out c.pem -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1",
        shell=True, cwd=tmp_path, check=True, capture_output=True, timeout=PATIENCE)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    return server, ssl.create_default_context(cafile=str(tmp_path / "c.pem"))


def test_on_filed_is_called_once_per_accepted_copy_or_move(
        tls: tuple[ssl.SSLContext, ssl.SSLContext], caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, str]] = []

    async def on_filed(user: str, box: str) -> None:
        calls.append((user, box))
        if box == "Broken":
            raise RuntimeError("the hook failed")

    async def go() -> list[bytes]:
        up = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = up.sockets[0].getsockname()[1]
        cfg = imapproxy.ProxyConfig("127.0.0.1", port, "TCMS", tls[0], on_filed=on_filed)
        servers = await imapproxy.start(cfg, starttls=("127.0.0.1", 0),
                                        implicit=("127.0.0.1", 0))
        proxy_port = servers[1].sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", proxy_port, ssl=tls[1])
        await r.readline()
        w.write(b"a LOGIN bob@B.test secret\r\n")
        answers = [await r.readline()]
        for line in (b"b COPY 1 Archive", b"c UID MOVE 1:3 {11}", b"Archiv&AOk-",
                     b"d COPY 1 Refused", b"e MOVE 1 TCMS", b"f COPY 1 Broken",
                     b"g UID COPY 2 Archive", b"h SELECT Archive"):
            w.write(line + b"\r\n")
            await w.drain()
            answers.append(await r.readline())
        w.write(b"z LOGOUT\r\n")
        answers += [await r.readline(), await r.readline()]
        w.close()
        for s in [*servers, up]:
            s.close()
        return answers

    with caplog.at_level(logging.INFO, "tcms.gateway.imap-proxy"):
        answers = asyncio.run(go())
    assert answers[0].startswith(b"a OK [CAPABILITY IMAP4rev1 MOVE]")  # CATENATE dropped
    assert answers[2] == b"+ go ahead\r\n"
    assert [a[:4] for a in answers[1:] if not a.startswith(b"+")] == [
        b"b OK", b"c OK", b"d NO", b"e OK", b"f OK", b"g OK", b"h OK", b"* BY", b"z OK"]
    # the hidden folder's move went to a folder that does not exist upstream: no call either
    assert calls == [("bob@b.test", "Archive"), ("bob@b.test", "Archivé"),
                     ("bob@b.test", "Broken"), ("bob@b.test", "Archive")]
    assert "on_filed for bob@b.test (Broken) failed" in caplog.text
