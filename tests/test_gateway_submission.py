"""The gateway's SMTP submission proxy, between standard clients and a real Postfix and
Dovecot: TLS, AUTH against the real IMAP server, byte-for-byte relaying of untagged mail,
and certified mail held for the protocol (never sent uncertified)."""

from __future__ import annotations

import asyncio
import os
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from email.header import Header
from pathlib import Path

import pytest
from mailstack import MailStack, free_port
from test_mailstack import USERS, wait_for

from tcms.store import Store

MAX_SIZE = 300_000


class Gateway:
    def __init__(self, workdir: Path, stack: MailStack) -> None:
        self.workdir = workdir
        self.submission, self.smtps = free_port(), free_port()
        self.db = f"sqlite:///{workdir / 'gateway.db'}"
        res = subprocess.run(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
            "-keyout gw.key -out gw.crt -days 2 -subj /CN=127.0.0.1 "
            "-addext subjectAltName=IP:127.0.0.1", shell=True, cwd=workdir,
            capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        env = {k: v for k, v in os.environ.items() if not k.startswith("TCMS_")}
        env.update({
            "TCMS_DATABASE__URL": self.db,
            "TCMS_GATEWAY__SUBMISSION": f"127.0.0.1:{self.submission}",
            "TCMS_GATEWAY__SMTPS": f"127.0.0.1:{self.smtps}",
            "TCMS_GATEWAY__TLS_CERT": str(workdir / "gw.crt"),
            "TCMS_GATEWAY__TLS_KEY": str(workdir / "gw.key"),
            "TCMS_GATEWAY__UPSTREAM_SMTP": f"127.0.0.1:{stack.smtp_port}",
            "TCMS_GATEWAY__UPSTREAM_IMAP": f"127.0.0.1:{stack.imap_port}",
            "TCMS_GATEWAY__MAX_MESSAGE_SIZE": str(MAX_SIZE),
        })
        self.log = open(workdir / "gateway.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "tcms.cli", "serve", "gateway"],
                                     env=env, cwd=workdir, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", self.submission, timeout=2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError((workdir / "gateway.log").read_text()) from None
                time.sleep(0.2)
        self.tls = ssl.create_default_context(cafile=str(workdir / "gw.crt"))

    def smtp(self) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", self.submission, timeout=30)
        s.starttls(context=self.tls)
        return s

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)
        self.log.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[MailStack]:
    s = MailStack(USERS).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gateway(stack: MailStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("gateway"), stack)
    yield gw
    gw.stop()


def raw_mail(subject: str, marker: str, body: str = "Hello Bob,\r\nplain text.\r\n") -> bytes:
    return (f"Date: Mon, 23 Nov 2026 10:00:00 +0100\r\n"
            f"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{marker}@a.test>\r\nX-Marker: {marker}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{body}").encode()


def test_untagged_mail_is_relayed_byte_for_byte(gateway: Gateway, stack: MailStack) -> None:
    sent = raw_mail("Lunch?", "untagged-1", "Line one\r\n.leading dot\r\n\tTabbed Grüße\r\n")
    with gateway.smtp() as s:
        s.login("alice@a.test", "alice-password")
        s.sendmail("alice@a.test", ["bob@b.test"], sent)
    got = wait_for(stack.imap_port, "bob@b.test", "bob-password", b"untagged-1")
    got = got.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert got.endswith(sent), got[-400:]  # the MTAs only prepend trace headers
    prefix = got[: len(got) - len(sent)].decode()
    names = {line.split(":", 1)[0].lower() for line in prefix.split("\r\n")
             if line and not line[0].isspace()}
    assert names == {"return-path", "delivered-to", "received"}  # trace headers only


def test_implicit_tls_and_swaks(gateway: Gateway, stack: MailStack) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", gateway.smtps, context=gateway.tls, timeout=30) as s:
        s.login("alice@a.test", "alice-password")
        s.sendmail("alice@a.test", ["bob@b.test"], raw_mail("Implicit", "implicit-tls-2"))
    wait_for(stack.imap_port, "bob@b.test", "bob-password", b"implicit-tls-2")
    res = subprocess.run(["swaks", "--server", f"127.0.0.1:{gateway.submission}", "--tls",
                          "--auth", "PLAIN", "--auth-user", "bob@b.test", "--auth-password",
                          "bob-password", "--from", "bob@b.test", "--to", "alice@a.test",
                          "--header", "Subject: swaks-via-gateway-3"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout[-1500:]
    wait_for(stack.imap_port, "alice@a.test", "alice-password", b"swaks-via-gateway-3")


def test_auth_is_required_checked_and_bound_to_the_sender(gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.submission, timeout=30) as s:
        code, _ = s.ehlo()
        assert code == 250
        code, msg = s.docmd("AUTH", "PLAIN AGFsaWNlQGEudGVzdABhbGljZS1wYXNzd29yZA==")
        assert code in (530, 538), msg  # no AUTH before STARTTLS
        code, _ = s.docmd("MAIL", "FROM:<alice@a.test>")
        assert code == 530
    with gateway.smtp() as s, pytest.raises(smtplib.SMTPAuthenticationError):
        s.login("alice@a.test", "wrong-password")
    with gateway.smtp() as s:
        s.login("alice@a.test", "alice-password")
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("bob@b.test", ["alice@a.test"], raw_mail("forged", "forged-4"))
        assert e.value.smtp_code == 553


def test_size_limit(gateway: Gateway) -> None:
    with gateway.smtp() as s:
        s.login("alice@a.test", "alice-password")
        with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) as e:
            s.sendmail("alice@a.test", ["bob@b.test"],
                       raw_mail("big", "big-5", "x" * (MAX_SIZE + 10) + "\r\n"))
        assert e.value.smtp_code == 552


@pytest.mark.parametrize("subject", [
    "[certified] Contract",
    "Re: the offer [CERTIFIED]",
    Header("[Certified] Vertrag über Grüße", "utf-8").encode(),  # RFC 2047 encoded
])
def test_certified_mail_is_stored_and_never_sent_uncertified(
        gateway: Gateway, stack: MailStack, subject: str) -> None:
    marker = f"tagged-{abs(hash(subject)) % 10**8}"
    with gateway.smtp() as s:
        s.login("alice@a.test", "alice-password")
        s.sendmail("alice@a.test", ["bob@b.test"], raw_mail(subject, marker))
        # the 250 says it was queued for certification, not relayed
    async def stored() -> list[bytes]:
        store = Store(gateway.db)
        try:
            out = []
            for sid in range(1, 50):
                sub = await store.get_submission(sid)
                if sub:
                    out.append(sub["raw"])
            return out
        finally:
            await store.close()

    raws = asyncio.run(stored())
    assert any(marker.encode() in r for r in raws)
    # a plain mail sent afterwards arrives; the certified one never does
    with gateway.smtp() as s:
        s.login("alice@a.test", "alice-password")
        s.sendmail("alice@a.test", ["bob@b.test"], raw_mail("after", marker + "-after"))
    wait_for(stack.imap_port, "bob@b.test", "bob-password", (marker + "-after").encode())
    with pytest.raises(AssertionError):
        wait_for(stack.imap_port, "bob@b.test", "bob-password", f"<{marker}@".encode(),
                 timeout=2)

