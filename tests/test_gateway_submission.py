"""The gateway's SMTP submission proxy, between standard clients and a real Postfix and
Dovecot: TLS, AUTH against the real IMAP server, byte-for-byte relaying of untagged mail,
and certified mail held for the protocol (never sent uncertified)."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
from email.header import Header

import pytest
from gateways import GatewayProc, Orgs
from mailstack import REFUSED_HEADER, REFUSED_RCPT, MailStack
from test_mailstack import wait_for

from tcms.store import Store

MAX_SIZE = 30 * 1024 * 1024  # tests/gateways.py sets the gateways' limit


@pytest.fixture(scope="module")
def stack(orgs: Orgs) -> MailStack:
    return orgs.stack


@pytest.fixture(scope="module")
def gateway(orgs: Orgs) -> GatewayProc:
    return orgs.a


def raw_mail(subject: str, marker: str, body: str = "Hello Bob,\r\nplain text.\r\n") -> bytes:
    return (f"Date: Mon, 23 Nov 2026 10:00:00 +0100\r\n"
            f"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{marker}@a.test>\r\nX-Marker: {marker}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{body}").encode()


def test_untagged_mail_is_relayed_byte_for_byte(gateway: GatewayProc, stack: MailStack) -> None:
    sent = raw_mail("Lunch?", "untagged-1", "Line one\r\n.leading dot\r\n\tTabbed Grüße\r\n")
    with gateway.connect() as s:
        s.login("alice@a.test", "alice-password")
        s.sendmail("alice@a.test", ["bob@b.test"], sent)
    got = wait_for(stack.imap_port, "bob@b.test", "bob-password", b"untagged-1")
    got = got.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert got.endswith(sent), got[-400:]  # the MTAs only prepend trace headers
    prefix = got[: len(got) - len(sent)].decode()
    names = {line.split(":", 1)[0].lower() for line in prefix.split("\r\n")
             if line and not line[0].isspace()}
    assert names == {"return-path", "delivered-to", "received"}  # trace headers only


def test_implicit_tls_and_swaks(gateway: GatewayProc, stack: MailStack) -> None:
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


def test_auth_is_required_checked_and_bound_to_the_sender(gateway: GatewayProc) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.submission, timeout=30) as s:
        code, _ = s.ehlo()
        assert code == 250
        code, msg = s.docmd("AUTH", "PLAIN AGFsaWNlQGEudGVzdABhbGljZS1wYXNzd29yZA==")
        assert code in (530, 538), msg  # no AUTH before STARTTLS
        code, _ = s.docmd("MAIL", "FROM:<alice@a.test>")
        assert code == 530
    with gateway.connect() as s, pytest.raises(smtplib.SMTPAuthenticationError):
        s.login("alice@a.test", "wrong-password")
    with gateway.connect() as s:
        s.login("alice@a.test", "alice-password")
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("bob@b.test", ["alice@a.test"], raw_mail("forged", "forged-4"))
        assert e.value.smtp_code == 553


def test_size_limit(gateway: GatewayProc) -> None:
    with gateway.connect() as s:
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
        gateway: GatewayProc, stack: MailStack, subject: str) -> None:
    marker = f"tagged-{abs(hash(subject)) % 10**8}"
    with gateway.connect() as s:
        s.login("alice@a.test", "alice-password")
        s.sendmail("alice@a.test", ["bob@b.test"], raw_mail(subject, marker))
        # the 250 says it was queued for certification, not relayed
    async def stored() -> list[bytes]:
        store = Store(gateway.db_url)
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
    with gateway.connect() as s:
        s.login("alice@a.test", "alice-password")
        s.sendmail("alice@a.test", ["bob@b.test"], raw_mail("after", marker + "-after"))
    wait_for(stack.imap_port, "bob@b.test", "bob-password", (marker + "-after").encode())
    with pytest.raises(AssertionError):
        wait_for(stack.imap_port, "bob@b.test", "bob-password", f"<{marker}@".encode(),
                 timeout=2)



def test_a_refused_mail_leaves_the_upstream_session_usable(gateway: GatewayProc,
                                                           stack: MailStack) -> None:
    """The MTA refuses a mail (after DATA) or a recipient (at RCPT): the client hears the
    refusal, and the next mails, through the kept-open upstream connections, arrive."""
    with gateway.connect() as s:
        s.login("alice@a.test", "alice-password")
        for i in range(3):
            refused = raw_mail("no", f"refused-{i}").replace(
                b"X-Marker", f"{REFUSED_HEADER}: yes\r\nX-Marker".encode(), 1)
            with pytest.raises(smtplib.SMTPDataError) as e:
                s.sendmail("alice@a.test", ["bob@b.test"], refused)
            assert e.value.smtp_code == 550 and b"refused by policy" in e.value.smtp_error
            with pytest.raises(smtplib.SMTPDataError) as e:
                s.sendmail("alice@a.test", [REFUSED_RCPT], raw_mail("no", f"rcpt-{i}"))
            assert e.value.smtp_code == 550
            s.sendmail("alice@a.test", ["bob@b.test"], raw_mail("yes", f"after-refusal-{i}"))
    for i in range(3):
        wait_for(stack.imap_port, "bob@b.test", "bob-password", f"after-refusal-{i}".encode())
