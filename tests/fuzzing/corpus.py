"""Seed corpora: valid inputs made by the project's own code.

Real exchanges between ALICE and BOB (tests/conftest.py) run through the sans-IO machines on
every path (receipt, abort, refusal, resolve by R and by S), with both ciphers; the TTP
answers them; tcms/evidence writes their bundles; gateway/mailformat puts their steps in
mail; tss/ answers time-stamp requests; tsrg encrypts; dc/records signs DC messages.  Built
once per process (``exchanges()`` is cached)."""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import ALICE, BOB, CAROL, DEADLINES, T0, TRUST, TSA, TTP, known, stamp
from services import DC

from dc.records import GatewayRecord, KeyRecord, Publish, Revoke
from gateway import mailformat
from tcms import codec, evidence
from tcms.crypto import sign
from tcms.identity import Identity
from tcms.protocol import ttp as ttp_role
from tcms.protocol.events import Accept, Action, Received, Refuse, Send, Tick, TimestampReply
from tcms.protocol.messages import M3, Deadlines, Description, plaintext
from tcms.protocol.receiver import Receiver, ReceiverState
from tcms.protocol.sender import Sender, SenderState
from tcms.protocol.ttpmessages import BadEscrow
from tcms.timestamp import make_request, token_from_reply
from tsrg.cipher import TsrgCipher, TsrgSession

ROOT = Path(__file__).resolve().parents[2]
GW_A = Identity.from_seed("gateway@a.test", b"gateway-a" * 4, kind="gateway")
TSRG_KEY = bytes(range(32))
TSRG_AAD = b"fuzz associated data"
M0S = (b"Subject: fuzz\r\n\r\nbody",
       b"From: alice@a.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n" + b"line\r\n" * 40,
       b"")


def _sends(actions: list[Action], kind: str) -> bytes:
    found = [a.data for a in actions if isinstance(a, Send) and a.kind == kind]
    assert len(found) == 1, (kind, actions)
    return found[0]


@dataclass
class Exchanges:
    """Every step of real exchanges, and the machines' states along the way."""

    messages: dict[str, list[bytes]] = field(default_factory=dict)
    senders: dict[str, list[SenderState]] = field(default_factory=dict)
    receivers: dict[str, list[ReceiverState]] = field(default_factory=dict)
    bundles: list[dict[str, Any]] = field(default_factory=list)
    mails: list[bytes] = field(default_factory=list)

    def add(self, kind: str, data: bytes) -> bytes:
        self.messages.setdefault(kind, []).append(data)
        return data

    def sender(self, phase: str, s: Sender) -> None:
        assert s.phase == phase, (phase, s.phase)
        self.senders.setdefault(phase, []).append(s.state)

    def receiver(self, phase: str, r: Receiver) -> None:
        assert r.phase == phase, (phase, r.phase)
        self.receivers.setdefault(phase, []).append(r.state)

    def all(self, *kinds: str) -> list[bytes]:
        return [m for k in kinds for m in self.messages.get(k, [])]


def _start(x: Exchanges, m0: bytes, cipher: str, *, recipient: Identity = BOB,
           deadlines: Deadlines = DEADLINES) -> tuple[Sender, bytes]:
    s, acts = Sender.start(ALICE, TRUST, recipient.party, m0,
                           Description("fuzz " + cipher, len(m0), "<fuzz@a.test>"),
                           deadlines, cipher_alg=cipher)
    m1 = x.add("m1", _sends(acts, "m1"))
    x.sender("stamping", s)
    reply = x.add("ts-reply", stamp(m1, T0))
    x.add("token", token_from_reply(reply))
    m3 = x.add("m3", _sends(s.handle(TimestampReply(reply), T0), "m3"))
    x.sender("await-m4", s)
    return s, m3


def _receipt_path(x: Exchanges, m0: bytes, cipher: str) -> None:
    s, m3 = _start(x, m0, cipher)
    r, _ = Receiver.from_m3(BOB, TRUST, m3, T0 + 1, known)
    x.receiver("pending", r)
    m4 = x.add("m4", _sends(r.handle(Accept(), T0 + 2), "m4"))
    x.receiver("await-m5", r)
    m5 = x.add("m5", _sends(s.handle(Received(m4), T0 + 3), "m5"))
    x.sender("await-m6", s)
    m6 = x.add("m6", _sends(r.handle(Received(m5), T0 + 4), "m6"))
    x.receiver("done", r)
    tsq = x.add("ts-request", _sends(s.handle(Received(m6), T0 + 5), "receipt-stamp"))
    x.sender("done", s)  # with its receipt time stamp still to come
    reply = x.add("receipt-reply", stamp(tsq, T0 + 6, kind="tsq"))
    s.handle(TimestampReply(reply), T0 + 6)
    x.add("token", token_from_reply(reply))
    x.bundles += [evidence.from_sender(s), evidence.from_receiver(r)]
    x.add("payload", plaintext(m0, ALICE.name, BOB.name))


def _abort_paths(x: Exchanges, m0: bytes) -> None:
    s, _ = _start(x, m0, "aes256gcm")
    at = DEADLINES.accept_by + 1
    abort = x.add("abort", _sends(s.handle(Tick(), at), "abort"))
    x.sender("aborting", s)
    _, answer = ttp_role.handle(TTP, TRUST, abort, None, at)
    x.add("aborted", answer)
    s.handle(Received(answer), at)
    x.bundles.append(evidence.from_sender(s))
    # refused: the refusal, then the sender's abort
    s, m3 = _start(x, m0, "tsrg-modern")
    r, _ = Receiver.from_m3(BOB, TRUST, m3, T0 + 1, known)
    refusal = x.add("refusal", _sends(r.handle(Refuse(), T0 + 2), "refusal"))
    x.bundles.append(evidence.from_receiver(r))
    abort = x.add("abort", _sends(s.handle(Received(refusal), T0 + 3), "abort"))
    _, answer = ttp_role.handle(TTP, TRUST, abort, None, T0 + 3)
    x.add("aborted", answer)
    s.handle(Received(answer), T0 + 3)
    x.bundles.append(evidence.from_sender(s))


def _resolve_paths(x: Exchanges, m0: bytes) -> None:
    # R1R: R accepted, m5 never came
    s, m3 = _start(x, m0, "tsrg-modern")
    r, _ = Receiver.from_m3(BOB, TRUST, m3, T0 + 1, known)
    x.add("m4", _sends(r.handle(Accept(), T0 + 2), "m4"))
    at = DEADLINES.m5_by + 1
    req = x.add("resolve", _sends(r.handle(Tick(), at), "resolve"))
    x.receiver("resolving", r)
    _, answer = ttp_role.handle(TTP, TRUST, req, None, at)
    x.add("resolved", answer)
    x.bundles.append(evidence.from_receiver(r))
    r.handle(Received(answer), at)
    x.bundles.append(evidence.from_receiver(r))
    # the TTP declines R1R after resolve_by
    late = DEADLINES.resolve_by + 1
    _, rejected = ttp_role.handle(TTP, TRUST, _sends(r.handle(Tick(), at + 60), "resolve")
                                  if r.phase == "resolving" else req, None, late)
    x.add("rejected", rejected)
    # R2S: S sent m5, m6 never came
    s, m3 = _start(x, m0, "aes256gcm")
    r, _ = Receiver.from_m3(BOB, TRUST, m3, T0 + 1, known)
    m4 = x.add("m4", _sends(r.handle(Accept(), T0 + 2), "m4"))
    x.add("m5", _sends(s.handle(Received(m4), T0 + 3), "m5"))
    at = DEADLINES.m6_by + 1
    req = x.add("resolve", _sends(s.handle(Tick(), at), "resolve"))
    x.sender("resolving", s)
    _, answer = ttp_role.handle(TTP, TRUST, req, None, at)
    x.add("resolved", answer)
    s.handle(Received(answer), at)
    x.bundles.append(evidence.from_sender(s))
    # a bad escrow, as the TTP signs it
    cid = s.cid
    reason = "key wrap does not open"
    x.add("bad-escrow", BadEscrow(cid, reason, at, sign(TTP.sig_key, "BAD-ESCROW", cid,
                                                         reason, at)).encode())


@functools.cache
def exchanges() -> Exchanges:
    x = Exchanges()
    for m0, cipher in zip(M0S, ("tsrg-modern", "aes256gcm", "tsrg-modern"), strict=True):
        _receipt_path(x, m0, cipher)
    _abort_paths(x, M0S[0])
    _resolve_paths(x, M0S[1])
    # to a recipient this gateway does not serve, and a Carol the DC does not know
    _start(x, M0S[0], "aes256gcm", recipient=CAROL)
    txs = {M3.decode(m).cid: M3.decode(m).core.header.tx.hex() for m in x.all("m3")}
    for m in x.all("m3", "m4", "m5", "m6", "refusal"):
        value = codec.decode(m)
        assert isinstance(value, list) and isinstance(value[1], bytes | list)
        tx = (M3.decode(m).core.header.tx.hex() if value[0] == "TCMS1/M3"
              else txs[value[1]])  # type: ignore[index]
        x.mails.append(mailformat.build(m, sender="tcms-gateway@a.test",
                                        recipient="tcms-gateway@b.test", tx=tx,
                                        domain="a.test", description="fuzz"))
    return x


def messages(*kinds: str) -> list[bytes]:
    return exchanges().all(*kinds)


def protocol_messages() -> list[bytes]:
    return [m for ms in exchanges().messages.values() for m in ms
            if m[:1] != b"\x30"]  # every CBOR step, not the DER time stamps


def bundles() -> list[bytes]:
    return [evidence.dumps(b).encode() for b in exchanges().bundles]


def trust_files() -> list[bytes]:
    return [json.dumps(evidence.trust_to_json(TRUST), indent=1).encode(),
            json.dumps(evidence.trust_to_json(TRUST)).encode()]


# --- time stamps ----------------------------------------------------------------------------


def ts_requests() -> list[bytes]:
    out = [make_request(bytes(range(32)))[0],
           make_request(bytes(48), hash_alg="sha384", nonce=7, cert_req=False)[0],
           make_request(bytes(64), hash_alg="sha512", nonce=2**70)[0],
           make_request(bytes(32), policy="2.25.142144126307827040010324908873667743154")[0]]
    return out + messages("ts-request")


def ts_replies() -> list[bytes]:
    now = dt.datetime.fromtimestamp(T0, dt.UTC)
    out = [TSA.stamp(q, now=now, serial=1000 + i).reply for i, q in enumerate(ts_requests())]
    out.append(TSA.rejection("bad_alg", "hash algorithm md5 is not accepted"))
    return out + messages("ts-reply", "receipt-reply")


# --- TSRG -----------------------------------------------------------------------------------


def tsrg_blobs() -> list[bytes]:
    cipher = TsrgCipher()
    return [cipher.encrypt(TSRG_KEY, bytes([i]) * n, TSRG_AAD)
            for i, n in enumerate((0, 1, 249, 300, 4000, 20_000))]


def tsrg_records() -> list[bytes]:
    out = []
    for n in (0, 10, 1000, 9000):
        session = TsrgSession(TSRG_KEY, initiator=True)
        out.append(session.seal(b"r" * n, b"aad"))
    return out


# --- the DC ---------------------------------------------------------------------------------


def dc_requests() -> list[bytes]:
    t = T0
    return [Publish("a.test", ALICE.party, t, t + 86400, t).signed_by(GW_A).encode(),
            Publish("a.test", ALICE.party, t - 10, t + 10, t + 100).signed_by(GW_A).encode(),
            Revoke("a.test", ALICE.name, ALICE.party.fingerprint, "lost", t)
            .signed_by(GW_A).encode()]


def dc_records() -> list[bytes]:
    t = T0
    keys = [KeyRecord(p.party, status, t - 100, t + 86400, 3, t, t + 3600).signed_by(DC)
            .encode() for p, status in ((ALICE, "active"), (BOB, "revoked"),
                                        (ALICE, "superseded"))]
    gateways = [GatewayRecord(d, GW_A.party, f"tcms-gateway@{d}", t, t + 3600)
                .signed_by(DC).encode() for d in ("a.test", "b.test")]
    return keys + gateways


def dc_answers() -> list[bytes]:
    """What the DC client reads: a selector byte (which call, which HTTP status), then the
    answer's body (see targets.dc_client)."""
    records = dc_records()
    return ([b"\x00" + r for r in records[:3]] + [b"\x01" + r for r in records[3:]]
            + [b"\x02" + json.dumps({"address": ALICE.name, "version": 4,
                                     "fingerprint": ALICE.party.fingerprint}).encode(),
               b"\x03" + b'{"address": "alice@a.test", "status": "revoked"}',
               b"\x12" + b'{"error": "gateway.sig", "reason": "signature does not verify"}',
               b"\x20" + b'{"error": "unknown", "reason": "no keys"}'])


# --- configuration --------------------------------------------------------------------------


def config_files() -> list[bytes]:
    example = (ROOT / "config" / "tcms.example.toml").read_bytes()
    small = (b'[gateway]\ndomains = ["a.test", "b.test"]\nmax_recipients = 50\n'
             b'intake_clients = ["127.0.0.1", "::1"]\npoll_interval = 0.5\n'
             b'[protocol]\naccept_window = "2d"\nresolve_window = 86400\n'
             b'[ttp]\ndispute_per_minute = 1.5\n[logging]\nlevel = "debug"\n')
    return [example, small, b""]


def env_files() -> list[bytes]:
    return [b'TCMS_GATEWAY__DOMAINS=["a.test","b.test"]\nTCMS_PROTOCOL__ACCEPT_WINDOW=15\n',
            b"TCMS_PROTOCOL__M5_WINDOW=10m\nTCMS_PROTOCOL__RESOLVE_WINDOW=3d\n"
            b"TCMS_GATEWAY__POLL_INTERVAL=0.5\nTCMS_GATEWAY__MAX_RECIPIENTS=10\n",
            b'TCMS_GATEWAY__INTAKE_CLIENTS=["10.0.0.1"]\nTCMS_DATABASE__URL=sqlite:///x.db\n'
            b"TCMS_LOGGING__LEVEL=warning\nTCMS_TTP__DISPUTE_BURST=5\n",
            b'TCMS_GATEWAY={"domains": ["c.test"], "tag": "[cm]"}\n'
            b"TCMS_GATEWAY__SUBMISSION=127.0.0.1:2525\n"]


# --- IMAP -----------------------------------------------------------------------------------


def imap_commands() -> list[bytes]:
    return [
        b'a LOGIN "bob@b.test" "bob-password"\r\n',
        b"a1 CAPABILITY\r\nb2 NOOP\r\nc3 ID NIL\r\nd4 STARTTLS\r\n",
        b"a AUTHENTICATE PLAIN AGJvYkBiLnRlc3QAcHc=\r\n",
        b"a LOGIN {10}\r\nbob@b.test {2+}\r\npw\r\n",
        b"s SELECT INBOX\r\nf UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n",
        b'l LIST "" "*"\r\nl2 LSUB "" "%"\r\nst STATUS "TCMS" (MESSAGES)\r\n',
        b"c COPY 1:3 TCMS\r\nm UID MOVE 4 &AMk-t&AOk-\r\nr RENAME TCMS.sub Other\r\n",
        b'ap APPEND INBOX (\\Seen) "23-Nov-2026 10:00:00 +0100" {12+}\r\nSubject: x\r\n\r\n',
        b"ap APPEND Drafts ~{5+}\r\nhello\r\n",
        b"ap APPEND INBOX CATENATE (URL \"/TCMS/;UID=2\")\r\n",
        b"i IDLE\r\nDONE\r\nsr UID SEARCH CHARSET UTF-8 SUBJECT {4+}\r\ncafe\r\n",
        b"s1 NOOP ~{14+}\r\ns2 SELECT TCMS\r\n",
        b"x CREATE \"TCMS/new\"\r\nd DELETE tcms\r\nsub SUBSCRIBE \"INBOX.TCMS\"\r\n",
        b"o LOGOUT\r\n",
    ]


def imap_answers() -> list[bytes]:
    return [b'* LIST (\\HasNoChildren) "." INBOX\r\n',
            b'* LIST (\\HasChildren) "." {4}\r\nTCMS\r\n',
            b'* LSUB () "/" "TCMS/sub"\r\n',
            b"* STATUS TCMS (MESSAGES 2 UIDNEXT 3)\r\n",
            b"* STATUS &AMk-t&AOk- (MESSAGES 1)\r\n",
            b"* CAPABILITY IMAP4rev1 LITERAL+ CATENATE URLAUTH IDLE THREAD=REFS\r\n",
            b"a OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE] Logged in\r\n"]


def mutf7_names() -> list[bytes]:
    return [b"INBOX", b"&AMk-t&AOk-", b"Entw&APw-rfe", b"&-", b"TCMS", b"&ZeVnLIqe-",
            b"A&-B", b"&2D3eAA-"]


# --- submitted mail -------------------------------------------------------------------------


def submitted_mails() -> list[bytes]:
    return [
        b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: [certified] "
        b"contract\r\nMessage-ID: <c1@a.test>\r\nBcc: carol@b.test\r\n\r\nSign it.\r\n",
        b"From: alice@a.test\r\nSubject: =?utf-8?b?W2NlcnRpZmllZF0gw6k=?=\r\n"
        b"Message-ID: <\r\n weird@a.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/"
        b'mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n',
        b"Subject: plain mail\n\nno tag\n",
    ]
