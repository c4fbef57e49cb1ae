"""Protocol message types and their canonical encodings (TCMS1).

Every message is a deterministic CBOR array whose first item is its type tag.  All
signatures are Ed25519 over ``tagged(step, cid, ...)`` where ``cid = H(core)`` and the core
holds the header with the transaction id, S, R, the TTP and the deadlines, so every
signature binds the run, both parties, the TTP and the step.  Layouts are documented in
docs/protocol.md and pinned by known-answer tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Self

from tcms import codec
from tcms.crypto import HASH_ALG, PROTOCOL, SIG_ALG, WRAP_ALG, h, tagged
from tcms.identity import Party, party_name_error

VERSION = 1
# The latest time a deadline may name: 9999-12-31 23:59:59 UTC, the last second that dates
# can be shown for.  A deadline past it is malformed, not merely far away.
MAX_TIME = 253_402_300_799
# Characters that must never reach a header or a notice: C0/C1 controls, DEL, and the
# Unicode line and paragraph separators (a mail client may break a line at them).
_FORBIDDEN = frozenset([*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)),
                        "\u2028", "\u2029", "\u0085"])


class MessageError(ValueError):
    """A protocol message is malformed (wrong type, shape, field types or sizes)."""


def _tag(name: str) -> str:
    return f"{PROTOCOL}/{name}"


def _bytes(v: codec.Value, what: str, size: int | None = None) -> bytes:
    if not isinstance(v, bytes) or (size is not None and len(v) != size):
        raise MessageError(f"{what}: expected {size or 'some'} bytes")
    return v


def _int(v: codec.Value, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise MessageError(f"{what}: expected a non-negative integer")
    return v


def _str(v: codec.Value, what: str, limit: int = 998) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise MessageError(f"{what}: expected text of at most {limit} characters")
    return v


def _line(v: codec.Value, what: str, limit: int = 998) -> str:
    """Text shown to people on one line (a subject): no control or line-break characters."""
    text = _str(v, what, limit)
    if not _FORBIDDEN.isdisjoint(text):
        raise MessageError(f"{what}: holds a control or line-break character")
    return text


def one_line(text: str, limit: int = 900) -> str:
    """``text`` made fit for a header or a notice line: control and line-break characters
    become spaces, runs of white space one space, at most ``limit`` characters."""
    cleaned = "".join(" " if c in _FORBIDDEN else c for c in text)
    return " ".join(cleaned.split())[:limit]


def _time(v: codec.Value, what: str) -> int:
    t = _int(v, what)
    if t > MAX_TIME:
        raise MessageError(f"{what}: later than the year 9999")
    return t


def _list(v: codec.Value, what: str, n: int) -> list[codec.Value]:
    if not isinstance(v, list) or len(v) != n:
        raise MessageError(f"{what}: expected {n} items")
    return v


def _decode(data: bytes, name: str, n: int) -> list[codec.Value]:
    try:
        return codec.decode_array(data, _tag(name), n)
    except codec.CodecError as exc:
        raise MessageError(str(exc)) from None


def _party(v: codec.Value, what: str) -> Party:
    try:
        party = Party.from_value(v)
    except (codec.CodecError, ValueError):
        raise MessageError(f"{what}: malformed party") from None
    why = party_name_error(party.name)
    if why is not None or party.name != party.name.strip().lower():
        raise MessageError(f"{what}: not a usable address ({why or 'not lower-case'})")
    return party


def message_type(data: bytes) -> str:
    """The type tag of an encoded message (e.g. ``"M4"``), without validating the rest."""
    try:
        value = codec.decode(data)
    except codec.CodecError as exc:
        raise MessageError(str(exc)) from None
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise MessageError("not a TCMS message")
    prefix = PROTOCOL + "/"
    if not value[0].startswith(prefix):
        raise MessageError(f"unknown protocol {value[0]!r:.40}")
    return value[0][len(prefix):]


# --- header and core -------------------------------------------------------------------


@dataclass(frozen=True)
class Deadlines:
    """Absolute times (Unix seconds).  accept_by: R may accept and S waits for m4 until then;
    m5_by: R waits for m5; m6_by: S waits for m6; resolve_by: last time the TTP opens an
    undecided exchange for R (R1R)."""

    accept_by: int
    m5_by: int
    m6_by: int
    resolve_by: int

    def __post_init__(self) -> None:
        if not (self.accept_by <= self.m5_by <= self.m6_by and self.m5_by <= self.resolve_by):
            raise MessageError("deadlines must satisfy accept_by <= m5_by <= m6_by, "
                               "m5_by <= resolve_by")

    def to_value(self) -> list[codec.Value]:
        return [self.accept_by, self.m5_by, self.m6_by, self.resolve_by]


@dataclass(frozen=True)
class Description:
    """What R is shown before accepting: subject, size of m0 in bytes, Message-ID."""

    subject: str
    size: int
    message_id: str

    def to_value(self) -> list[codec.Value]:
        return [self.subject, self.size, self.message_id]


@dataclass(frozen=True)
class Header:
    tx: bytes
    sender: Party
    recipient: Party
    ttp: Party
    tss: str
    cipher: str
    deadlines: Deadlines
    description: Description

    def to_value(self) -> list[codec.Value]:
        return [
            _tag("HDR"), VERSION, self.tx, self.sender.to_value(), self.recipient.to_value(),
            self.ttp.to_value(), self.tss, [SIG_ALG, WRAP_ALG, HASH_ALG, self.cipher],
            self.deadlines.to_value(), self.description.to_value(),
        ]

    @cached_property
    def encoded(self) -> bytes:
        return codec.encode(self.to_value())

    @cached_property
    def digest(self) -> bytes:
        """H(hdr): the associated data of c and the context of every key wrap."""
        return h(self.encoded)

    @classmethod
    def from_value(cls, v: codec.Value) -> Header:
        f = _list(v, "header", 10)
        if f[0] != _tag("HDR"):
            raise MessageError("header: wrong tag")
        if f[1] != VERSION:
            raise MessageError(f"header: unsupported protocol version {f[1]!r}")
        algs = _list(f[7], "algorithms", 4)
        if algs[:3] != [SIG_ALG, WRAP_ALG, HASH_ALG]:
            raise MessageError(f"header: unsupported algorithms {algs[:3]!r}")
        dl = _list(f[8], "deadlines", 4)
        desc = _list(f[9], "description", 3)
        return cls(
            tx=_bytes(f[2], "tx", 16),
            sender=_party(f[3], "sender"),
            recipient=_party(f[4], "recipient"),
            ttp=_party(f[5], "ttp"),
            tss=_str(f[6], "tss"),
            cipher=_str(algs[3], "cipher", 64),
            deadlines=Deadlines(*(_time(x, "deadline") for x in dl)),
            description=Description(
                _line(desc[0], "subject"), _int(desc[1], "size"), _line(desc[2], "message-id")
            ),
        )


@dataclass(frozen=True)
class Core:
    """core = (hdr, H(c), H(e_R), H(e_T), hk_R, hk_T); cid = H(core) names the exchange."""

    header: Header
    h_c: bytes
    h_er: bytes
    h_et: bytes
    hk_r: bytes
    hk_t: bytes

    def to_value(self) -> list[codec.Value]:
        return [_tag("CORE"), self.header.to_value(), self.h_c, self.h_er, self.h_et,
                self.hk_r, self.hk_t]

    @cached_property
    def encoded(self) -> bytes:
        return codec.encode(self.to_value())

    @cached_property
    def cid(self) -> bytes:
        return h(self.encoded)

    @classmethod
    def from_value(cls, v: codec.Value) -> Core:
        f = _list(v, "core", 7)
        if f[0] != _tag("CORE"):
            raise MessageError("core: wrong tag")
        return cls(Header.from_value(f[1]), *(_bytes(x, "core hash", 32) for x in f[2:]))

    @classmethod
    def decode(cls, data: bytes) -> Core:
        try:
            return cls.from_value(codec.decode(data))
        except codec.CodecError as exc:
            raise MessageError(str(exc)) from None


# --- the six messages and the refusal --------------------------------------------------


@dataclass(frozen=True)
class M1:
    """S -> TSS: an RFC 3161 request over cid, with S's signature (who asked)."""

    sender: Party
    cid: bytes
    tsq: bytes
    sig: bytes

    def encode(self) -> bytes:
        return codec.encode([_tag("M1"), self.sender.to_value(), self.cid, self.tsq, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> M1:
        f = _decode(data, "M1", 5)
        return cls(_party(f[1], "sender"), _bytes(f[2], "cid", 32), _bytes(f[3], "tsq"),
                   _bytes(f[4], "sig", 64))

    def signed_fields(self) -> tuple[codec.Value, ...]:
        return (self.cid, h(self.tsq))


@dataclass(frozen=True)
class M3:
    """S -> R: core, c, e_R, e_T, the time-stamp token m2 and EOO = Sig_S(M3, cid, H(m2))."""

    core: Core
    c: bytes
    e_r: bytes
    e_t: bytes
    token: bytes
    eoo: bytes

    def encode(self) -> bytes:
        return codec.encode([_tag("M3"), self.core.to_value(), self.c, self.e_r, self.e_t,
                             self.token, self.eoo])

    @classmethod
    def decode(cls, data: bytes) -> M3:
        f = _decode(data, "M3", 7)
        return cls(Core.from_value(f[1]), _bytes(f[2], "c"), _bytes(f[3], "e_R"),
                   _bytes(f[4], "e_T"), _bytes(f[5], "token"), _bytes(f[6], "EOO", 64))

    @property
    def cid(self) -> bytes:
        return self.core.cid


@dataclass(frozen=True)
class Signed:
    """The common shape of M4, M6 and the refusal: [tag, cid, signature]."""

    cid: bytes
    sig: bytes
    NAME = ""

    def encode(self) -> bytes:
        return codec.encode([_tag(self.NAME), self.cid, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> Self:
        f = _decode(data, cls.NAME, 3)
        return cls(_bytes(f[1], "cid", 32), _bytes(f[2], "sig", 64))


class M4(Signed):
    """R -> S: Sig_R(M4, cid, H(EOO)): R holds the sealed mail.  Never a receipt alone."""

    NAME = "M4"


class M6(Signed):
    """R -> S: Sig_R(M6, cid, H(m5)): the receipt."""

    NAME = "M6"


class Refusal(Signed):
    """R -> S: Sig_R(REFUSE, cid, H(EOO)): R declines the mail."""

    NAME = "REFUSE"


@dataclass(frozen=True)
class M5:
    """S -> R: w5 = wrap(pk_R, k_T) and Sig_S(M5, cid, hk_T, H(w5))."""

    cid: bytes
    w5: bytes
    sig: bytes

    def encode(self) -> bytes:
        return codec.encode([_tag("M5"), self.cid, self.w5, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> M5:
        f = _decode(data, "M5", 4)
        return cls(_bytes(f[1], "cid", 32), _bytes(f[2], "w5"), _bytes(f[3], "sig", 64))


# --- requests to the TTP ---------------------------------------------------------------


@dataclass(frozen=True)
class AbortRequest:
    """R1S: S asks the TTP to abort.  Sig_S(ABORT-REQ, cid, t)."""

    core: Core
    t: int
    sig: bytes

    def encode(self) -> bytes:
        return codec.encode([_tag("ABORT-REQ"), self.core.to_value(), self.t, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> AbortRequest:
        f = _decode(data, "ABORT-REQ", 4)
        return cls(Core.from_value(f[1]), _time(f[2], "t"), _bytes(f[3], "sig", 64))


@dataclass(frozen=True)
class ResolveRequest:
    """R1R (by="R") or R2S (by="S"): core, m2, EOO, m4, e_T and, from S, m5 -- never c.
    Signed by the requester: Sig(RESOLVE-REQ, cid, by, H(m4), H(m5 or empty), t)."""

    by: str
    core: Core
    token: bytes
    eoo: bytes
    m4: bytes
    e_t: bytes
    m5: bytes | None
    t: int
    sig: bytes

    def encode(self) -> bytes:
        return codec.encode([_tag("RESOLVE-REQ"), self.by, self.core.to_value(), self.token,
                             self.eoo, self.m4, self.e_t, self.m5, self.t, self.sig])

    def signed_fields(self) -> tuple[codec.Value, ...]:
        return (self.core.cid, self.by, h(self.m4), h(self.m5 or b""), self.t)

    @classmethod
    def decode(cls, data: bytes) -> ResolveRequest:
        f = _decode(data, "RESOLVE-REQ", 10)
        by = f[1]
        if by not in ("R", "S"):
            raise MessageError("resolve request: 'by' must be R or S")
        m5 = f[7]
        if by == "S":
            m5 = _bytes(m5, "m5")
        elif m5 is not None:
            raise MessageError("resolve request: m5 only comes from S")
        return cls(str(by), Core.from_value(f[2]), _bytes(f[3], "token"),
                   _bytes(f[4], "EOO", 64), _bytes(f[5], "m4"), _bytes(f[6], "e_T"),
                   m5, _time(f[8], "t"), _bytes(f[9], "sig", 64))


# --- the TTP's signed answers ----------------------------------------------------------

DELIVERED = "delivered"
MADE_AVAILABLE = "made-available"


@dataclass(frozen=True)
class Aborted:
    """Sig_TTP(ABORTED, cid, t): the exchange is aborted; nobody gets a receipt."""

    cid: bytes
    t: int
    sig: bytes

    def encode(self) -> bytes:
        return codec.encode([_tag("ABORTED"), self.cid, self.t, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> Aborted:
        f = _decode(data, "ABORTED", 4)
        return cls(_bytes(f[1], "cid", 32), _time(f[2], "t"), _bytes(f[3], "sig", 64))


@dataclass(frozen=True)
class Resolved:
    """The TTP's resolution, one token for both sides: for R the release of k_T (wrapped to
    pk_R), for S the affidavit ("delivered" after R1R, "made-available" after R2S) with m4.
    Sig_TTP(RESOLVED, cid, kind, H(m4), hk_T, H(w_T), t)."""

    cid: bytes
    kind: str
    m4: bytes
    w_t: bytes
    t: int
    sig: bytes

    def encode(self) -> bytes:
        return codec.encode([_tag("RESOLVED"), self.cid, self.kind, self.m4, self.w_t,
                             self.t, self.sig])

    def signed_fields(self, hk_t: bytes) -> tuple[codec.Value, ...]:
        return (self.cid, self.kind, h(self.m4), hk_t, h(self.w_t), self.t)

    @classmethod
    def decode(cls, data: bytes) -> Resolved:
        f = _decode(data, "RESOLVED", 7)
        kind = f[2]
        if kind not in (DELIVERED, MADE_AVAILABLE):
            raise MessageError("resolution: unknown kind")
        return cls(_bytes(f[1], "cid", 32), str(kind), _bytes(f[3], "m4"),
                   _bytes(f[4], "w_T"), _time(f[5], "t"), _bytes(f[6], "sig", 64))


@dataclass(frozen=True)
class BadEscrow:
    """Sig_TTP(BAD-ESCROW, cid, reason, t): e_T did not hold k_T -- proof that S cheated."""

    cid: bytes
    reason: str
    t: int
    sig: bytes

    def encode(self) -> bytes:
        return codec.encode([_tag("BAD-ESCROW"), self.cid, self.reason, self.t, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> BadEscrow:
        f = _decode(data, "BAD-ESCROW", 5)
        return cls(_bytes(f[1], "cid", 32), _str(f[2], "reason"), _time(f[3], "t"),
                   _bytes(f[4], "sig", 64))


@dataclass(frozen=True)
class Rejection:
    """Sig_TTP(REJECTED, cid, reason, t): the TTP will not act on a well-formed request
    (e.g. R1R after resolve_by).  It changes no state."""

    cid: bytes
    reason: str
    t: int
    sig: bytes

    def encode(self) -> bytes:
        return codec.encode([_tag("REJECTED"), self.cid, self.reason, self.t, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> Rejection:
        f = _decode(data, "REJECTED", 5)
        return cls(_bytes(f[1], "cid", 32), _str(f[2], "reason"), _time(f[3], "t"),
                   _bytes(f[4], "sig", 64))


TTPAnswer = Aborted | Resolved | BadEscrow | Rejection


def decode_ttp_answer(data: bytes) -> TTPAnswer:
    kind = message_type(data)
    decoders: dict[str, Callable[[bytes], TTPAnswer]] = {
        "ABORTED": Aborted.decode, "RESOLVED": Resolved.decode,
        "BAD-ESCROW": BadEscrow.decode, "REJECTED": Rejection.decode}
    if kind not in decoders:
        raise MessageError(f"not a TTP answer: {kind}")
    return decoders[kind](data)


def plaintext(m0: bytes, sender: str, recipient: str) -> bytes:
    """What c encrypts: m0 || h(m0) || ID_S || ID_R, as one canonical array."""
    return tagged("PAYLOAD", m0, h(m0), sender, recipient)


def parse_plaintext(data: bytes, sender: str, recipient: str) -> bytes:
    """Return m0 if ``data`` is a payload naming this S and R whose hash matches."""
    f = _decode(data, "PAYLOAD", 5)
    m0 = _bytes(f[1], "m0")
    if h(m0) != f[2]:
        raise MessageError("payload: h(m0) does not match m0")
    if f[3] != sender or f[4] != recipient:
        raise MessageError("payload: ID_S / ID_R do not match the header")
    return m0
