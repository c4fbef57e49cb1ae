"""The gateway's IMAP proxy, with standard clients (imaplib, aioimaplib, openssl) in front
and the real Dovecot behind: TLS, logins, literals, IDLE, and the protocol folder hidden."""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import socket
import subprocess

import aioimaplib
import pytest
from gateways import USERS, Orgs

pytestmark = pytest.mark.slow


def proxy(orgs: Orgs, user: str = "bob@b.test") -> imaplib.IMAP4_SSL:
    gw = orgs.b
    imap = imaplib.IMAP4_SSL("127.0.0.1", gw.imaps, ssl_context=gw.tls, timeout=30)
    imap.login(user, USERS[user])
    return imap


def names(imap: imaplib.IMAP4, cmd: str = "LIST") -> list[str]:
    typ, data = imap.list() if cmd == "LIST" else imap.lsub()
    assert typ == "OK"
    return [line.decode().rsplit(" ", 1)[-1].strip('"') for line in data  # type: ignore[union-attr]
            if line]


def test_the_protocol_folder_exists_upstream_but_never_through_the_proxy(orgs: Orgs) -> None:
    with imaplib.IMAP4("127.0.0.1", orgs.stack.imap_port) as direct:
        direct.login("bob@b.test", USERS["bob@b.test"])
        direct.create("TCMS")  # as the delivery rule would
        direct.create("TCMS.sub")
        assert "TCMS" in names(direct)
    with proxy(orgs) as imap:
        listed = names(imap)
        assert "INBOX" in listed and "TCMS" not in listed and "TCMS.sub" not in listed
        assert "TCMS" not in names(imap, "LSUB")
        for cmd, args in (("SELECT", ("TCMS",)), ("EXAMINE", ("TCMS",)),
                          ("STATUS", ("TCMS", "(MESSAGES)")), ("DELETE", ("TCMS",)),
                          ("RENAME", ("INBOX.x", "TCMS.y")), ("CREATE", ("TCMS.z",))):
            typ, data = imap._simple_command(cmd, *args)  # type: ignore[attr-defined]
            assert typ == "NO" and b"NONEXISTENT" in data[0], (cmd, typ, data)
        imap.select("INBOX")
        typ, _ = imap.copy("1:*", "TCMS")
        assert typ == "NO"


def test_a_literal_cannot_smuggle_the_hidden_name(orgs: Orgs) -> None:
    ctx = orgs.b.tls
    with socket.create_connection(("127.0.0.1", orgs.b.imaps), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK")
        s.sendall(b'a LOGIN "bob@b.test" "bob-password"\r\n')
        assert f.readline().startswith(b"a OK")
        s.sendall(b"b SELECT {4}\r\n")
        assert f.readline().startswith(b"+")  # a synchronising literal is acknowledged
        s.sendall(b"TCMS\r\n")
        assert f.readline().startswith(b"b NO [NONEXISTENT]")
        s.sendall(b"c SELECT {5+}\r\nINBOX\r\n")  # and a non-synchronising one works
        line = f.readline()
        while not line.startswith(b"c "):
            line = f.readline()
        assert line.startswith(b"c OK")
        s.sendall(b"d COMPRESS DEFLATE\r\n")
        assert f.readline().startswith(b"d NO")
        s.sendall(b"e LOGOUT\r\n")


def test_tls_logins_and_capabilities(orgs: Orgs) -> None:
    gw = orgs.b
    with imaplib.IMAP4("127.0.0.1", gw.imap, timeout=30) as imap:
        assert "LOGINDISABLED" in imap.capabilities and "STARTTLS" in imap.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            imap.login("bob@b.test", USERS["bob@b.test"])  # no password before TLS
        imap.starttls(ssl_context=gw.tls)
        imap.login("bob@b.test", USERS["bob@b.test"])
        typ, caps = imap.capability()
        assert typ == "OK" and b"IMAP4REV1" in caps[0].upper()  # type: ignore[union-attr]
        assert b"COMPRESS" not in caps[0] and b"IDLE" in caps[0]  # type: ignore[operator]
    with pytest.raises(imaplib.IMAP4.error):
        imaplib.IMAP4_SSL("127.0.0.1", gw.imaps, ssl_context=gw.tls).login(
            "bob@b.test", "wrong-password")
    imap = imaplib.IMAP4_SSL("127.0.0.1", gw.imaps, ssl_context=gw.tls, timeout=30)
    imap.authenticate("PLAIN", lambda _: b"\0carol@b.test\0carol-password")
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()
    res = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{gw.imap}",
                          "-starttls", "imap", "-CAfile", str(gw.workdir / "gw.crt"),
                          "-verify_return_error"], input="a LOGOUT\n",
                         capture_output=True, text=True, timeout=30)
    assert "Verify return code: 0 (ok)" in res.stdout, res.stdout[-800:]


def test_append_and_fetch_a_large_message_with_literals(orgs: Orgs) -> None:
    body = ("Grüße " * 200_000).encode()  # about 1.4 MB, one literal each way
    msg = b"Subject: big via proxy\r\nX-Marker: proxy-big\r\n\r\n" + body + b"\r\n"
    with proxy(orgs) as imap:
        typ, _ = imap.append("INBOX", None, None, msg)  # type: ignore[arg-type]
        assert typ == "OK"
        imap.select("INBOX")
        typ, data = imap.uid("SEARCH", None, "HEADER", "X-Marker", "proxy-big")  # type: ignore[arg-type]
        uid = data[0].split()[-1]  # type: ignore[union-attr]
        typ, got = imap.uid("FETCH", uid, "(BODY.PEEK[])")  # type: ignore[arg-type]
        assert got[0][1] == msg  # type: ignore[index]


def test_idle_through_the_proxy(orgs: Orgs) -> None:
    async def go() -> bool:
        client = aioimaplib.IMAP4_SSL("127.0.0.1", orgs.b.imaps, ssl_context=orgs.b.tls,
                                      timeout=30)
        await client.wait_hello_from_server()
        assert (await client.login("carol@b.test", USERS["carol@b.test"])).result == "OK"
        await client.select("INBOX")
        idle = await client.idle_start(timeout=30)
        await asyncio.to_thread(_deliver, orgs)
        pushed = await client.wait_server_push(timeout=20)
        client.idle_done()
        await asyncio.wait_for(idle, 10)
        await client.logout()
        return any(b"EXISTS" in bytes(line) for line in pushed)

    assert asyncio.run(go())


def _deliver(orgs: Orgs) -> None:
    with smtplib.SMTP("127.0.0.1", orgs.stack.smtp_port, timeout=30) as s:
        s.sendmail("alice@a.test", ["carol@b.test"], b"Subject: idle probe\r\n\r\nping\r\n")
