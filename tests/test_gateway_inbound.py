"""The inbound edge over the real stack: protocol mail reaches the gateway through the MTA
(Postfix routes the protocol address to the gateway's LMTP intake), every item is handled
on its own, and what an attacker sends is rejected with its named reason while a genuine
exchange sent right after it completes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import TRUST, one, stamp
from gateways import (
    GatewayProc,
    Orgs,
    attachment,
    inbound_outcome,
    messages,
    move,
    parse,
    query,
    subject_starts,
    tcms,
    wait_mail,
)
from mailstack import PATIENCE
from services import PASSPHRASE

from gateway import mailformat
from tcms.identity import Identity, Party
from tcms.keystore import Keystore
from tcms.protocol.events import TimestampReply
from tcms.protocol.messages import M3, Deadlines, Description
from tcms.protocol.sender import Sender

pytestmark = pytest.mark.slow
T = TypeVar("T")
MALLORY = Identity.from_seed("mallory@evil.test", b"mallory!" * 4)


def bob_party(orgs: Orgs) -> Party:
    return Keystore(orgs.b.workdir / "keys").public("bob@b.test")[1]


def crafted_m3(recipient: Party, sender: Identity = MALLORY, subject: str = "crafted",
               deadlines: Deadlines | None = None) -> bytes:
    """A well-formed m3 from ``sender`` (its own time stamp from a test TSA)."""
    now = int(time.time())
    dl = deadlines or Deadlines(now + 600, now + 700, now + 800, now + 900)
    m0 = b"Subject: crafted\r\n\r\nbody"
    s, acts = Sender.start(sender, TRUST, recipient, m0, Description(subject, len(m0), "<c@x>"),
                           dl)
    acts = s.handle(TimestampReply(stamp(one(acts, "m1"), now)), now)
    return one(acts, "m3")


def with_header(m3: bytes, **changes: object) -> bytes:
    """The m3 with header fields changed (a new tx too, to find it again)."""
    import os

    msg = M3.decode(m3)
    hdr = dataclasses.replace(msg.core.header, tx=os.urandom(16), **changes)  # type: ignore[arg-type]
    core = dataclasses.replace(msg.core, header=hdr)
    return dataclasses.replace(msg, core=core).encode()


def tx_of(m3: bytes) -> str:
    """The tx field of an m3's header, read without checking the rest (a test case's
    header may be malformed on purpose)."""
    from tcms import codec

    fields = codec.decode(m3)
    assert isinstance(fields, list) and isinstance(fields[1], list)
    header = fields[1][1]
    assert isinstance(header, list) and isinstance(header[2], bytes)
    return header[2].hex()


def to_intake(orgs: Orgs, data: bytes, *, tx: str, envelope_to: str = "tcms-gateway@b.test",
              mail_from: str = "mallory@evil.test") -> None:
    """Hand a protocol message to the MTA as an attacker would (no gateway involved)."""
    mail = mailformat.build(data, sender=mail_from, recipient=envelope_to, tx=tx,
                            domain="evil.test", description="crafted")
    with smtplib.SMTP("127.0.0.1", orgs.stack.smtp_port, timeout=30) as s:
        s.sendmail(mail_from, [envelope_to], mail)


def inbound(db_url: str, tx: str) -> tuple[str, str] | None:
    """(status, detail) of the newest inbound item with this transaction id."""
    rows = query(db_url, "SELECT status, detail FROM inbound WHERE tx = ? ORDER BY id DESC",
                 tx)
    return (str(rows[0][0]), str(rows[0][1] or "")) if rows else None


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = PATIENCE) -> T:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def runs_with_tx(db_url: str, tx: str) -> int:
    return len(query(db_url, "SELECT role FROM runs WHERE tx = ?", tx))


def certified(subject: str, marker: str) -> bytes:
    return (f"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{marker}@a.test>\r\nX-Marker: {marker}\r\n\r\nHello Bob.\r\n"
            ).encode()


def exchange_completes(orgs: Orgs, subject: str, marker: str) -> None:
    with orgs.a.smtp("alice@a.test") as s:
        s.sendmail("alice@a.test", ["bob@b.test"], certified(f"[certified] {subject}", marker))
    uid, _ = wait_mail(orgs.proxy, "bob@b.test", subject_starts("Certified mail from", subject))
    move(orgs.proxy, "bob@b.test", uid, "Certified.Accept")
    wait_mail(orgs.proxy, "bob@b.test", lambda m: m["X-Marker"] == marker)
    _, rec = wait_mail(orgs.proxy, "alice@a.test", subject_starts("Receipt:", subject))
    res = orgs.verify(attachment(rec, "vnd.tcms.evidence+json"), f"{marker}.json")
    assert res.returncode == 0 and "(received)" in res.stdout, res.stdout + res.stderr


def test_poison_protocol_mail_is_rejected_by_name_and_a_genuine_exchange_completes(
        orgs: Orgs) -> None:
    bob = bob_party(orgs)
    good = crafted_m3(bob)
    pk = MALLORY.party
    cases: list[tuple[bytes, str]] = [
        (with_header(good, sender=Party("x y", pk.sig_pk, pk.enc_pk)), "not a usable address"),
        (with_header(good, sender=Party("", pk.sig_pk, pk.enc_pk)), "not a usable address"),
        (with_header(good, sender=Party("a\x00b@a.test", pk.sig_pk, pk.enc_pk)),
         "not a usable address"),
        (with_header(good, sender=Party("alice@a.test?format=json", pk.sig_pk, pk.enc_pk)),
         "not a usable address"),
        (with_header(good, deadlines=Deadlines(*[253402300800] * 4)), "year 9999"),
        (with_header(good, deadlines=Deadlines(*[2**63] * 4)), "year 9999"),
        *[(with_header(good, description=Description(f"a{c}b", 10, "<x@y>")),
           "control or line-break") for c in ("\r", "\n", "\v", "\f", "\u2028")],
        (good, "hdr.sender"),  # well formed, but from a sender the DC does not know
    ]
    junk = (b"From: mallory@evil.test\r\nTo: tcms-gateway@b.test\r\nSubject: junk\r\n"
            b"TCMS-Message: m3\r\nTCMS-Transaction: " + b"cd" * 16 + b"\r\n\r\nnot cbor\r\n")
    # past the full reading's bounds (lines the email package may take for delimiters)
    dashes = junk.replace(b"cd" * 16, b"ef" * 16).replace(
        b"not cbor\r\n", b"--x\r\n" * (mailformat.MAX_FULL_PARTS + 1))
    with smtplib.SMTP("127.0.0.1", orgs.stack.smtp_port, timeout=30) as s:
        s.sendmail("mallory@evil.test", ["tcms-gateway@b.test"], junk)
        s.sendmail("mallory@evil.test", ["tcms-gateway@b.test"], dashes)
    for data, _ in cases:
        to_intake(orgs, data, tx=tx_of(data))
    # a genuine exchange for the same user, sent right after: completes
    exchange_completes(orgs, "Right after the poison", "after-poison-1")
    for data, reason in cases:
        tx = tx_of(data)
        status, detail = inbound_outcome(orgs.b.db_url, tx)
        assert status == "rejected" and reason in detail, (status, detail)
        assert runs_with_tx(orgs.b.db_url, tx) == 0  # no run: nothing for bob to see
    def junk_rows() -> list[tuple[object, ...]] | None:
        rows = query(orgs.b.db_url, "SELECT status, detail FROM inbound WHERE status != 'new'"
                     " AND detail LIKE 'mail.format%'")
        return sorted(rows, key=str) if len(rows) >= 2 else None

    assert wait_until("the junk handled", junk_rows) == [
        ("rejected", "mail.format: expected one protocol part, found 0"),
        ("rejected", f"mail.format: more than {mailformat.MAX_FULL_PARTS} MIME parts"
                     " (lines starting with --)")]
    # an administrator sees each rejection with its reason
    out = tcms(["queue", "list", "--kind", "inbound", "--all"], orgs.b.env(), orgs.b.workdir)
    assert out.count(" rejected ") >= len(cases) + 2, out


def test_protocol_mail_whose_headers_the_email_package_cannot_parse_is_judged(
        orgs: Orgs) -> None:
    """Found by the fuzz suite: a ``Message-ID: <)`` (IndexError inside the email package)
    or a To header it reads as a group (AttributeError) made reading the mail raise, so the
    worker tried the item again and again; it is judged by the message it carries."""
    data = crafted_m3(bob_party(orgs))
    tx = tx_of(data)
    mail = mailformat.build(data, sender="mallory@evil.test", recipient="tcms-gateway@b.test",
                            tx=tx, domain="evil.test")
    head, body = mail.split(b"\r\n\r\n", 1)
    lines = [b"Message-ID: <)" if line.startswith(b"Message-ID:") else
             b'To: tcms-Content-Type: multipart/mixed; boundary="==x"gateway@b.test'
             if line.startswith(b"To:") else line for line in head.split(b"\r\n")]
    with smtplib.SMTP("127.0.0.1", orgs.stack.smtp_port, timeout=30) as s:
        s.sendmail("mallory@evil.test", ["tcms-gateway@b.test"],
                   b"\r\n".join(lines) + b"\r\n\r\n" + body)
    status, detail = inbound_outcome(orgs.b.db_url, tx)
    assert status == "rejected" and "hdr.sender" in detail, (status, detail)


def test_a_replayed_m3_cannot_take_the_recipients_exchange(orgs: Orgs) -> None:
    """alice's m3 to bob is captured and replayed, to carol and to the gateway, before
    bob's copy arrives: bob still gets his notice (once), carol none, and it completes."""
    orgs.b.stop()  # bob's gateway is down: the MTA keeps the genuine m3 in its queue
    try:
        with orgs.a.smtp("alice@a.test") as s:
            s.sendmail("alice@a.test", ["bob@b.test"],
                       certified("[certified] Replay target", "replay-2"))
        m3, tx = wait_until("alice's m3 to go out", lambda: _sent_m3(orgs.a))
    finally:
        orgs.b.start()
    to_intake(orgs, m3, tx=tx, mail_from="tcms-gateway@a.test")  # the replay, to the gateway
    mail = mailformat.build(m3, sender="alice@a.test", recipient="carol@b.test", tx=tx,
                            domain="a.test")
    with smtplib.SMTP("127.0.0.1", orgs.stack.smtp_port, timeout=30) as s:
        s.sendmail("alice@a.test", ["carol@b.test"], mail)  # and to carol's mailbox
    first = inbound_outcome(orgs.b.db_url, tx)
    assert first == ("done", f"exchange {tx}: notice for bob@b.test"), first
    subprocess.run(["postqueue", "-c", str(orgs.stack.postfix_dir), "-f"], check=True,
                   timeout=PATIENCE)  # now the genuine copy arrives
    wait_until("the genuine m3 handled",
               lambda: _inbound_count(orgs.b.db_url, tx) >= 2 and
               (inbound(orgs.b.db_url, tx) or ("new",))[0] != "new")
    uid, _ = wait_mail(orgs.proxy, "bob@b.test", subject_starts("Certified mail from",
                                                                "Replay target"))
    move(orgs.proxy, "bob@b.test", uid, "Certified.Accept")
    wait_mail(orgs.proxy, "bob@b.test", lambda m: m["X-Marker"] == "replay-2")
    wait_mail(orgs.proxy, "alice@a.test", subject_starts("Receipt:", "Replay target"))
    notices = [r for _, r in messages(orgs.proxy, "bob@b.test")
               if str(parse(r)["Subject"]).startswith("Certified mail from")
               and "Replay target" in str(parse(r)["Subject"])]
    assert len(notices) <= 1  # the one bob filed into Certified.Accept was consumed
    assert not [r for _, r in messages(orgs.proxy, "carol@b.test")
                if b"Replay target" in r and b"TCMS-Notice:" in r]
    assert runs_with_tx(orgs.b.db_url, tx) == 1


def _inbound_count(db_url: str, tx: str) -> int:
    return len(query(db_url, "SELECT id FROM inbound WHERE tx = ?", tx))


def _sent_m3(gw: GatewayProc) -> tuple[bytes, str] | None:
    async def look() -> tuple[bytes, str] | None:
        store = gw.store()
        try:
            for r in await store.list_runs(owner="alice@a.test"):
                if r.role == "sender" and r.subject == "Replay target":
                    for msg in await store.messages_of(r.cid):
                        if msg.kind == "m3" and msg.sent_at is not None:
                            # queued with c left out; c is the run's payload
                            c = await store.get_payload(r.cid, "sender")
                            assert c and not M3.decode(msg.data).c
                            return dataclasses.replace(M3.decode(msg.data), c=c).encode(), r.tx
            return None
        finally:
            await store.close()

    return asyncio.run(look())


def test_a_notice_filed_through_the_proxy_is_acted_on_at_once(orgs: Orgs) -> None:
    mark = len(orgs.b.log_text())
    exchange_completes(orgs, "Filed through the proxy", "filed-5")
    assert "bob@b.test filed mail into Certified.Accept: looking at their answers now" \
        in orgs.b.log_text()[mark:]


class Dialog:
    """A raw LMTP conversation (replies read line by line, multi-line aware)."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30,
                                             source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        assert self.reply().startswith(b"220")

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"".join(lines)

    def say(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_the_intake_takes_only_protocol_addresses_from_allowed_hosts(orgs: Orgs) -> None:
    mta = Dialog(orgs.b.intake, "127.0.0.1")
    assert mta.say("LHLO test").startswith(b"250")
    assert mta.say("MAIL FROM:<x@evil.test>").startswith(b"250")
    refused = mta.say("RCPT TO:<bob@b.test>")
    assert refused.startswith(b"550") and b"protocol address" in refused
    assert mta.say("RCPT TO:<tcms-gateway@b.test>").startswith(b"250")
    mta.close()
    other = Dialog(orgs.b.intake, "127.0.0.2")  # a host that is not the MTA
    assert other.say("LHLO test").startswith(b"250")
    refused = other.say("MAIL FROM:<x@evil.test>")
    assert refused.startswith(b"550") and b"may not" in refused
    other.close()


def test_thousands_of_users_cost_no_logins(orgs: Orgs, tmp_path: Path) -> None:
    """10,000 enrolled users and one pending exchange: over several passes the worker
    looks at the mailbox of the user with the pending notice and no other; the logins it
    costs (counted at Dovecot) do not grow with the users."""
    keys = orgs.b.workdir / "keys"
    template = json.loads((keys / "dave@b.test.json").read_text())
    sig = Keystore(keys, PASSPHRASE.encode()).load("dave@b.test")
    for i in range(10_000):
        name = f"scale{i:05d}@b.test"
        party = Party(name, sig.party.sig_pk, sig.party.enc_pk)
        (keys / f"{name}.json").write_text(json.dumps({**template, **party.to_json()}))
    try:
        with orgs.a.smtp("alice@a.test") as s:
            s.sendmail("alice@a.test", ["dave@b.test"],
                       certified("[certified] One among many", "scale-4"))
        wait_mail(orgs.proxy, "dave@b.test", subject_starts("Certified mail from",
                                                            "One among many"))
        # from now on the test itself logs in nowhere: every login is the gateways'
        start = len(orgs.stack.dovecot_log())
        passes = wait_until("five passes of dave's answer check",
                            lambda: (n := _answer_checks(orgs.b.db_url, "dave@b.test")) >= 6
                            and n)
        logins = [line.split("user=<", 1)[1].split(">", 1)[0]
                  for line in orgs.stack.dovecot_log()[start:].splitlines() if "Login:" in line]
        at_b = [u for u in logins if u.endswith("@b.test")]
        # none of the 10,000; at most one login per pass for dave (the gateway keeps its
        # session to his mailbox open between passes, so usually none at all)
        assert set(at_b) <= {"dave@b.test"}, set(at_b)
        assert len(at_b) <= int(str(passes)) + 2, (len(at_b), passes)
    finally:
        for path in keys.glob("scale*@b.test.json"):
            path.unlink()


def _answer_checks(db_url: str, owner: str) -> int:
    """How many times the answer check of ``owner`` ran (its updated_at moves each time)."""
    rows = query(db_url, "SELECT updated_at FROM answer_checks WHERE owner = ?", owner)
    if not rows:
        return 0
    _answer_seen.setdefault(owner, set()).add(int(str(rows[0][0])))
    return len(_answer_seen[owner])


_answer_seen: dict[str, set[int]] = {}
