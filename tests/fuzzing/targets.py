"""The entry points that take untrusted bytes, in one table (``ENTRY_POINTS``).

Each entry point names its seed corpus (valid inputs made by the project's own code, see
corpus.py), how to open its target (a callable taking one input; some hold a store or an
event loop), and the exceptions it may raise: the named errors its callers handle.
Anything else raised is a finding.  A target does what the real caller does with the bytes
(the gateway's inbound worker, the TTP's dispute handler, the IMAP proxy's reader, the DC
client...) and, where the code promises more than "no crash", checks it: the IMAP reader
reads the same commands whatever the chunking, a submission's description decodes again.

Inputs that pick a machine state or a DC call carry a selector byte first (seeded with the
right one, so most mutations keep the pairing and reach the checks behind it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from conftest import ALICE, BOB, DATA_KEYS, DEADLINES, T0, TRUST, TSA, TTP, known
from services import DC

from dc import records
from dc.client import DirectoryClient
from dc.records import DirectoryError
from gateway import imappolicy, inbound, mailformat, mutf7, subject, submission
from gateway.context import GatewayContext
from gateway.imapcommand import Command, Event, LimitExceeded, Limits, Policy
from gateway.imappolicy import parse_args
from gateway.imapproxy import AFTER_LOGIN, BEFORE_LOGIN
from gateway.imapwire import CommandReader
from gateway.queue import Queues
from gateway.runs import record
from tcms import boundedjson, codec, evidence
from tcms import config as config_mod
from tcms.cipher import AesGcmCipher, DecryptionError
from tcms.codec import CodecError
from tcms.keystore import Keystore
from tcms.protocol import ttp as ttp_role
from tcms.protocol.checks import ProtocolError
from tcms.protocol.events import Received, TimestampReply
from tcms.protocol.fields import one_line
from tcms.protocol.messages import (
    M1,
    M3,
    M4,
    M5,
    M6,
    Core,
    Description,
    Header,
    MessageError,
    Refusal,
    message_type,
    parse_plaintext,
)
from tcms.protocol.receiver import Receiver
from tcms.protocol.sender import Sender
from tcms.protocol.ttpmessages import AbortRequest, ResolveRequest, decode_ttp_answer
from tcms.store import Store
from tcms.timestamp import TimestampError, token_from_reply, verify_token
from tsrg.cipher import TsrgCipher, TsrgError, TsrgSession
from ttp import filing
from ttp.api import BUNDLE_MAX_DEPTH, BUNDLE_MAX_ITEMS

from . import corpus
from .mutate import Context, Structure, cbor_tree, der_tree, havoc, json_tree, lines

Target = Callable[[bytes], object]


class Harness:
    """An opened target: call it with one input; ``close`` when done."""

    def __init__(self, target: Target, close: Callable[[], None] = lambda: None) -> None:
        self.target = target
        self.close = close

    def __call__(self, data: bytes) -> object:
        return self.target(data)


@dataclass(frozen=True)
class EntryPoint:
    name: str
    doc: str
    seeds: Callable[[], list[bytes]]
    open: Callable[[], Harness]
    expected: tuple[type[BaseException], ...]
    structure: tuple[Structure, ...] = ()
    dictionary: tuple[bytes, ...] = ()
    donors: Callable[[], list[bytes]] | None = None  # CBOR subtrees to splice in
    share: float = 1.0  # relative share of a campaign's inputs
    prefix: int = 0  # selector bytes before the message (see ``pick``)

    def context(self, seeds: list[bytes]) -> Context:
        return Context(seeds, self.dictionary, self.donors() if self.donors else None)


def simple(fn: Target) -> Callable[[], Harness]:
    return lambda: Harness(fn)


def pick(data: bytes, n: int) -> tuple[int, bytes]:
    """The selector byte's choice among ``n``, and the input after it."""
    return (data[0] % n if data else 0), data[1:]


CBOR_WORDS = (*(codec.encode(w) for w in (
    "TCMS1/M1", "TCMS1/M3", "TCMS1/M4", "TCMS1/M5", "TCMS1/M6", "TCMS1/REFUSE",
    "TCMS1/ABORT-REQ", "TCMS1/RESOLVE-REQ", "TCMS1/ABORTED", "TCMS1/RESOLVED",
    "TCMS1/BAD-ESCROW", "TCMS1/REJECTED", "TCMS1/HDR", "TCMS1/CORE", "TCMS1/PAYLOAD",
    "TCMS1/DC-KEY", "TCMS1/DC-GATEWAY", "TCMS1/DC-PUBLISH", "TCMS1/DC-REVOKE")),
    b"\x9f", b"\xbf", b"\xff", b"\x5f", b"\x7f", b"\xc1", b"\xd8\x18", b"\xfb\x7f\xf8" + bytes(6),
    b"\x1b" + b"\xff" * 8, b"\x3b" + b"\xff" * 8, b"\x81", b"\x58\x20", b"\x5a\xff\xff\xff\xff")
DER_WORDS = (b"\x30\x80", b"\x00\x00", b"\x05\x00", b"\x02\x01\x00", b"\x01\x01\xff",
             b"\x04\x00", b"\x03\x02\x07\x80", b"\x0c\x01\xff", b"\x30\x84\xff\xff\xff\xff",
             b"\xa0\x00", b"\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01", b"\x18\x0f")


def protocol(name: str, decode: Target, kinds: tuple[str, ...], doc: str,
             share: float = 1.0) -> EntryPoint:
    return EntryPoint(
        f"protocol.{name}", doc, lambda: corpus.messages(*kinds), simple(decode),
        (MessageError,), (cbor_tree,), CBOR_WORDS, corpus.protocol_messages, share)


# --- the role machines ----------------------------------------------------------------------


def _cid_of(data: bytes) -> bytes | None:
    try:
        value = codec.decode(data)
    except CodecError:
        return None
    return value[1] if isinstance(value, list) and len(value) > 1 and isinstance(
        value[1], bytes) else None


def _paired(states: list[tuple[bytes, Any]], messages: list[bytes]) -> list[bytes]:
    """selector + message for each state and each message of its exchange, and a few
    mismatched pairs."""
    out = []
    for i, (cid, _) in enumerate(states):
        out += [bytes([i]) + m for m in messages if _cid_of(m) == cid]
    out += [bytes([i % len(states)]) + m for i, m in enumerate(messages[:6])]
    return out


def _receiver_states() -> list[tuple[bytes, Any]]:
    x = corpus.exchanges()
    return [(M3.decode(st.m3).cid, st) for phase in ("pending", "await-m5", "resolving",
                                                      "done") for st in x.receivers[phase]]


def _sender_states() -> list[tuple[bytes, Any]]:
    x = corpus.exchanges()
    return [(Core.decode(st.core).cid, st) for phase in ("await-m4", "await-m6", "aborting",
                                                         "resolving", "done")
            for st in x.senders[phase]]


def _stamping_states() -> list[Any]:
    x = corpus.exchanges()
    return x.senders["stamping"] + x.senders["done"]


def receiver_received() -> Harness:
    states = [st for _, st in _receiver_states()]

    def target(data: bytes) -> None:
        i, msg = pick(data, len(states))
        Receiver(BOB, TRUST, states[i]).handle(Received(msg), T0 + 50)
    return Harness(target)


def sender_received() -> Harness:
    states = [st for _, st in _sender_states()]

    def target(data: bytes) -> None:
        i, msg = pick(data, len(states))
        Sender(ALICE, TRUST, states[i]).handle(Received(msg), T0 + 50)
    return Harness(target)


def sender_timestamp() -> Harness:
    states = _stamping_states()

    def target(data: bytes) -> None:
        i, reply = pick(data, len(states))
        Sender(ALICE, TRUST, states[i]).handle(TimestampReply(reply), T0 + 1)
    return Harness(target)


def _timestamp_seeds() -> list[bytes]:
    x = corpus.exchanges()
    n = len(x.senders["stamping"])
    return ([bytes([i]) + r for i, r in enumerate(x.messages["ts-reply"])]
            + [bytes([n + i]) + r for i, r in enumerate(x.messages["receipt-reply"])])


# --- the TTP ------------------------------------------------------------------------------------


def ttp_handle(data: bytes) -> None:
    ttp_role.handle(TTP, TRUST, data, None, DEADLINES.m6_by + 1)


def ttp_dispute(data: bytes) -> None:
    """POST /dispute as ttp/api.py handles it, filed by the exchange's sender with a
    genuine signature over this very body (so a bundle whose core still parses reaches
    ``evidence.verify``)."""
    try:  # the filer's side: what cid to sign (not part of the target)
        cid = Core.decode(base64.b64decode(json.loads(data)["core"])).cid
    except Exception:
        cid = bytes(32)
    filed = filing.parse_headers(filing.filing_headers(ALICE, cid, data, T0))
    bundle = boundedjson.loads(data, max_depth=BUNDLE_MAX_DEPTH, max_items=BUNDLE_MAX_ITEMS)
    filing.check_filing(filed, filing.core_of(bundle), data, T0)
    with contextlib.suppress(evidence.EvidenceInvalid):
        evidence.verify(bundle, TRUST)


# --- evidence and trust files (as `tcms verify` reads them) -------------------------------------


def evidence_text(data: bytes) -> None:
    evidence.verify(evidence.loads(data), TRUST)


def trust_text(data: bytes) -> None:
    evidence.load_trust(data)


# --- the DC ---------------------------------------------------------------------------------


def dc_request(data: bytes) -> None:
    """What the DC does with a gateway's request before it stores anything."""
    req: records.Publish | records.Revoke
    if message_type(data) == "DC-REVOKE":
        req = records.Revoke.decode(data)
    else:
        req = records.Publish.decode(data)
    records.check_gateway_request(req, corpus.GW_A.party.sig_pk, T0)
    if isinstance(req, records.Revoke):
        records.checked_address(req.address)


def dc_record(data: bytes) -> None:
    if message_type(data) == "DC-GATEWAY":
        records.verify_gateway_record(data, DC.party.sig_pk, "a.test", T0)
    else:
        records.verify_record(data, DC.party.sig_pk, ALICE.name, T0)


STATUSES = (200, 400, 404, 500, 403, 200, 200, 200)


def dc_client() -> Harness:
    """The gateway's DC client against a DC that answers the input: the selector's low
    bits pick the call, its high bits the HTTP status."""
    runner = asyncio.Runner()
    answer: list[tuple[int, bytes]] = [(200, b"")]
    client = DirectoryClient("http://dc.test", DC.party, clock=lambda: T0)

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(answer[0][0], content=answer[0][1])

    async def swap() -> None:
        await client.aclose()
        client._http = httpx.AsyncClient(transport=httpx.MockTransport(respond))

    runner.run(swap())
    calls: list[Callable[[], Any]] = [
        lambda: client.lookup(ALICE.name), lambda: client.gateway_of("a.test"),
        lambda: client.publish(corpus.GW_A, ALICE.party),
        lambda: client.revoke(corpus.GW_A, ALICE.name, ALICE.party.fingerprint, "lost"),
        lambda: client.usable_party(ALICE.name)]

    def target(data: bytes) -> None:
        sel = data[0] if data else 0
        answer[0] = (STATUSES[sel >> 5], data[1:])
        runner.run(calls[(sel & 0x1F) % len(calls)]())

    def close() -> None:
        runner.run(client.aclose())
        runner.close()
    return Harness(target, close)


# --- protocol mail --------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _parsed(raw: bytes) -> mailformat.ProtocolMail | None:
    try:
        return mailformat.parse(raw)
    except mailformat.MailFormatError:
        return None


def mail_inner(r: random.Random, raw: bytes, ctx: Context) -> bytes | None:
    """The protocol message inside a mail mutated as CBOR (the mail around it intact)."""
    pm = _parsed(raw)
    if pm is None:
        return None
    new = cbor_tree(r, pm.data, ctx) if r.random() < 0.7 else None
    new = new if new is not None else havoc(r, pm.data, ctx)
    old = base64.encodebytes(pm.data).replace(b"\n", b"\r\n")
    if old not in raw:
        return None
    return raw.replace(old, base64.encodebytes(new).replace(b"\n", b"\r\n"), 1)


MAIL_WORDS = (b"\r\n", b"\r\n\r\n", b"\n", b"TCMS-Message: m4", b"TCMS-Message: refusal",
              b"TCMS-Transaction: 00112233445566778899aabbccddeeff",
              b"Content-Transfer-Encoding: quoted-printable", b"Content-Transfer-Encoding: 7bit",
              b"Content-Type: application/vnd.tcms.protocol+cbor", b"Content-Type: multipart/"
              b'mixed; boundary="==x"', b"--==x", b"=?utf-8?b?", b"?=", b"==", b"\x00",
              b": ", b" ", b"\t", b"\xff", b"MIME-Version: 1.0", b"From: <>", b"To: a@b@c")


def mail_parse(data: bytes) -> None:
    mailformat.parse(data)


def mail_hints(data: bytes) -> None:
    mailformat.hints(data)
    mailformat.is_protocol_mail(data)


class StubDC:
    """The DC as the inbound handler asks it: the keys tests/conftest.py publishes."""

    async def usable_party(self, name: str) -> Any:
        return known(name)


class InboundHarness:
    """gateway/inbound.py ``handle`` with a real SQLite store, holding Alice's sender runs
    (waiting for m4, m6) and Bob's receiver runs (waiting for m5); the database is put back
    every ``RESET`` inputs so that the runs stay where the seeds apply."""

    RESET = 50

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tcms-fuzz-inbound-"))
        self.runner = asyncio.Runner()
        self.keystore = Keystore(self.dir / "keys", b"fuzz-passphrase")
        for ident in (ALICE, BOB, corpus.GW_A):
            self.keystore.save(ident)
        self.template = self.dir / "template.db"
        self.runner.run(self._prepare())
        self.count = 0
        self.store: Store | None = None
        self._open()

    async def _prepare(self) -> None:
        store = Store(f"sqlite:///{self.template}", data_keys=DATA_KEYS)
        await store.upgrade()
        x = corpus.exchanges()
        waiting_m6 = x.senders["await-m6"][:1]  # one run waits for m6, the others for m4
        skip = {Core.decode(st.core).cid for st in waiting_m6}
        for st in waiting_m6 + x.senders["await-m4"]:
            s = Sender(ALICE, TRUST, st)
            if s.core.header.recipient == BOB.party and (s.phase == "await-m6"
                                                         or s.cid not in skip):
                await store.save_run(record(s, "sender", ALICE.name, BOB.name), now=T0)
        for rst in x.receivers["await-m5"]:
            r = Receiver(BOB, TRUST, rst)
            await store.save_run(record(r, "receiver", BOB.name, ALICE.name), now=T0)
        await store.close()

    def _open(self) -> None:
        if self.store is not None:
            self.runner.run(self.store.close())
        live = self.dir / "live.db"
        shutil.copyfile(self.template, live)
        self.store = Store(f"sqlite:///{live}", data_keys=DATA_KEYS)
        settings = config_mod.Settings(
            gateway=config_mod.GatewayConfig(domains=["a.test", "b.test"]))
        self.ctx = GatewayContext(settings, self.store, self.keystore, corpus.GW_A, TRUST,
                                  dc=StubDC(), upstream=None, imap=None,  # type: ignore[arg-type]
                                  http=None, queues=Queues(self.store),  # type: ignore[arg-type]
                                  writer=None)  # type: ignore[arg-type]

    def __call__(self, data: bytes) -> object:
        self.count += 1
        if self.count % self.RESET == 0:
            self._open()
        outcome = self.runner.run(inbound.handle(self.ctx, data, T0 + 10))
        assert outcome.status in ("done", "rejected"), outcome
        return outcome

    def close(self) -> None:
        if self.store is not None:
            self.runner.run(self.store.close())
        self.runner.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _open_inbound() -> Harness:
    harness = InboundHarness()
    return Harness(harness, harness.close)


# --- time stamps ----------------------------------------------------------------------------


def tss_stamp(data: bytes) -> None:
    """The TSS's answer to any request: a reply, never an exception."""
    import datetime as dt

    TSA.stamp(data, now=dt.datetime.fromtimestamp(T0, dt.UTC), serial=7)


def ts_reply(data: bytes) -> None:
    token_from_reply(data)


def _imprint(token: bytes) -> bytes:
    """The imprint the token names (so that verification goes past that check)."""
    try:
        from asn1crypto import cms, tsp

        tst = tsp.TSTInfo.load(cms.ContentInfo.load(token)["content"]["encap_content_info"]
                               ["content"].contents)
        value = tst["message_imprint"]["hashed_message"].native
        return value if isinstance(value, bytes) else bytes(32)
    except Exception:
        return bytes(32)


def ts_token(data: bytes) -> None:
    verify_token(data, _imprint(data), TRUST.tsa_ca)


# --- ciphers --------------------------------------------------------------------------------


def tsrg_decrypt(data: bytes) -> None:
    TsrgCipher().decrypt(corpus.TSRG_KEY, data, corpus.TSRG_AAD)


def tsrg_session(data: bytes) -> None:
    TsrgSession(corpus.TSRG_KEY, initiator=False).open(data, b"aad")


def aes_seeds() -> list[bytes]:
    return [AesGcmCipher().encrypt(corpus.TSRG_KEY, b"p" * n, corpus.TSRG_AAD)
            for n in (0, 1, 100, 5000)]


def aes_decrypt(data: bytes) -> None:
    AesGcmCipher().decrypt(corpus.TSRG_KEY, data, corpus.TSRG_AAD)


def payload(data: bytes) -> None:
    parse_plaintext(data, ALICE.name, BOB.name)


# --- configuration --------------------------------------------------------------------------


class ConfigHarness:
    """``tcms.config.load``: a TOML file's text, or environment values (``NAME=value``
    lines; only TCMS_ names are set, and every one is removed again afterwards)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.dir = Path(tempfile.mkdtemp(prefix="tcms-fuzz-config-"))
        self.file = self.dir / "tcms.toml"
        self.file.write_bytes(b"")
        self.saved = {k: v for k, v in os.environ.items() if k.upper().startswith("TCMS_")}
        for k in self.saved:  # the test run's own TCMS_ variables are not the input's
            del os.environ[k]

    def __call__(self, data: bytes) -> object:
        if self.mode == "toml":
            self.file.write_bytes(data)
            return config_mod.load(self.file)
        names = []
        try:
            for line in data.split(b"\n"):
                name, sep, value = line.partition(b"=")
                text = name.decode("utf-8", "surrogateescape").strip()
                if not sep or not text.upper().startswith("TCMS_") or b"\0" in line:
                    continue
                os.environ[text] = value.decode("utf-8", "surrogateescape")
                names.append(text)
            return config_mod.load(self.file)
        finally:
            for n in names:
                os.environ.pop(n, None)

    def close(self) -> None:
        os.environ.update(self.saved)
        shutil.rmtree(self.dir, ignore_errors=True)


TOML_WORDS = (b"[", b"]", b"[[", b"]]", b"{", b"}", b'"', b"'''", b'"""', b"=", b"\n",
              b"[gateway]", b"[keys]", b"domains = ", b"tls_cert = ", b'"a.test"', b"1e999",
              b"nan", b"inf", b"-0", b"0x7fffffffffffffff", b"99999999999999999999",
              b"1979-05-27T07:32:00Z", b"true", b"\\u0000", b"\x00", b"\xff", b"#",
              b"[[gateway]]", b"a.b.c = 1", b"listen = ", b'"127.0.0.1:99999"')
ENV_WORDS = (b"TCMS_GATEWAY__DOMAINS=", b"TCMS_GATEWAY=", b"TCMS_PROTOCOL__ACCEPT_WINDOW=",
             b"TCMS_KEYS__DIR=", b"TCMS_GATEWAY__TLS_CERT=", b"TCMS_TTP__LISTEN=",
             b"TCMS_GATEWAY__INTAKE_CLIENTS=", b"TCMS_LOGGING=", b"TCMS_PROTOCOL=",
             b"TCMS_DC__UPDATES_DIR=", b"[", b"{", b'"', b"]", b"}", b"null", b"1e999",
             b"\n", b"=", b"__", b"\xff")


# --- IMAP -----------------------------------------------------------------------------------

FOLDER = imappolicy.HiddenFolder("TCMS", substitute="Gone-fuzz")
MAX_EVENTS = 5_000


def _read(policy: Policy, limits: Limits, chunks: list[bytes]) -> tuple[list[Event], bool]:
    reader = CommandReader(policy, limits)
    events: list[Event] = []
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while len(events) < MAX_EVENTS and (event := reader.next()) is not None:
                events.append(event)
                if isinstance(event, Command) and event.name in (b"IDLE", b"AUTHENTICATE"):
                    reader.expect_line()
    except LimitExceeded:
        return events, True
    return events, False


def imap_commands(data: bytes) -> None:
    """The proxy's reader before and after login, fed at once and in small pieces (the
    same commands either way), and every command vetted as the proxy does."""
    step = 7 if len(data) < 65536 else 4099  # odd sizes: pieces end anywhere in a token
    pieces = [data[i:i + step] for i in range(0, len(data), step)]
    for policy, limits in ((imappolicy.before_login, BEFORE_LOGIN),
                           (imappolicy.after_login, AFTER_LOGIN)):
        whole = _read(policy, limits, [data])
        chunked = _read(policy, limits, pieces)
        assert whole == chunked, ("the reader's events depend on how the bytes arrive",
                                  whole[0][:3], chunked[0][:3])
        for event in whole[0]:
            if isinstance(event, Command) and policy is imappolicy.after_login:
                imappolicy.vet(event, FOLDER)


def imap_answer(data: bytes) -> None:
    """An upstream answer line as the proxy reads it: hidden-folder filter, restore and
    capability list (``parse_args`` may refuse a line as a ValueError)."""
    FOLDER.listed(data)
    FOLDER.restore(data)
    imappolicy.keep_capabilities(data)
    with contextlib.suppress(ValueError):
        parse_args(data[2:])


def mailbox_name(data: bytes) -> None:
    """A mailbox name a client sends: does it name the hidden folder, and its rewrite."""
    with contextlib.suppress(ValueError):
        mutf7.decode(data)
    if FOLDER.names(data):
        FOLDER.rewrite(data)


IMAP_WORDS = (b"{0}\r\n", b"{0+}\r\n", b"{5}\r\n", b"~{3+}\r\n", b"{99999999999999999999}",
              b"\r\n", b"\r", b"\n", b'"', b"\\", b"(", b")", b" ", b"*", b"%", b"&", b"-",
              b"&AGE-", b"&-", b"LOGIN ", b"APPEND ", b"SELECT ", b"UID ", b"TCMS", b"tcms",
              b"INBOX.TCMS", b"TCMS/x", b"CATENATE", b"URL", b"IDLE", b"DONE", b"STARTTLS",
              b"AUTHENTICATE ", b"\x00", b"\xff", b"BODY[", b"]")


# --- submitted mail -------------------------------------------------------------------------


def submitted(data: bytes) -> None:
    """A certified submission as the gateway reads it: at the door (handle_DATA) and when
    the worker starts its exchanges; the description it makes must decode at the receiver."""
    import email.parser
    import email.policy

    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)
    subj = str(headers.get("Subject", ""))
    subject.has_tag(subj, "[certified]")
    submission.uncertifiable(ALICE.name, [BOB.name], subj)
    message_id = submission.message_id_of(headers)
    m0 = subject.strip_tag(data, "[certified]")
    desc = Description(one_line(subject.without_tag(subject.subject_of(data), "[certified]")),
                       len(m0), one_line(message_id))
    hdr = Header(bytes(16), ALICE.party, BOB.party, TTP.party, "tss", "aes256gcm", DEADLINES,
                 desc)
    Header.from_value(hdr.to_value())


# --- the table ------------------------------------------------------------------------------


def _cores() -> list[bytes]:
    return [M3.decode(m).core.encoded for m in corpus.messages("m3")]


def _inbound_seeds() -> list[bytes]:
    return corpus.exchanges().mails


ENTRY_POINTS: tuple[EntryPoint, ...] = (
    protocol("message_type", message_type, ("m1", "m3", "m4", "m5", "m6", "refusal",
                                            "abort", "resolve", "aborted", "resolved"),
             "the type tag of any protocol message", 0.5),
    protocol("M1", M1.decode, ("m1",), "S -> TSS: m1"),
    protocol("M3", M3.decode, ("m3",), "S -> R: m3 (core, c, escrows, token, EOO)", 1.5),
    protocol("M4", M4.decode, ("m4",), "R -> S: m4"),
    protocol("M5", M5.decode, ("m5",), "S -> R: m5"),
    protocol("M6", M6.decode, ("m6",), "R -> S: m6"),
    protocol("Refusal", Refusal.decode, ("refusal",), "R -> S: the refusal"),
    protocol("AbortRequest", AbortRequest.decode, ("abort",), "S -> TTP: abort"),
    protocol("ResolveRequest", ResolveRequest.decode, ("resolve",), "R or S -> TTP: resolve"),
    protocol("ttp_answer", decode_ttp_answer, ("aborted", "resolved", "bad-escrow",
                                               "rejected"), "TTP -> S, R: its answers"),
    EntryPoint("protocol.Core", "the core of a bundle or a dispute", _cores,
               simple(Core.decode), (MessageError,), (cbor_tree,), CBOR_WORDS,
               corpus.protocol_messages),
    EntryPoint("protocol.payload", "what c decrypts to (m0, h(m0), ID_S, ID_R)",
               lambda: corpus.messages("payload"), simple(payload), (MessageError,),
               (cbor_tree,), CBOR_WORDS, corpus.protocol_messages, 0.5),
    EntryPoint("codec.decode", "the canonical CBOR codec under every message",
               corpus.protocol_messages, simple(codec.decode), (CodecError,), (cbor_tree,),
               CBOR_WORDS, None, 0.5),
    EntryPoint("receiver.from_m3", "R's machine started from an m3 (Bob, T0 + 1)",
               lambda: corpus.messages("m3"),
               simple(lambda d: Receiver.from_m3(BOB, TRUST, d, T0 + 1, known)),
               (MessageError,), (cbor_tree,), CBOR_WORDS, corpus.protocol_messages, 2.0),
    EntryPoint("receiver.received", "messages to R's machine in every phase",
               lambda: _paired(_receiver_states(), corpus.messages(
                   "m5", "resolved", "aborted", "bad-escrow", "rejected", "m3")),
               receiver_received, (), (cbor_tree,), CBOR_WORDS, corpus.protocol_messages,
               2.0, prefix=1),
    EntryPoint("sender.received", "messages to S's machine in every phase",
               lambda: _paired(_sender_states(), corpus.messages(
                   "m4", "refusal", "m6", "aborted", "resolved", "bad-escrow", "rejected")),
               sender_received, (), (cbor_tree,), CBOR_WORDS, corpus.protocol_messages, 2.0,
               prefix=1),
    EntryPoint("sender.timestamp", "time-stamp replies to S's machine (m2, the receipt's)",
               _timestamp_seeds, sender_timestamp, (), (der_tree,), DER_WORDS, None, 1.0,
               prefix=1),
    EntryPoint("ttp.handle", "the TTP's parse, check and decision of a request",
               lambda: corpus.messages("abort", "resolve"), simple(ttp_handle),
               (MessageError, ProtocolError), (cbor_tree,), CBOR_WORDS,
               corpus.protocol_messages, 1.5),
    EntryPoint("ttp.dispute", "POST /dispute: a signed filing of a bundle",
               corpus.bundles, simple(ttp_dispute),
               (boundedjson.JsonRefused, filing.FilingRefused), (json_tree,),
               (b'"', b"[", b"{", b"]", b"}", b",", b"null", b"\\u0000", b"\\ud800"),
               corpus.protocol_messages, 1.0),
    EntryPoint("evidence.bundle", "`tcms verify`: an evidence bundle's text",
               corpus.bundles, simple(evidence_text),
               (evidence.EvidenceInvalid, evidence.BundleUnreadable),
               (json_tree,), (b'"', b"[", b"{", b"]", b"}", b",", b"null", b"\\u0000",
                              b'"core": null, '), corpus.protocol_messages, 1.5),
    EntryPoint("evidence.trust", "`tcms verify --trust`: a trust file's text",
               corpus.trust_files, simple(trust_text), (evidence.TrustFileError,), (json_tree,),
               (b'"', b"[", b"{", b"]", b"}", b"-----BEGIN CERTIFICATE-----", b"null"),
               None, 0.5),
    EntryPoint("dc.request", "DC-PUBLISH and DC-REVOKE as the DC checks them",
               corpus.dc_requests, simple(dc_request), (MessageError, DirectoryError),
               (cbor_tree,), CBOR_WORDS, None),
    EntryPoint("dc.record", "DC-KEY and DC-GATEWAY answers as the client verifies them",
               corpus.dc_records, simple(dc_record), (MessageError, DirectoryError),
               (cbor_tree,), CBOR_WORDS, None),
    EntryPoint("dc.client", "the gateway's DC client reading any answer (HTTP in-process)",
               corpus.dc_answers, dc_client, (DirectoryError,), (cbor_tree, json_tree),
               (*CBOR_WORDS, b"{", b"[", b'"', b"null", b"1e999"), corpus.protocol_messages,
               0.5, prefix=1),
    EntryPoint("mail.parse", "gateway/mailformat.parse: protocol mail", _inbound_seeds,
               simple(mail_parse), (mailformat.MailFormatError,), (lines, mail_inner),
               MAIL_WORDS, corpus.protocol_messages),
    EntryPoint("mail.hints", "gateway/mailformat.hints: the administrator's view",
               _inbound_seeds, simple(mail_hints), (), (lines,), MAIL_WORDS, None, 0.3),
    EntryPoint("gateway.inbound", "gateway/inbound.handle: one protocol mail, applied to a "
               "real SQLite store", _inbound_seeds, _open_inbound, (),
               (lines, mail_inner, mail_inner), MAIL_WORDS, corpus.protocol_messages, 1.0),
    EntryPoint("submission.mail", "a certified submission's headers, subject and tag",
               corpus.submitted_mails, simple(submitted), (), (lines,), MAIL_WORDS, None,
               0.5),
    EntryPoint("tss.stamp", "the TSS answering a time-stamp request",
               corpus.ts_requests, simple(tss_stamp), (), (der_tree,), DER_WORDS),
    EntryPoint("timestamp.reply", "reading a TSS reply (token_from_reply)",
               corpus.ts_replies, simple(ts_reply), (TimestampError,), (der_tree,),
               DER_WORDS),
    EntryPoint("timestamp.token", "verify_token over the imprint the token names",
               lambda: corpus.messages("token"), simple(ts_token), (TimestampError,),
               (der_tree,), DER_WORDS, None, 1.5),
    EntryPoint("tsrg.decrypt", "TSRG blobs (c in m3)", corpus.tsrg_blobs,
               simple(tsrg_decrypt), (TsrgError,), (), (b"TSR2", b"\x01\x00", b"\xff\xff",
                                                       b"\x28\x7f", b"\x00\x00"), None, 0.5),
    EntryPoint("tsrg.session", "TSRG session records", corpus.tsrg_records,
               simple(tsrg_session), (TsrgError,), (), (b"TSI2", b"\x00" * 8), None, 0.3),
    EntryPoint("cipher.aes256gcm", "AES-256-GCM blobs (c in m3)", aes_seeds,
               simple(aes_decrypt), (DecryptionError,), (), (), None, 0.2),
    EntryPoint("config.toml", "the configuration file", corpus.config_files,
               lambda: _config("toml"), (config_mod.ConfigError,), (lines,), TOML_WORDS,
               None, 0.5),
    EntryPoint("config.env", "configuration from TCMS_ environment variables",
               corpus.env_files, lambda: _config("env"), (config_mod.ConfigError,), (lines,),
               ENV_WORDS, None, 0.5),
    EntryPoint("imap.commands", "the IMAP proxy's command reader and vetting",
               corpus.imap_commands, simple(imap_commands), (), (lines,), IMAP_WORDS),
    EntryPoint("imap.answer", "upstream IMAP answers the proxy filters",
               corpus.imap_answers, simple(imap_answer), (), (lines,), IMAP_WORDS, None, 0.3),
    EntryPoint("imap.mailbox", "mailbox names (modified UTF-7) the proxy vets",
               corpus.mutf7_names, simple(mailbox_name), (), (), IMAP_WORDS, None, 0.2),
)


def _config(mode: str) -> Harness:
    h_ = ConfigHarness(mode)
    return Harness(h_, h_.close)


BY_NAME = {e.name: e for e in ENTRY_POINTS}

