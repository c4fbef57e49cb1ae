"""The real mail stack the gateway's end-to-end tests run on: Postfix relays by LMTP into
Dovecot, users and the gateway's master user read over IMAP with standard clients."""

from __future__ import annotations

import email
import email.policy
import imaplib
import smtplib
import subprocess
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from mailstack import MASTER, PATIENCE, MailStack

USERS = {"alice@a.test": "alice-password", "bob@b.test": "bob-password"}


@pytest.fixture(scope="module")
def stack() -> Iterator[MailStack]:
    s = MailStack(USERS).start()
    yield s
    s.remove()


def wait_for(imap_port: int, user: str, password: str, needle: bytes,
             timeout: float = PATIENCE, folder: str = "INBOX") -> bytes:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with imaplib.IMAP4("127.0.0.1", imap_port) as imap:
            imap.login(user, password)
            if imap.select(folder)[0] != "OK":
                time.sleep(0.2)
                continue
            _, data = imap.search(None, "ALL")
            for num in data[0].split():
                _, msg = imap.fetch(num, "(RFC822)")
                raw = msg[0][1]  # type: ignore[index]
                assert isinstance(raw, bytes), msg
                if needle in raw:
                    return bytes(raw)
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} never reached {user}")


def test_swaks_through_postfix_into_dovecot(stack: MailStack) -> None:
    res = subprocess.run(["swaks", "--server", f"127.0.0.1:{stack.smtp_port}", "--from",
                          "alice@a.test", "--to", "bob@b.test", "--header",
                          "Subject: swaks-probe-1", "--body", "hello from swaks"],
                         capture_output=True, text=True, timeout=PATIENCE)
    assert res.returncode == 0, res.stdout + res.stderr
    raw = wait_for(stack.imap_port, "bob@b.test", "bob-password", b"swaks-probe-1")
    assert b"hello from swaks" in raw


def test_smtplib_and_the_master_user(stack: MailStack) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "bob@b.test", "alice@a.test", "smtplib-probe-2"
    msg.set_content("Grüße über SMTP\n")
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as smtp:
        smtp.send_message(msg)
    # the gateway opens any user's mailbox as `user*master`
    raw = wait_for(stack.imap_port, f"alice@a.test*{MASTER[0]}", MASTER[1], b"smtplib-probe-2")
    delivered = email.message_from_bytes(raw, policy=email.policy.default)
    body = delivered.get_content().replace("\r\n", "\n")
    assert body == "Grüße über SMTP\n"
    with pytest.raises(imaplib.IMAP4.error), imaplib.IMAP4("127.0.0.1", stack.imap_port) as imap:
        imap.login("alice@a.test", "wrong-password")


def test_mail_to_an_unknown_user_bounces(stack: MailStack) -> None:
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as smtp:
        smtp.sendmail("alice@a.test", ["nobody@b.test"], b"Subject: lost?\r\n\r\nx\r\n")
    deadline = time.time() + PATIENCE
    while time.time() < deadline:
        log = stack.maillog()
        if "to=<nobody@b.test>" in log and "status=bounced" in log:
            return
        time.sleep(0.2)
    raise AssertionError(f"no bounce for nobody@b.test:\n{stack.maillog()[-2000:]}")
