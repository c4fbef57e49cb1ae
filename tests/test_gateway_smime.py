"""Every mail a gateway writes to a user is S/MIME signed and passes `openssl smime
-verify` against the organisation's CA, as the user's client fetches it from Dovecot;
a user configured for Italian gets Italian notices; the original is delivered untouched.
(Real gateways, Postfix and Dovecot: tests/gateways.py.)"""

from __future__ import annotations

import json
from email.message import Message
from pathlib import Path

import pytest
from gateways import Orgs, attachment, move, parse, settled, subject_starts, wait_mail
from signing import openssl_verify, text_of

pytestmark = pytest.mark.slow


def mail(subject: str, marker: str, to: str) -> bytes:
    return (f"From: Alice <alice@a.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{marker}@a.test>\r\nX-Marker: {marker}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nThe terms, as agreed.\r\n").encode()


def send(orgs: Orgs, subject: str, marker: str, to: str) -> None:
    with orgs.a.smtp("alice@a.test") as s:
        s.sendmail("alice@a.test", [to], mail(subject, marker, to))


def signed_by(orgs: Orgs, raw: bytes, ca: Path, name: str) -> Message:
    """The mail is multipart/signed as S/MIME says, and openssl verifies it with ``ca``."""
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/signed"
    assert msg.get_param("protocol") == "application/pkcs7-signature"
    assert msg.get_param("micalg") == "sha-256"
    res = openssl_verify(raw, ca, orgs.workdir, name)
    assert res.returncode == 0 and "Verification successful" in res.stderr, res.stderr
    return msg


def test_every_mail_to_a_user_is_signed(orgs: Orgs) -> None:
    a_ca, b_ca = orgs.a.mail_ca, orgs.b.mail_ca
    imap = orgs.direct  # as delivered by Dovecot, no proxy in between
    send(orgs, "[certified] Signed terms", "smime-1", "bob@b.test")
    send(orgs, "[certified] Contratto firmato", "smime-2", "carla@b.test")
    send(orgs, "[certified] Left unanswered", "smime-3", "carol@b.test")
    send(orgs, "[certified] To nobody", "smime-4", "nobody@b.test")

    # the sender's "sent for certification", the recipient's notice (English)
    _, raw = wait_mail(imap, "alice@a.test", subject_starts("Sent for certification",
                                                            "Signed terms"))
    assert "time stamp" in text_of(signed_by(orgs, raw, a_ca, "submitted.eml"))
    uid, raw = wait_mail(imap, "bob@b.test", subject_starts("Certified mail from",
                                                            "Signed terms"))
    note = signed_by(orgs, raw, b_ca, "notice.eml")
    assert "Answer by" in text_of(note)
    html = note.get_body(preferencelist=("html",))  # type: ignore[attr-defined]
    assert html is not None and 'lang="en"' in html.get_content()
    # a signature by the other organisation's CA does not pass
    assert openssl_verify(raw, a_ca, orgs.workdir, "wrong-ca.eml").returncode != 0
    # through the gateway's IMAP proxy, the same bytes
    _, proxied = wait_mail(orgs.proxy, "bob@b.test", subject_starts("Certified mail from",
                                                                    "Signed terms"))
    assert proxied == raw
    move(imap, "bob@b.test", uid, "Certified.Accept")  # any client: straight on Dovecot

    # the original, as sent: no template, no wrapper
    _, got = wait_mail(imap, "bob@b.test", lambda m: m["X-Marker"] == "smime-1"
                       and m["TCMS-Certified"] is not None)
    assert parse(got).get_content_type() == "text/plain"
    assert got.endswith(b"\r\n\r\nThe terms, as agreed.\r\n")

    # the receipt: signed, the evidence bundle and its summary
    _, raw = wait_mail(imap, "alice@a.test", subject_starts("Receipt:", "Signed terms"))
    signed_by(orgs, raw, a_ca, "receipt.eml")
    res = orgs.verify(attachment(raw, "vnd.tcms.evidence+json"), "smime-1.json")
    assert res.returncode == 0 and "(received)" in res.stdout, res.stdout + res.stderr
    summary = json.loads(attachment(raw, "vnd.tcms.certdata+json"))
    assert summary["format"] == "tcms-certdata/1" and summary["type"] == "receipt"
    assert summary["verdict"] == "received" and summary["subject"] == "Signed terms"
    assert (summary["sender"], summary["recipient"]) == ("alice@a.test", "bob@b.test")
    assert summary["exchange"] == str(note["TCMS-Notice"]) and summary["times"]["sent"]

    # carla reads Italian: her notice; she refuses it, and alice is told (in English)
    uid, raw = wait_mail(imap, "carla@b.test", subject_starts("Posta certificata da",
                                                              "Contratto firmato"))
    italian = signed_by(orgs, raw, b_ca, "notice-it.eml")
    assert "Per ACCETTARE" in text_of(italian) and "Rispondere entro" in text_of(italian)
    move(imap, "carla@b.test", uid, "Certified.Refuse")
    _, raw = wait_mail(imap, "alice@a.test", subject_starts("Refused:", "Contratto firmato"))
    signed_by(orgs, raw, a_ca, "refused.eml")
    refused = json.loads(attachment(raw, "vnd.tcms.certdata+json"))
    assert refused["type"] == "refused" and refused["recipient"] == "carla@b.test"
    assert any("refused" in s for s in refused["statements"]), refused

    # not certifiable: the sender is told, signed
    _, raw = wait_mail(imap, "alice@a.test", subject_starts("Not sent:", "To nobody"))
    assert "NOT sent" in text_of(signed_by(orgs, raw, a_ca, "uncertifiable.eml"))

    # carol never answers: the sender's abort notice and carol's expiry notice
    _, raw = wait_mail(imap, "alice@a.test", subject_starts("Not delivered:", "Left unanswered"),
                       timeout=120)
    signed_by(orgs, raw, a_ca, "aborted.eml")
    _, raw = wait_mail(imap, "carol@b.test", subject_starts("Expired:", "Left unanswered"))
    signed_by(orgs, raw, b_ca, "expired.eml")
    settled(summary["exchange"], orgs.a, orgs.b)
