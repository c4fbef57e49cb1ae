"""An organisation's CA and the gateway's S/MIME signer for tests that write users' mail
without a gateway process (made once per test process: RSA keys take a moment)."""

from __future__ import annotations

import datetime as dt
import functools
import subprocess
from email.message import EmailMessage, Message
from pathlib import Path

from cryptography import x509

from gateway import signingcert
from gateway.notices import Writer
from gateway.signingcert import Signer
from gateway.wording import Wording


@functools.cache
def ca_and_signer() -> tuple[x509.Certificate, Signer]:
    now = dt.datetime.now(dt.UTC)
    ca, ca_key = signingcert.create_ca("Test Org", now=now)
    key = signingcert.new_key()
    cert = signingcert.issue(ca, ca_key, key.public_key(),
                             ["postmaster@a.test", "postmaster@b.test"], now=now)
    return ca, Signer(cert, key)


def writer(languages: dict[str, str] | None = None, templates: Path | None = None) -> Writer:
    return Writer(ca_and_signer()[1], Wording(templates), "en", languages or {})


def openssl_verify(raw: bytes, ca_pem: Path, workdir: Path,
                   name: str = "mail.eml") -> subprocess.CompletedProcess[str]:
    """``openssl smime -verify`` on a mail as a user holds it, against the CA."""
    path = workdir / name
    path.write_bytes(raw)
    return subprocess.run(["openssl", "smime", "-verify", "-in", str(path), "-CAfile",
                           str(ca_pem), "-out", "/dev/null"],
                          capture_output=True, text=True, timeout=60)


def text_of(msg: Message) -> str:
    """The plain text a mail client shows of a mail the gateway wrote (inside its
    multipart/signed and multipart/alternative)."""
    assert isinstance(msg, EmailMessage), "parse with email.policy.default"
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None, "no text/plain part"
    return str(body.get_content())
