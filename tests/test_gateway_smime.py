"""Every mail a gateway writes to a user is S/MIME signed and passes `openssl smime
-verify` against the organisation's CA, as the user's client fetches it from Dovecot;
a user configured for Italian gets Italian notices; the original is delivered untouched.
(Real gateways, Postfix and Dovecot: tests/gateways.py.)"""

from __future__ import annotations

import json
import re
import signal
import time
from email.message import Message
from pathlib import Path

import pytest
from fakehttp import serve
from gateways import (
    Orgs,
    attachment,
    inbound_outcome,
    move,
    parse,
    query,
    settled,
    subject_starts,
    wait_mail,
)
from mailstack import PATIENCE, free_port
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
    _, raw = wait_mail(imap, "alice@a.test", subject_starts("Not delivered:", "Left unanswered"))
    signed_by(orgs, raw, a_ca, "aborted.eml")
    _, raw = wait_mail(imap, "carol@b.test", subject_starts("Expired:", "Left unanswered"))
    signed_by(orgs, raw, b_ca, "expired.eml")
    settled(summary["exchange"], orgs.a, orgs.b)


def exchange_of(text: str) -> str:
    """The exchange a status mail names (its "Exchange: <tx>" line)."""
    found = re.search(r"^Exchange: ([0-9a-f]{32})\r?$", text, re.MULTILINE)
    assert found, text
    return found.group(1)


def no_evidence(msg: Message) -> None:
    """A `failed` or `withdrawn` mail carries no attachment (docs/mail.md)."""
    kinds = {part.get_content_type() for part in msg.walk()}
    assert not kinds & {"application/vnd.tcms.evidence+json",
                        "application/vnd.tcms.certdata+json"}, kinds


def test_a_failed_certification_is_told_signed(orgs: Orgs) -> None:
    """The TSS refuses alice's m1 (a 400 with a named check, as the real one answers a
    request it will not stamp): her gateway ends the exchange as failed and tells her so,
    signed; nothing went to bob.  Alice's gateway runs against that TSS meanwhile, and
    against the real one again afterwards, whatever happens."""
    refusal = json.dumps({"error": "m1.sig", "reason": "refused for this test"}).encode()
    gw = orgs.a
    with serve(lambda _method, _path, _body: (400, "application/json", refusal)) as tss:
        gw.stop()
        gw.extra_env = {"TCMS_TSS__URL": tss.url}
        try:
            gw.start()
            send(orgs, "[certified] Never stamped", "smime-failed", "bob@b.test")
            _, raw = wait_mail(orgs.direct, "alice@a.test",
                               subject_starts("Certification failed:", "Never stamped"))
        finally:
            gw.stop()
            gw.extra_env = {}
            gw.start()
    assert ("POST", "/m1") in tss.requests
    msg = signed_by(orgs, raw, orgs.a.mail_ca, "failed.eml")
    assert "bob@b.test" in str(msg["Subject"])
    text = text_of(msg)
    assert 'The certification of "Never stamped" (bob@b.test) failed.' in text
    assert "the time-stamping server failed (TSS answered 400 (m1.sig: refused for this test))" \
        in text
    no_evidence(msg)
    tx = exchange_of(text)
    settled(tx, orgs.a)  # the run has ended and its outbox is empty: this is final
    assert query(orgs.a.db_url, "SELECT phase FROM runs WHERE tx = ?", tx) == [("failed",)]
    assert not query(orgs.a.db_url, "SELECT m.kind FROM messages m JOIN runs r ON "
                     "m.cid = r.cid AND m.role = r.role WHERE r.tx = ? AND "
                     "m.destination = 'peer'", tx)


def m4_sent(orgs: Orgs, tx: str) -> bool:
    return bool(query(orgs.b.db_url, "SELECT m.id FROM messages m JOIN runs r ON "
                      "m.cid = r.cid AND m.role = r.role WHERE r.tx = ? AND m.kind = 'm4' "
                      "AND m.sent_at IS NOT NULL", tx))


def test_a_withdrawn_exchange_is_told_signed(orgs: Orgs) -> None:
    """Bob accepts in time, but the MTA cannot deliver his m4 to alice's gateway (its
    route points where nothing listens): past the accept deadline alice's gateway aborts
    at the TTP ("Not delivered"); bob's gateway, waiting for m5, asks the TTP and learns
    the exchange was aborted: bob is told it was withdrawn, signed by b.test.  Bob's
    gateway is held (SIGSTOP) from m4 until the abort is decided, so that its request
    reaches the TTP after alice's whatever the machine's load.  The route is put back
    and the deferred m4 flushed (alice's gateway takes it and ignores it) whatever
    happens."""
    imap, a, b = orgs.direct, orgs.a, orgs.b
    send(orgs, "[certified] Withdrawn in transit", "smime-withdrawn", "bob@b.test")
    uid, raw = wait_mail(imap, "bob@b.test", subject_starts("Certified mail from",
                                                            "Withdrawn in transit"))
    tx = str(parse(raw)["TCMS-Notice"])
    orgs.stack.route(a.protocol_address, free_port())  # nothing listens: Postfix defers
    held = False
    try:
        move(imap, "bob@b.test", uid, "Certified.Accept")
        deadline = time.time() + PATIENCE
        while not m4_sent(orgs, tx):
            assert time.time() < deadline, "bob's gateway never sent m4"
            time.sleep(0.1)
        b.send_signal(signal.SIGSTOP)
        held = True
        _, raw = wait_mail(imap, "alice@a.test", subject_starts("Not delivered:",
                                                                "Withdrawn in transit"))
    finally:
        if held:
            b.send_signal(signal.SIGCONT)
        orgs.stack.route(a.protocol_address, a.intake)
        orgs.stack.flush()  # the deferred m4 goes now: to alice's gateway, too late
    signed_by(orgs, raw, a.mail_ca, "aborted-2.eml")
    aborted = json.loads(attachment(raw, "vnd.tcms.certdata+json"))
    assert aborted["verdict"] == "aborted" and aborted["exchange"] == tx, aborted

    _, raw = wait_mail(imap, "bob@b.test", subject_starts("Withdrawn:", "Withdrawn in transit"))
    msg = signed_by(orgs, raw, b.mail_ca, "withdrawn.eml")
    assert "alice@a.test withdrew" in str(msg["Subject"])
    text = text_of(msg)
    assert 'alice@a.test withdrew the certified mail "Withdrawn in transit"' in text
    assert "The sender aborted the exchange at the TTP." in text
    assert exchange_of(text) == tx
    no_evidence(msg)
    # a signature by the other organisation's CA does not pass
    assert openssl_verify(raw, a.mail_ca, orgs.workdir, "withdrawn-a-ca.eml").returncode != 0

    # the late m4 reached alice's gateway, changed nothing, and both sides are done
    status, detail = inbound_outcome(a.db_url, tx, kind="m4")
    assert status == "done", detail
    settled(tx, a, b)
    for gw in (a, b):
        assert query(gw.db_url, "SELECT phase FROM runs WHERE tx = ?", tx) == [("aborted",)]
