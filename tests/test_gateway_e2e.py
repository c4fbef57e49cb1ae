"""Certified mail end to end: two organisations' gateways, a real Postfix and Dovecot, the
TSS, TTP and DC as real processes; users act only through smtplib (via their gateway) and
imaplib (on their mailbox).  Gateway a.test keeps its state in PostgreSQL, b.test in
SQLite.  Every recovery procedure is watched happening: R1S, R1R, R2S."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import smtplib
import time
import uuid
from collections.abc import Callable
from email.header import Header, decode_header, make_header
from email.message import Message
from pathlib import Path

import pytest
from gateways import (
    Orgs,
    attachment,
    inbound_outcome,
    messages,
    move,
    parse,
    query,
    settled,
    subject_starts,
    wait_mail,
)
from mailstack import PATIENCE
from signing import text_of
from test_data_at_rest import assert_nowhere, key_ids, mode, pg_dump, sqlite_bytes, tcms

from tcms.protocol.receiver import ReceiverState
from tcms.protocol.sender import SenderState
from tcms.protocol.state import load_state

pytestmark = pytest.mark.slow
# `make test` runs these in three groups, each on its own two gateways (tests/conftest.py)
XDIST_GROUPS = 3


def certified(subject: str, marker: str, to: str = "Bob <bob@b.test>",
              body: str = "Dear Bob,\r\nplease find the contract.\r\n") -> bytes:
    return (f"Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nFrom: Alice <alice@a.test>\r\n"
            f"To: {to}\r\nSubject: {subject}\r\nMessage-ID: <{marker}@a.test>\r\n"
            f"X-Marker: {marker}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            f"\r\n{body}").encode()


def send(orgs: Orgs, raw: bytes, rcpts: list[str]) -> None:
    with orgs.a.smtp("alice@a.test") as s:
        s.sendmail("alice@a.test", rcpts, raw)


def notice_for(orgs: Orgs, user: str, about: str) -> tuple[bytes, Message]:
    uid, raw = wait_mail(orgs.proxy, user, subject_starts("Certified mail from",
                                                                    about))
    return uid, parse(raw)


def original(marker: str) -> Callable[[Message], bool]:
    return lambda m: m["X-Marker"] == marker and m["TCMS-Certified"] is not None


def no_protocol_mail_left(orgs: Orgs, *users: str) -> None:
    """Users never see protocol mail, and the gateways consumed every one."""
    for user in users:
        for via, folder in ((orgs.proxy, "INBOX"), (orgs.direct, "INBOX"),
                            (orgs.direct, "TCMS")):
            left = [parse(r)["Subject"] for _, r in messages(via, user, folder)
                    if parse(r)["TCMS-Message"] is not None]
            assert not left, f"protocol mail left in {user}'s {folder}: {left}"


def decoded(value: object) -> str:
    return str(make_header(decode_header(str(value))))


def decoded_subject(prefix: str, about: str) -> Callable[[Message], bool]:
    """Matches a mail whose decoded subject starts with ``prefix`` and names ``about``."""
    return lambda m: (decoded(m["Subject"]).startswith(prefix)
                      and about in decoded(m["Subject"]))


def test_accept_read_and_receipt(orgs: Orgs) -> None:
    imap = orgs.proxy
    logs = len(orgs.stack.dovecot_log()), 0
    sent = certified("[certified] Contract No. 7", "accept-1")
    send(orgs, sent, ["bob@b.test"])
    # the sender is told at once that the mail went out for certification, with its time
    _, raw = wait_mail(imap, "alice@a.test", subject_starts("Sent for certification",
                                                            "Contract No. 7"))
    assert "time stamp" in text_of(parse(raw))
    # the recipient sees a notice, not the mail
    uid, note = notice_for(orgs, "bob@b.test", "Contract No. 7")
    text = text_of(note)
    assert "alice@a.test" in text and "Time-stamped" in text and "Answer by" in text
    assert not [r for _, r in messages(imap, "bob@b.test") if b"please find the contract" in r]
    move(imap, "bob@b.test", uid, "Certified.Accept")
    # the original arrives, every byte as sent but for the tag, with certification headers
    _, got = wait_mail(imap, "bob@b.test", original("accept-1"))
    msg = parse(got)
    assert msg["Subject"] == "Contract No. 7"
    assert "exchange=" in msg["TCMS-Certified"]
    assert got.endswith(sent.split(b"\r\n\r\n", 1)[1])
    # the sender gets a receipt with evidence that verifies offline
    _, rec = wait_mail(imap, "alice@a.test", subject_starts("Receipt:", "Contract No. 7"))
    assert b"bob@b.test" in rec
    res = orgs.verify(attachment(rec, "vnd.tcms.evidence+json"), "accept-1.json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "VALID evidence (received)" in res.stdout
    # the users acted only through their gateways, which spoke TLS to every server
    logins = [x for x in orgs.stack.dovecot_log()[logs[0]:].splitlines() if "Login:" in x]
    assert logins and all(", TLS," in x for x in logins), logins
    # (the gateways keep SMTP connections open: count every one since the stack started)
    maillog = orgs.stack.maillog()
    connects = maillog.count("]: connect from ") - maillog.count("commands=0/0")  # port probes
    assert connects and maillog.count("TLS connection established from") == connects
    no_protocol_mail_left(orgs, "alice@a.test", "bob@b.test")


def count(orgs: Orgs, user: str, match: Callable[[Message], bool]) -> int:
    return sum(1 for _, r in messages(orgs.proxy, user) if match(parse(r)))


def test_refuse_by_replying_to_the_notice(orgs: Orgs) -> None:
    imap = orgs.proxy
    send(orgs, certified("[certified] Offer to refuse", "refuse-2"), ["bob@b.test"])
    _, note = notice_for(orgs, "bob@b.test", "Offer to refuse")
    tx = str(note["TCMS-Notice"])
    # a user may answer only for their own mail: carol cannot refuse bob's
    with orgs.b.smtp("carol@b.test") as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("carol@b.test", [f"tcms+refuse-{tx}@b.test"], b"Subject: no\r\n\r\nno")
        assert e.value.smtp_code == 550
    with orgs.b.smtp("bob@b.test") as s:
        s.sendmail("bob@b.test", [f"tcms+refuse-{tx}@b.test"], b"Subject: no thanks\r\n\r\n-")
    _, raw = wait_mail(imap, "alice@a.test", subject_starts("Refused:", "Offer to refuse"))
    res = orgs.verify(attachment(raw, "vnd.tcms.evidence+json"), "refuse-2.json")
    assert res.returncode == 0 and "refused" in res.stdout, res.stdout + res.stderr
    settled(tx, orgs.a, orgs.b)  # both gateways are done with it: the mailboxes are final
    assert count(orgs, "bob@b.test", original("refuse-2")) == 0
    assert count(orgs, "alice@a.test", subject_starts("Receipt:", "Offer to refuse")) == 0


def test_several_recipients_non_ascii_and_an_uncertifiable_one(orgs: Orgs) -> None:
    imap = orgs.proxy
    subject = Header("[certified] Vertrag über Grüße — 契約", "utf-8").encode()
    body = "Grüße aus Köln,\r\nder Vertrag: 契約書.\r\n"
    raw = certified(subject, "multi-3", to="Bob <bob@b.test>, Carol <carol@b.test>", body=body)
    # To bob and carol, Bcc dave, and two addresses nobody can certify for
    send(orgs, raw, ["bob@b.test", "carol@b.test", "dave@b.test", "nobody@b.test",
                     "x@unknown.test"])
    for who in ("nobody@b.test", "x@unknown.test"):
        _, fail = wait_mail(imap, "alice@a.test", decoded_subject("Not sent:", who))
        assert b"NOT sent" in fail
    notes = {u: notice_for(orgs, u, "Vertrag über Grüße") for u in
             ("bob@b.test", "carol@b.test", "dave@b.test")}
    move(imap, "bob@b.test", notes["bob@b.test"][0], "Certified.Accept")
    move(imap, "dave@b.test", notes["dave@b.test"][0], "Certified.Accept")
    with orgs.b.smtp("carol@b.test") as s:  # carol replies to her notice: that accepts
        s.sendmail("carol@b.test", [str(notes["carol@b.test"][1]["Reply-To"])],
                   b"Subject: Re: notice\r\n\r\nyes")
    for user in ("bob@b.test", "carol@b.test", "dave@b.test"):
        _, got = wait_mail(imap, user, original("multi-3"))
        msg = parse(got)
        assert decoded(msg["Subject"]) == "Vertrag über Grüße — 契約"
        content = msg.get_content()  # type: ignore[attr-defined]
        assert content.replace("\r\n", "\n") == body.replace("\r\n", "\n")
        assert msg["Bcc"] is None
    for user in ("bob@b.test", "carol@b.test", "dave@b.test"):
        _, rec = wait_mail(imap, "alice@a.test", decoded_subject("Receipt:", user))
        res = orgs.verify(attachment(rec, "vnd.tcms.evidence+json"), f"multi-{user}.json")
        assert res.returncode == 0 and "(received)" in res.stdout, res.stdout
    for _, note in notes.values():
        settled(str(note["TCMS-Notice"]), orgs.a, orgs.b)
    for user in ("bob@b.test", "carol@b.test", "dave@b.test"):
        assert count(orgs, user, original("multi-3")) == 1


def test_recipient_never_answers_r1s(orgs: Orgs) -> None:
    imap = orgs.proxy
    send(orgs, certified("[certified] Silent treatment", "r1s-4"), ["carol@b.test"])
    notice_for(orgs, "carol@b.test", "Silent treatment")
    # carol does nothing: after the accept window the sender aborts at the TTP
    _, raw = wait_mail(imap, "alice@a.test", subject_starts("Not delivered:",
                                                            "Silent treatment"))
    res = orgs.verify(attachment(raw, "vnd.tcms.evidence+json"), "r1s-4.json")
    assert res.returncode == 0 and "(aborted)" in res.stdout, res.stdout + res.stderr
    wait_mail(imap, "carol@b.test", subject_starts("Expired:", "Silent treatment"))
    # a late accept changes nothing: the notice is consumed, the mail stays sealed
    uid, note = notice_for(orgs, "carol@b.test", "Silent treatment")
    tx = str(note["TCMS-Notice"])
    mark = len(orgs.b.log_text())
    move(imap, "carol@b.test", uid, "Certified.Accept")
    orgs.b.wait_log(f"exchange {tx}: carol@b.test could not be accepted", since=mark)
    settled(tx, orgs.a, orgs.b)
    assert count(orgs, "carol@b.test", original("r1s-4")) == 0


def _receiver_run(orgs: Orgs, marker_subject: str) -> tuple[str, str, bool]:
    """(tx, phase, m4 sent) of b.test's receiver run with this subject."""
    import asyncio

    async def look() -> tuple[str, str, bool]:
        store = orgs.b.store()
        try:
            for r in await store.list_runs():
                if r.role == "receiver" and r.subject == marker_subject:
                    sent = [m for m in await store.messages_of(r.cid)
                            if m.kind == "m4" and m.sent_at is not None]
                    return r.tx, r.phase, bool(sent)
            return "", "", False
        finally:
            await store.close()

    return asyncio.run(look())


def test_sender_stalls_after_m4_r1r(orgs: Orgs) -> None:
    imap = orgs.proxy
    send(orgs, certified("[certified] Stalling sender", "r1r-5"), ["bob@b.test"])
    uid, _ = notice_for(orgs, "bob@b.test", "Stalling sender")
    orgs.a.send_signal(signal.SIGSTOP)  # the sender's gateway will never send m5
    try:
        move(imap, "bob@b.test", uid, "Certified.Accept")
        # after m5's deadline bob asks the TTP, which releases the key
        _, got = wait_mail(imap, "bob@b.test", original("r1r-5"))
        assert "by=released by the TTP" in parse(got)["TCMS-Certified"]
    finally:
        orgs.a.send_signal(signal.SIGCONT)
    # the sender's gateway wakes up, finds m4 too late, and gets the TTP's affidavit
    _, rec = wait_mail(imap, "alice@a.test", subject_starts("Receipt:", "Stalling sender"))
    res = orgs.verify(attachment(rec, "vnd.tcms.evidence+json"), "r1r-5.json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert count(orgs, "bob@b.test", original("r1r-5")) == 1


def test_recipient_stalls_after_m5_r2s(orgs: Orgs) -> None:
    imap = orgs.proxy
    send(orgs, certified("[certified] Stalling recipient", "r2s-6"), ["bob@b.test"])
    uid, note = notice_for(orgs, "bob@b.test", "Stalling recipient")
    move(imap, "bob@b.test", uid, "Certified.Accept")
    deadline = time.time() + PATIENCE
    while not _receiver_run(orgs, "Stalling recipient")[2]:  # m4 is out
        assert time.time() < deadline, "bob's gateway never sent m4"
        time.sleep(0.02)
    orgs.b.send_signal(signal.SIGSTOP)  # bob's gateway will not send m6
    try:
        _, rec = wait_mail(imap, "alice@a.test", subject_starts("Receipt:",
                                                                "Stalling recipient"))
        assert b"certifies" in rec or b"TTP" in rec
        res = orgs.verify(attachment(rec, "vnd.tcms.evidence+json"), "r2s-6.json")
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        orgs.b.send_signal(signal.SIGCONT)
    # bob's gateway carries on: it takes the late m5 and either answers it with m6 or, when
    # its own m5 deadline fires first, ends through the TTP; the mail is delivered once and
    # a late m6 changes nothing
    wait_mail(imap, "bob@b.test", original("r2s-6"))
    tx = str(note["TCMS-Notice"])
    inbound_outcome(orgs.b.db_url, tx, kind="m5")
    settled(tx, orgs.a, orgs.b)
    if query(orgs.b.db_url, "SELECT m.id FROM messages m JOIN runs r ON m.cid = r.cid "
                            "AND m.role = r.role WHERE r.tx = ? AND m.kind = 'm6'", tx):
        status, detail = inbound_outcome(orgs.a.db_url, tx, kind="m6")
        assert status == "done", detail
        settled(tx, orgs.a)
    assert count(orgs, "bob@b.test", original("r2s-6")) == 1
    assert count(orgs, "alice@a.test", subject_starts("Receipt:", "Stalling recipient")) == 1


def phase(db_url: str, role: str, subject: str) -> str:
    """The phase of a gateway's run, read straight from its database ("" if none)."""
    import asyncio
    import sqlite3

    import asyncpg

    query = "SELECT phase FROM runs WHERE role = {} AND subject = {}"
    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.split(":///", 1)[1], timeout=10) as db:
            row = db.execute(query.format("?", "?"), (role, subject)).fetchone()
            return str(row[0]) if row else ""

    async def pg() -> str:
        conn = await asyncpg.connect(db_url)
        try:
            return str(await conn.fetchval(query.format("$1", "$2"), role, subject) or "")
        finally:
            await conn.close()

    return asyncio.run(pg())


# (which gateway dies, its run's role, the phase just committed when it is killed)
KILL_POINTS = [
    ("a", "sender", "await-m4"),   # m2 stored, m3 and the submission receipt maybe unsent
    ("b", "receiver", "pending"),  # m3 stored, the notice maybe not shown
    ("b", "receiver", "await-m5"),  # accepted, m4 maybe unsent
    ("a", "sender", "await-m6"),   # m4 taken, m5 maybe unsent
    ("b", "receiver", "done"),     # m5 taken, original and m6 maybe not out
    ("a", "sender", "done"),       # m6 taken, the receipt maybe not shown
]


@pytest.mark.parametrize(("who", "role", "at"), KILL_POINTS,
                         ids=[f"{w}-{p}" for w, _, p in KILL_POINTS])
def test_a_gateway_killed_at_each_step_the_exchange_still_ends_fair(
        orgs: Orgs, who: str, role: str, at: str) -> None:
    imap = orgs.proxy
    gw = orgs.a if who == "a" else orgs.b
    subject = f"Killed {who} at {at}"
    marker = f"kill-{who}-{at}"
    send(orgs, certified(f"[certified] {subject}", marker), ["bob@b.test"])
    killed = False

    def kill_when_committed() -> None:
        nonlocal killed
        if not killed and phase(gw.db_url, role, subject) == at:
            gw.stop(signal.SIGKILL)  # no chance to finish what it was doing
            gw.start()
            killed = True

    def wait_and_kill() -> None:
        deadline = time.time() + PATIENCE
        while not killed:
            kill_when_committed()
            assert time.time() < deadline, f"{who} never reached {at}"
            time.sleep(0.005)

    if at in ("await-m4", "pending"):  # steps before the recipient answers
        wait_and_kill()
    uid, note = notice_for(orgs, "bob@b.test", subject)
    move(imap, "bob@b.test", uid, "Certified.Accept")
    wait_and_kill()
    _, rec = wait_mail(imap, "alice@a.test", subject_starts("Receipt:", subject))
    wait_mail(imap, "bob@b.test", original(marker))
    res = orgs.verify(attachment(rec, "vnd.tcms.evidence+json"), f"{marker}.json")
    assert res.returncode == 0, res.stdout + res.stderr
    settled(str(note["TCMS-Notice"]), orgs.a, orgs.b)
    assert count(orgs, "bob@b.test", original(marker)) == 1
    assert count(orgs, "bob@b.test", subject_starts("Certified mail from", subject)) <= 1
    assert count(orgs, "alice@a.test", subject_starts("Receipt:", subject)) == 1
    assert count(orgs, "alice@a.test", subject_starts("Sent for certification", subject)) == 1
    no_protocol_mail_left(orgs, "alice@a.test", "bob@b.test")


def test_a_20_mb_attachment(orgs: Orgs) -> None:
    import email.policy
    from email.message import EmailMessage

    imap = orgs.proxy
    blob = os.urandom(20 * 1024 * 1024)
    msg = EmailMessage()
    msg["From"], msg["To"] = "Alice <alice@a.test>", "Bob <bob@b.test>"
    msg["Subject"], msg["X-Marker"] = "[certified] Big drawings", "big-8"
    msg.set_content("The drawings are attached.\n")
    msg.add_attachment(blob, maintype="application", subtype="octet-stream",
                       filename="drawings.bin")
    sent = msg.as_bytes(policy=email.policy.SMTP)  # CRLF, as mail clients send it
    t0 = time.time()
    send(orgs, sent, ["bob@b.test"])
    uid, note = notice_for(orgs, "bob@b.test", "Big drawings")
    assert f"{len(sent) - len(b'[certified] ')} bytes" in text_of(note)
    move(imap, "bob@b.test", uid, "Certified.Accept")
    _, got = wait_mail(imap, "bob@b.test", original("big-8"))
    parts = [p for p in parse(got).walk() if p.get_filename() == "drawings.bin"]
    assert len(parts) == 1 and parts[0].get_payload(decode=True) == blob
    _, rec = wait_mail(imap, "alice@a.test", subject_starts("Receipt:", "Big drawings"))
    # the receipt stays small: its bundle leaves c out and says where the complete one is
    assert len(rec) < 1024 * 1024
    tx = query(orgs.a.db_url, "SELECT tx FROM runs WHERE subject = ? AND role = ?",
               "Big drawings", "sender")[0][0]
    assert f"tcms tx export {tx}" in text_of(parse(rec))
    mailed = orgs.verify(attachment(rec, "vnd.tcms.evidence+json"), "big-8-mailed.json")
    assert mailed.returncode != 0 and "tcms tx export" in mailed.stdout + mailed.stderr
    # the bundle exported from the sender's store carries c and proves the reception
    exported = tcms(["tx", "export", str(tx)], orgs.a.env())
    assert exported.returncode == 0, exported.stderr
    res = orgs.verify(exported.stdout.encode(), "big-8.json")
    assert res.returncode == 0 and "(received)" in res.stdout, res.stdout + res.stderr
    print(f"20 MB certified exchange, submission to receipt: {time.time() - t0:.1f} s")


def deliveries(orgs: Orgs, sender: str, rcpt: str) -> int:
    """How many mails Postfix delivered from ``sender`` to ``rcpt`` (its log)."""

    log = orgs.stack.maillog()
    senders = set(re.findall(r"(\w+): from=<" + re.escape(sender) + ">", log))
    return sum(1 for qid in re.findall(r"(\w+): to=<" + re.escape(rcpt) + r">.*status=sent",
                                       log) if qid in senders)


def test_two_replicas_share_postgresql_and_send_nothing_twice(orgs: Orgs) -> None:
    """a.test runs a second gateway on the same PostgreSQL database: both take
    submissions, both scan alice's mailbox, both drain the one outbox."""
    imap = orgs.proxy
    replica = orgs.a.replica("replica").start()
    try:
        before = deliveries(orgs, "tcms-gateway@a.test", "tcms-gateway@b.test")
        n = 4
        for i in range(n):
            gw = orgs.a if i % 2 == 0 else replica
            with gw.smtp("alice@a.test") as s:
                s.sendmail("alice@a.test", ["dave@b.test"],
                           certified(f"[certified] Replicated {i}", f"replica-{i}",
                                     to="dave@b.test"))
        txs = []
        for i in range(n):
            uid, note = notice_for(orgs, "dave@b.test", f"Replicated {i}")
            txs.append(str(note["TCMS-Notice"]))
            move(imap, "dave@b.test", uid, "Certified.Accept")
        for i in range(n):
            wait_mail(imap, "alice@a.test", subject_starts("Receipt:", f"Replicated {i}"))
            wait_mail(imap, "dave@b.test", original(f"replica-{i}"))
        for tx in txs:
            settled(tx, orgs.a, orgs.b)
        for i in range(n):
            assert count(orgs, "dave@b.test", original(f"replica-{i}")) == 1
            assert count(orgs, "alice@a.test", subject_starts("Receipt:",
                                                              f"Replicated {i}")) == 1
            assert count(orgs, "alice@a.test", subject_starts(
                "Sent for certification", f"Replicated {i}")) == 1
        # exactly m3 and m5 per exchange went from alice's gateway to dave's (dave's has
        # handled them all; Postfix logs each delivery as it ends)
        deadline = time.time() + PATIENCE
        while (deliveries(orgs, "tcms-gateway@a.test", "tcms-gateway@b.test") - before
               < 2 * n and time.time() < deadline):
            time.sleep(0.1)
        assert deliveries(orgs, "tcms-gateway@a.test", "tcms-gateway@b.test") - before == 2 * n
        assert "protocol worker started" in replica.log_text()
    finally:
        replica.stop()


def _sender_state(orgs: Orgs, subject: str) -> tuple[str, bytes]:
    """(tx, stored state) of a.test's sender run with this subject."""
    import asyncio

    async def look() -> tuple[str, bytes]:
        store = orgs.a.store()
        try:
            for r in await store.list_runs(owner="alice@a.test"):
                if r.role == "sender" and r.subject == subject:
                    return r.tx, r.state
            raise AssertionError(f"no sender run {subject!r}")
        finally:
            await store.close()

    return asyncio.run(look())


def test_malformed_forged_and_replayed_protocol_mail(orgs: Orgs) -> None:
    """Protocol mail that is malformed or forged, sent straight to the MTA, is rejected by
    the intake with its named check (kept for the administrator) and changes nothing; a
    replay is consumed as a repeat."""
    from gateway import mailformat
    from tcms.identity import Identity
    from tcms.protocol import checks
    from tcms.protocol.messages import Core
    from tcms.protocol.sender import SenderState
    from tcms.protocol.state import load_state

    imap = orgs.proxy
    mta = orgs.stack.smtp_port
    intake = "tcms-gateway@a.test"
    # 1. malformed: claims to be m3, carries garbage
    junk = (b"From: mallory@evil.test\r\nTo: tcms-gateway@a.test\r\nSubject: junk\r\n"
            b"TCMS-Message: m4\r\nTCMS-Transaction: " + b"ab" * 16 + b"\r\n\r\nnot cbor\r\n")
    with smtplib.SMTP("127.0.0.1", mta, timeout=30) as s:
        s.sendmail("mallory@evil.test", [intake], junk)
    # 2. forged: an m4 for a live exchange, signed by someone who is not bob
    send(orgs, certified("[certified] Forgery target", "forged-9"), ["bob@b.test"])
    uid, _ = notice_for(orgs, "bob@b.test", "Forgery target")
    tx, state = _sender_state(orgs, "Forgery target")
    st = load_state(SenderState, state)
    assert st.eoo is not None
    mallory = Identity.generate("bob@b.test")  # bob's name, not bob's key
    forged = checks.sign_m4(mallory, Core.decode(st.core), st.eoo).encode()
    mail = mailformat.build(forged, sender="bob@b.test", recipient=intake, tx=tx,
                            domain="b.test", description="forged")
    with smtplib.SMTP("127.0.0.1", mta, timeout=30) as s:
        s.sendmail("bob@b.test", [intake], mail)
    status, detail = inbound_outcome(orgs.a.db_url, tx)
    assert status == "rejected" and "m4.sig" in detail, detail
    assert _sender_state(orgs, "Forgery target")[1] == state  # nothing changed
    junk_rows = query(orgs.a.db_url, "SELECT status, detail FROM inbound WHERE tx = ?",
                      "ab" * 16)
    assert junk_rows and junk_rows[0][0] == "rejected", junk_rows
    # the real exchange is untouched: bob accepts, both sides finish
    move(imap, "bob@b.test", uid, "Certified.Accept")
    _, rec = wait_mail(imap, "alice@a.test", subject_starts("Receipt:", "Forgery target"))
    wait_mail(imap, "bob@b.test", original("forged-9"))
    # 3. replayed: bob's genuine m4, sent again after the exchange ended
    done = load_state(SenderState, _sender_state(orgs, "Forgery target")[1])
    assert done.m4 is not None and done.m6 is not None
    replay = mailformat.build(done.m4, sender="bob@b.test", recipient=intake, tx=tx,
                              domain="b.test", description="replay")
    before = len(query(orgs.a.db_url, "SELECT id FROM inbound WHERE tx = ?", tx))
    with smtplib.SMTP("127.0.0.1", mta, timeout=30) as s:
        s.sendmail("bob@b.test", [intake], replay)
    deadline = time.time() + PATIENCE
    while len(query(orgs.a.db_url, "SELECT id FROM inbound WHERE tx = ?", tx)) == before:
        assert time.time() < deadline, "the replay never reached the intake"
        time.sleep(0.1)
    status, detail = inbound_outcome(orgs.a.db_url, tx)
    assert status == "done" and "m4 again" in detail, detail
    no_protocol_mail_left(orgs, "alice@a.test", "bob@b.test")
    assert count(orgs, "alice@a.test", subject_starts("Receipt:", "Forgery target")) == 1
    res = orgs.verify(attachment(rec, "vnd.tcms.evidence+json"), "forged-9.json")
    assert res.returncode == 0 and "(received)" in res.stdout, res.stdout


def test_the_ttp_is_down_when_a_deadline_passes(orgs: Orgs) -> None:
    """R1S while the TSS, TTP and DC are down: the abort is retried until the TTP is back,
    then both sides are told."""
    imap = orgs.proxy
    send(orgs, certified("[certified] While the TTP sleeps", "ttp-down-10"), ["carol@b.test"])
    notice_for(orgs, "carol@b.test", "While the TTP sleeps")
    mark = len(orgs.a.log_text())
    orgs.services.stop()
    try:
        # past the accept deadline alice's gateway tries the abort, cannot reach the TTP,
        # and says it will retry: until then no abort can have been decided
        orgs.a.wait_log("(abort to ttp)", "retrying in", since=mark)
        assert count(orgs, "alice@a.test", subject_starts("Not delivered:",
                                                          "While the TTP sleeps")) == 0
    finally:
        orgs.services.start()
    _, raw = wait_mail(imap, "alice@a.test", subject_starts("Not delivered:",
                                                            "While the TTP sleeps"))
    res = orgs.verify(attachment(raw, "vnd.tcms.evidence+json"), "ttp-down-10.json")
    assert res.returncode == 0 and "(aborted)" in res.stdout, res.stdout + res.stderr
    wait_mail(imap, "carol@b.test", subject_starts("Expired:", "While the TTP sleeps"))


# --- data at rest -------------------------------------------------------------------------


def sealed_mail(subject: str, marker: str, to: str) -> bytes:
    return (f"From: Alice <alice@a.test>\r\nTo: {to}\r\nSubject: [certified] {subject}\r\n"
            f"Message-ID: <{marker}@a.test>\r\nX-Marker: {marker}\r\n\r\n"
            f"Confidential terms, not for the database: {marker}-body\r\n").encode()


async def states(orgs: Orgs, subject: str) -> list[SenderState | ReceiverState]:
    out: list[SenderState | ReceiverState] = []
    for gw in (orgs.a, orgs.b):
        store = gw.store()
        try:
            for r in await store.list_runs(limit=1000):
                if r.subject == subject and r.role == "sender":  # with c, kept apart
                    out.append(dataclasses.replace(load_state(SenderState, r.state), c=(
                        await store.get_payload(r.cid, r.role) or b"")))
                elif r.subject == subject:
                    out.append(load_state(ReceiverState, r.state))
        finally:
            await store.close()
    return out


def secrets_of(found: list[SenderState | ReceiverState], body: bytes) -> dict[str, bytes]:
    out = {"the mail's body": body}
    for i, st in enumerate(found):
        for name in ("k_r", "k_t", "c"):
            value = getattr(st, name, None)
            if value:
                out[f"{name} of run {i}"] = value
    assert any(k.startswith("k_t") for k in out) and any(k.startswith("k_r") for k in out)
    return out


def test_a_copy_of_either_gateways_database_reveals_no_mail(orgs: Orgs) -> None:
    """Issue 11, item 15, through two real gateways.
    Alice certifies two mails: carol has not answered the first (the issue's case: both
    key shares on alice's side), bob accepts the second (the exchange ends, he reads it).
    Neither a.test's pg_dump nor b.test's SQLite files show a body, a key share or c; the
    files are 0600.  Then b.test's data key is rotated while dave's notice waits: after the
    restart dave accepts, the state sealed under the old key opens and is sealed again
    under the new one; `tcms db reencrypt` moves everything to it while the gateway runs."""
    tag = uuid.uuid4().hex[:10]
    accepted, pending, rotated_over = f"Accepted {tag}", f"Pending {tag}", f"Rotated {tag}"
    with orgs.a.smtp("alice@a.test") as s:
        s.sendmail("alice@a.test", ["carol@b.test"], sealed_mail(pending, f"pen-{tag}",
                                                               "carol@b.test"))
        s.sendmail("alice@a.test", ["bob@b.test"], sealed_mail(accepted, f"acc-{tag}",
                                                             "bob@b.test"))
    wait_mail(orgs.proxy, "carol@b.test", subject_starts("Certified mail from", pending))
    found = asyncio.run(states(orgs, pending))
    uid, _ = wait_mail(orgs.proxy, "bob@b.test", subject_starts("Certified mail from",
                                                                accepted))
    move(orgs.proxy, "bob@b.test", uid, "Certified.Accept")
    wait_mail(orgs.proxy, "bob@b.test", lambda m: m["X-Marker"] == f"acc-{tag}")
    _, receipt = wait_mail(orgs.proxy, "alice@a.test", subject_starts("Receipt:", accepted))
    found += asyncio.run(states(orgs, accepted))
    assert len(found) == 4
    a_dump, b_files = pg_dump(orgs.a.db_url), sqlite_bytes(orgs.b.db_url)
    for body in (f"acc-{tag}-body", f"pen-{tag}-body"):
        secrets = secrets_of(found, body.encode())
        assert_nowhere(a_dump, secrets)
        assert_nowhere(b_files, secrets)
    b_db = Path(orgs.b.db_url.split(":///", 1)[1])
    for f in (b_db, Path(f"{b_db}-wal"), Path(f"{b_db}-shm")):
        assert not f.exists() or mode(f) == 0o600, f"{f} has mode {mode(f):o}"
    # the evidence alice received by mail verifies: only the database is sealed
    assert orgs.verify(attachment(receipt, "vnd.tcms.evidence+json"),
                       f"{tag}.json").returncode == 0

    # b.test's key rotates while dave's notice waits; the gateway restarts with it
    b_env = orgs.b.env()
    (first,) = set(key_ids(tcms(["db", "key-usage"], b_env).stdout))
    with orgs.a.smtp("alice@a.test") as s:
        s.sendmail("alice@a.test", ["dave@b.test"], sealed_mail(rotated_over, f"rot-{tag}",
                                                              "dave@b.test"))
    uid, _ = wait_mail(orgs.proxy, "dave@b.test", subject_starts("Certified mail from",
                                                                 rotated_over))
    rotated = tcms(["keys", "data-key", "rotate"], b_env)
    assert rotated.returncode == 0, rotated.stderr
    second = key_ids(rotated.stdout)[0]
    orgs.b.stop(signal.SIGTERM)
    orgs.b.start()
    move(orgs.proxy, "dave@b.test", uid, "Certified.Accept")  # a state sealed under key 1
    wait_mail(orgs.proxy, "dave@b.test", lambda m: m["X-Marker"] == f"rot-{tag}")
    wait_mail(orgs.proxy, "alice@a.test", subject_starts("Receipt:", rotated_over))
    usage = tcms(["db", "key-usage"], b_env).stdout
    assert f"under {second} (current)" in usage.split("runs.state")[1], usage
    assert f"under {first}" in usage, usage  # carol's and bob's runs, not touched since
    again = tcms(["db", "reencrypt"], b_env)
    assert again.returncode == 0, again.stderr
    assert f"under {first}" not in again.stdout and "in clear" not in again.stdout
    # without the passphrase the gateway's state cannot be read, and the error says why
    tx = query(orgs.b.db_url, "SELECT tx FROM runs WHERE subject = ?", rotated_over)[0][0]
    no_key = {k: v for k, v in b_env.items() if k != "TCMS_KEYS__PASSPHRASE"}
    res = tcms(["tx", "export", str(tx)], no_key)
    assert res.returncode == 1 and "DataKeyMissing" in res.stderr, res.stderr
    res = tcms(["tx", "export", str(tx)], b_env)
    assert res.returncode == 0 and '"holder": "receiver"' in res.stdout, res.stderr


def test_no_secret_reaches_a_log(orgs: Orgs) -> None:
    """Users' passwords (right and wrong ones), the IMAP master password and the key
    passphrase appear in no gateway or service log.  Whatever ran before, this test drives
    each path that handles one itself: the services and gateways started with the
    passphrase, SMTP AUTH, IMAP logins through the proxy (which logs in to Dovecot as the
    master user), the answer check and the delivery (master user again)."""
    import imaplib

    from gateways import USERS
    from mailstack import MASTER
    from services import PASSPHRASE

    wrong = "not-alices-password-7f3a"
    with orgs.a.connect() as s, pytest.raises(smtplib.SMTPAuthenticationError):
        s.login("alice@a.test", wrong)
    with (imaplib.IMAP4_SSL("127.0.0.1", orgs.b.imaps, ssl_context=orgs.b.tls,
                            timeout=30) as imap, pytest.raises(imaplib.IMAP4.error)):
        imap.login("bob@b.test", wrong)
    send(orgs, certified("[certified] Log check", "log-11"), ["bob@b.test"])
    uid, _ = notice_for(orgs, "bob@b.test", "Log check")
    move(orgs.proxy, "bob@b.test", uid, "Certified.Accept")
    wait_mail(orgs.proxy, "bob@b.test", original("log-11"))
    wait_mail(orgs.proxy, "alice@a.test", subject_starts("Receipt:", "Log check"))
    logs = orgs.a.log_text() + orgs.b.log_text() + orgs.services.log_text()
    assert "AUTH ok for alice@a.test" in logs  # the logs are the real ones
    assert "AUTH failed" in logs and "accepted it" in logs
    for secret in [*USERS.values(), wrong, MASTER[1], PASSPHRASE]:
        assert secret not in logs
