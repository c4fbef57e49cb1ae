"""The gateway's IMAP proxy, with standard clients (imaplib, aioimaplib, openssl) in front
and the real Dovecot behind: TLS, logins, literals, IDLE, and the protocol folder hidden."""

from __future__ import annotations

import asyncio
import imaplib
import re
import selectors
import smtplib
import socket
import ssl
import subprocess
import threading
import time

import aioimaplib
import pytest
from gateways import USERS, GatewayProc, Orgs
from mailstack import PATIENCE

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
                          ("RENAME", ("TCMS.sub", "Other"))):
            typ, data = imap._simple_command(cmd, *args)
            assert typ == "NO" and b"Mailbox doesn't exist: TCMS" in data[0], (cmd, typ, data)
        for cmd, args in (("RENAME", ("INBOX.x", "TCMS.y")), ("CREATE", ("TCMS.z",))):
            typ, data = imap._simple_command(cmd, *args)
            assert typ == "NO" and b"Reserved" in data[0], (cmd, typ, data)
        imap.append("INBOX", None, None, b"Subject: x\r\n\r\nx\r\n")
        imap.select("INBOX")
        typ, data = imap.copy("1:*", "TCMS")
        assert typ == "NO" and b"[TRYCREATE] Mailbox doesn't exist: TCMS" in data[0], data


# --- raw sessions: the exact bytes of the reproductions -------------------------------

TIMING = re.compile(rb" \(\d+\.\d+(?: \+ \d+\.\d+)+ secs\)")


class Raw:
    """One IMAP connection driven byte by byte: to the gateway's proxy over TLS, or straight
    to Dovecot (``port``, plain)."""

    def __init__(self, gw: GatewayProc | None = None, port: int | None = None) -> None:
        raw = socket.create_connection(("127.0.0.1", port or gw.imaps), timeout=30)  # type: ignore[union-attr]
        self.sock: socket.socket = (gw.tls.wrap_socket(raw, server_hostname="127.0.0.1")
                                    if gw else raw)
        self.f = self.sock.makefile("rb")
        assert self.f.readline().startswith(b"* OK")

    def login(self, user: str) -> Raw:
        self.sock.sendall(f'l LOGIN "{user}" "{USERS[user]}"\r\n'.encode())
        assert self.until(b"l")[-1].startswith(b"l OK")
        return self

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, tag: bytes) -> list[bytes]:
        """Every line up to the tagged answer for ``tag``."""
        lines: list[bytes] = []
        while True:
            line = self.f.readline()
            assert line, f"connection closed before {tag!r}: {lines}"
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def answer(self, tag: bytes, data: bytes) -> list[bytes]:
        """The lines answering ``data`` (whose last command is ``tag``), tags and timings
        taken out."""
        self.send(data)
        return [TIMING.sub(b"", line).removeprefix(tag + b" ") for line in self.until(tag)]

    def flood(self, prefix: bytes, chunk: bytes, limit: int) -> tuple[bytes, int]:
        """Send ``prefix`` then ``chunk`` over and over (``limit`` bytes at most) while reading
        what the proxy answers, until it closes the connection: the answer and the bytes sent
        by then. One thread drives the TLS socket both ways (an SSL object used by a reading
        and a writing thread at once can corrupt its records)."""
        got, sent, pending = bytearray(), 0, prefix
        self.sock.setblocking(False)
        want_read = (ssl.SSLWantReadError, BlockingIOError)
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            deadline = time.monotonic() + PATIENCE
            while time.monotonic() < deadline:
                try:
                    data = self.sock.recv(65536)
                    if not data:
                        break  # the proxy closed the connection
                    got += data
                    continue
                except want_read:
                    pass
                except ConnectionResetError:
                    break
                if sent < limit:
                    try:
                        sent += (n := self.sock.send(pending[:16384]))
                        pending = pending[n:] or chunk
                        continue
                    except (*want_read, ssl.SSLWantWriteError):
                        pass
                    except OSError:  # reset or broken pipe: the proxy closed, read what is left
                        limit = sent
                sel.select(1.0)
            else:
                raise AssertionError(f"the proxy never closed: {bytes(got[-300:])!r}")
        self.sock.setblocking(True)
        return bytes(got), sent

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def hidden_message(orgs: Orgs, marker: str) -> None:
    """A message in bob's protocol folder, put there directly on Dovecot."""
    with imaplib.IMAP4("127.0.0.1", orgs.stack.imap_port) as direct:
        direct.login("bob@b.test", USERS["bob@b.test"])
        direct.create("TCMS")
        msg = f"Subject: hidden\r\nX-Marker: {marker}\r\n\r\nsecret\r\n".encode()
        assert direct.append("TCMS", None, None, msg)[0] == "OK"


def inbox_has(orgs: Orgs, user: str, marker: str) -> bool:
    with imaplib.IMAP4("127.0.0.1", orgs.stack.imap_port) as direct:
        direct.login(user, USERS[user])
        direct.select("INBOX")
        _, data = direct.search(None, "HEADER", "X-Marker", marker)
        return bool(data[0])


class Missing:
    """What Dovecot itself answers for a mailbox that does not exist: Bob's own session
    straight on Dovecot, with a surely absent name where the protocol folder's name would be,
    put back as TCMS in the answer (the answer the proxy must give for its hidden folder)."""

    def __init__(self, orgs: Orgs) -> None:
        self.raw = Raw(port=orgs.stack.imap_port).login("bob@b.test")
        self.absent = b"Absent%d" % time.monotonic_ns()

    def answer(self, tag: bytes, data: bytes) -> list[bytes]:
        data = data.replace(b"TCMS", self.absent)
        data = re.sub(rb"\{(\d+)\+\}\r\n" + self.absent,
                      lambda m: b"{%d+}\r\n" % len(self.absent) + self.absent, data)
        return [line.replace(self.absent, b"TCMS") for line in self.raw.answer(tag, data)]


def test_a_literal8_in_noop_cannot_open_the_hidden_folder(orgs: Orgs) -> None:
    """Issue 11 item 1: ``s1 NOOP ~{14+}`` CRLF ``s2 SELECT TCMS`` selected it READ-WRITE."""
    hidden_message(orgs, "noop-literal8")
    bob, missing = Raw(orgs.b).login("bob@b.test"), Missing(orgs)
    got = bob.answer(b"s2", b"s1 NOOP ~{14+}\r\ns2 SELECT TCMS\r\n")
    assert got[0].startswith(b"s1 OK") and not any(b"READ-WRITE" in line for line in got)
    assert got[1:] == missing.answer(b"s2", b"s2 SELECT TCMS\r\n")  # as if it did not exist
    assert bob.answer(b"s3", b"s3 FETCH 1:* (BODY[])\r\n") == [b"BAD No mailbox selected.\r\n"]
    got = bob.answer(b"s5", b"s4 NOOP ~{30+}\r\ns5 STATUS TCMS (MESSAGES UNSEEN)\r\n")
    assert got[1:] == missing.answer(b"s5", b"s5 STATUS TCMS (MESSAGES UNSEEN)\r\n")
    got = bob.answer(b"s7", b"s6 NOOP ~{25+}\r\ns7 APPEND TCMS {5+}\r\nhello\r\n")
    assert got[1:] == missing.answer(b"s7", b"s7 APPEND TCMS {5+}\r\nhello\r\n")
    # a literal after the arguments a command reads is not a way in either
    got = bob.answer(b"s9", b"s8 UNSUBSCRIBE INBOX.none {15+}\r\ns9 SELECT TCMS\r\n\r\n")
    assert b"READ-WRITE" not in b"".join(got)
    bob.close()
    missing.raw.close()


def test_catenate_and_urls_cannot_copy_a_hidden_message_out(orgs: Orgs) -> None:
    """Issue 11 item 1: ``APPEND INBOX CATENATE (URL "/TCMS/;UID=2")`` copied a hidden
    message out, and BADURL answers told which UIDs exist."""
    hidden_message(orgs, "catenate")
    bob = Raw(orgs.b).login("bob@b.test")
    answers = [bob.answer(b"c", b'c APPEND INBOX CATENATE (URL "/TCMS/;UID=%d")\r\n' % uid)
               for uid in (1, 2, 999_999)]
    assert answers[0] == answers[1] == answers[2]  # nothing to tell one UID from another
    assert answers[0][0].startswith(b"NO [CANNOT]")
    assert bob.answer(b"u", b"u URLFETCH imap://bob@127.0.0.1/TCMS/;UID=1\r\n")[0].startswith(
        b"NO")
    assert bob.answer(b"g", b"g GENURLAUTH imap://bob@127.0.0.1/TCMS/;UID=1 INTERNAL\r\n")[
        0].startswith(b"NO")
    caps = b"".join(bob.answer(b"k", b"k CAPABILITY\r\n"))
    for cap in (b"CATENATE", b"URL-PARTIAL", b"URLAUTH", b"NOTIFY", b"COMPRESS"):
        assert cap not in caps
    bob.close()
    assert not inbox_has(orgs, "bob@b.test", "catenate")


def test_a_hidden_name_is_answered_exactly_as_a_missing_one(orgs: Orgs) -> None:
    """Bob's TCMS exists (hidden by the proxy): every answer Bob gets through the proxy about
    it is, byte for byte (timings aside), Dovecot's answer for a folder that does not exist."""
    hidden_message(orgs, "as-missing")
    bob, missing = Raw(orgs.b).login("bob@b.test"), Missing(orgs)
    bob.answer(b"a", b"a APPEND INBOX {12+}\r\nSubject: x\r\n\r\n")
    for who in (bob, missing):
        who.answer(b"i", b"i SELECT INBOX\r\n")
    for cmd in (b"COPY 1 TCMS", b"UID COPY 1:* TCMS.sub", b"MOVE 1 {4+}\r\nTCMS",
                b"UID MOVE 1:* TCMS", b"STATUS TCMS (MESSAGES)", b'STATUS "TCMS.sub" (UIDNEXT)',
                b"APPEND TCMS (\\Seen) {5+}\r\nhello", b"DELETE TCMS", b"DELETE TCMS.sub",
                b"RENAME TCMS Elsewhere", b"SUBSCRIBE TCMS", b"UNSUBSCRIBE TCMS",
                b"EXAMINE TCMS", b"SELECT TCMS.", b"SELECT TCMS"):
        data = b"h " + cmd + b"\r\n"
        assert bob.answer(b"h", data) == missing.answer(b"h", data), cmd
    # CREATE: refused alike whether the folder exists (TCMS) or not (TCMS.new)
    assert bob.answer(b"r", b"r CREATE TCMS\r\n") == bob.answer(b"r", b"r CREATE TCMS.new\r\n")
    bob.close()
    missing.raw.close()
    with imaplib.IMAP4("127.0.0.1", orgs.stack.imap_port) as direct:  # nothing happened to it
        direct.login("bob@b.test", USERS["bob@b.test"])
        typ, exists = direct.select("TCMS")
        assert typ == "OK" and int(exists[0] or 0) >= 1


def test_a_960_kb_line_before_login_is_cut_at_once_and_others_go_on(orgs: Orgs) -> None:
    """Issue 11 item 2: this line took 26 s, during which the gateway served nobody."""
    gw = orgs.b
    attacker = Raw(gw)
    line = b"x LOGIN " + (b'"{ "' * 1000 + b" {0+}\r\n") * 240

    answer: list[tuple[bytes, float]] = []

    def attack() -> None:  # this thread alone drives the attacker's socket
        got = attacker.flood(line, line, len(line))[0]  # until the proxy closes
        answer.append((got, time.monotonic() - start))

    start = time.monotonic()
    sender = threading.Thread(target=attack)
    sender.start()
    with smtplib.SMTP("127.0.0.1", gw.submission, timeout=30) as smtp:  # the same process
        assert smtp.noop()[0] == 250
    with proxy(orgs, "carol@b.test") as other:
        assert other.select("INBOX")[0] == "OK"
    others = time.monotonic() - start
    sender.join(PATIENCE)
    (got, cut), = answer
    print(f"attacker cut after {cut:.2f} s, the others served in {others:.2f} s")  # figures only
    assert b"* BYE [TOOBIG]" in got, got[-200:]


@pytest.mark.parametrize("logged_in", [False, True])
def test_unfinished_commands_cannot_grow_memory(orgs: Orgs, logged_in: bool) -> None:
    """Issue 11 item 2: 200 MB of ``"A"*65000 {0+}`` lines grew the gateway by 200 MB."""
    client = Raw(orgs.b)
    prefix = b"x SEARCH " if logged_in else b"x LOGIN "
    if logged_in:
        client.login("bob@b.test")
    chunk = (b'"' + b"A" * 65000 + b'" {0+}\r\n') * 16
    got, at_close = client.flood(prefix, chunk, 200_000_000)  # until the proxy closes
    assert b"* BYE [TOOBIG]" in got, got[-300:]
    assert at_close < 20_000_000, at_close  # socket buffers aside, the first lines were enough


def test_starttls_drops_what_was_sent_before_the_handshake(orgs: Orgs) -> None:
    """Issue 11 item 3: a LOGIN injected in clear after STARTTLS ran inside TLS."""
    gw = orgs.b
    with socket.create_connection(("127.0.0.1", gw.imap), timeout=30) as raw:
        f = raw.makefile("rb", buffering=0)
        assert f.readline().startswith(b"* OK")
        raw.sendall(b"b STARTTLS\r\nx LOGIN bob@b.test bob-password\r\n")
        assert f.readline().startswith(b"b OK")
        with gw.tls.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"y SELECT INBOX\r\nz LOGOUT\r\n")
            got = b""
            while chunk := tls.recv(65536):
                got += chunk
    assert got.startswith(b"y BAD Log in first\r\n"), got  # not logged in: x never ran
    assert b"\r\nx " not in got and b"z OK" in got


def test_logout_leaves_no_task_exception_in_the_log(orgs: Orgs) -> None:
    """Issue 11 item 4: each clean LOGOUT logged ``Task exception was never retrieved``."""
    gw = orgs.b
    sessions = gw.log_text().count("IMAP session for")
    for _ in range(3):
        bob = Raw(gw).login("bob@b.test")
        assert bob.answer(b"o", b"o LOGOUT\r\n")[-1].startswith(b"OK")
        assert bob.f.read() == b""  # the proxy closed its side
        bob.close()
    with proxy(orgs, "carol@b.test") as later:  # a positive signal after those sessions ended
        later.noop()
    deadline = time.monotonic() + PATIENCE
    while gw.log_text().count("IMAP session for") < sessions + 4:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    log = gw.log_text()
    assert "Task exception was never retrieved" not in log and "ProxyError" not in log


def test_tls_logins_and_capabilities(orgs: Orgs) -> None:
    gw = orgs.b
    with imaplib.IMAP4("127.0.0.1", gw.imap, timeout=30) as imap:
        assert "LOGINDISABLED" in imap.capabilities and "STARTTLS" in imap.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            imap.login("bob@b.test", USERS["bob@b.test"])  # no password before TLS
        imap.starttls(ssl_context=gw.tls)
        imap.login("bob@b.test", USERS["bob@b.test"])
        typ, caps = imap.capability()
        assert typ == "OK" and b"IMAP4REV1" in caps[0].upper()
        assert b"COMPRESS" not in caps[0] and b"IDLE" in caps[0]
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
        typ, _ = imap.append("INBOX", None, None, msg)
        assert typ == "OK"
        imap.select("INBOX")
        typ, data = imap.uid("SEARCH", None, "HEADER", "X-Marker", "proxy-big")  # type: ignore[arg-type]
        uid = data[0].split()[-1]
        typ, got = imap.uid("FETCH", uid, "(BODY.PEEK[])")
        assert got[0][1] == msg


def test_idle_through_the_proxy(orgs: Orgs) -> None:
    async def go() -> bool:
        client = aioimaplib.IMAP4_SSL("127.0.0.1", orgs.b.imaps, ssl_context=orgs.b.tls,
                                      timeout=30)
        await client.wait_hello_from_server()
        assert (await client.login("carol@b.test", USERS["carol@b.test"])).result == "OK"
        await client.select("INBOX")
        idle = await client.idle_start(timeout=PATIENCE)
        await asyncio.to_thread(_deliver, orgs)
        pushed = await client.wait_server_push(timeout=PATIENCE)
        client.idle_done()
        await asyncio.wait_for(idle, 10)
        await client.logout()
        return any(b"EXISTS" in bytes(line) for line in pushed)

    assert asyncio.run(go())


def _deliver(orgs: Orgs) -> None:
    with smtplib.SMTP("127.0.0.1", orgs.stack.smtp_port, timeout=30) as s:
        s.sendmail("alice@a.test", ["carol@b.test"], b"Subject: idle probe\r\n\r\nping\r\n")


async def test_a_large_append_goes_in_pieces_and_arrives_whole(
        orgs: Orgs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's IMAP client sends an APPEND literal over imapdata.CHUNK a piece at a
    time under flow control (gateway/imapdata.py); Dovecot stores the same bytes."""
    import base64
    import os
    import uuid

    from mailstack import MASTER

    from gateway import imapdata
    from gateway.imap import MasterLogin

    sent: list[int] = []
    original = imapdata.send_literal

    async def spy(protocol: object, data: bytes) -> None:
        sent.append(len(data))
        await original(protocol, data)

    monkeypatch.setattr(imapdata, "send_literal", spy)
    tls = ssl.create_default_context(cafile=str(orgs.stack.cert))
    login = MasterLogin(lambda: aioimaplib.IMAP4_SSL("127.0.0.1", orgs.stack.imaps_port,
                                                     ssl_context=tls, timeout=PATIENCE),
                        MASTER[0], MASTER[1])
    marks = {size: uuid.uuid4().hex for size in (1000, 3 * 1024 * 1024)}
    mails = {size: (f"Subject: append {size}\r\nX-Mark: {mark}\r\n\r\n".encode()
                    + base64.encodebytes(os.urandom(size)).replace(b"\n", b"\r\n"))
             for size, mark in marks.items()}
    async with login.session("carol@b.test") as box:
        for size, mail in mails.items():
            assert await box.append_once("INBOX", mail, "X-Mark", marks[size], retry=False)
    assert sent == [len(mails[3 * 1024 * 1024])]  # the large one only, in pieces
    with imaplib.IMAP4_SSL("127.0.0.1", orgs.stack.imaps_port, ssl_context=tls) as direct:
        direct.login("carol@b.test", USERS["carol@b.test"])
        direct.select("INBOX")
        for size, mail in mails.items():
            _, found = direct.search(None, "HEADER", "X-Mark", marks[size])
            (num,) = found[0].split()
            _, data = direct.fetch(num, "(BODY.PEEK[])")
            assert data[0][1] == mail, size  # type: ignore[index]
