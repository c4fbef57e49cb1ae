"""Protocol message types and their canonical encodings (TCMS1).

Every message is a deterministic CBOR array whose first item is its type tag.  All
signatures are Ed25519 over ``tagged(step, cid, ...)`` where ``cid = H(core)`` and the core
holds the header with the transaction id, S, R, the TTP and the deadlines, so every
signature binds the run, both parties, the TTP and the step.  Layouts are documented in
docs/protocol.md and pinned by known-answer tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Self

from tcms import codec
from tcms.crypto import HASH_ALG, PROTOCOL, SIG_ALG, WRAP_ALG, h, tagged
from tcms.identity import Party
from tcms.protocol.fields import MessageError as MessageError
from tcms.protocol.fields import (
    as_bytes,
    as_int,
    as_line,
    as_list,
    as_party,
    as_str,
    as_time,
    decode_array,
    tag,
)

VERSION = 1


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
            tag("HDR"), VERSION, self.tx, self.sender.to_value(), self.recipient.to_value(),
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
        f = as_list(v, "header", 10)
        if f[0] != tag("HDR"):
            raise MessageError("header: wrong tag")
        if f[1] != VERSION:
            raise MessageError(f"header: unsupported protocol version {f[1]!r}")
        algs = as_list(f[7], "algorithms", 4)
        if algs[:3] != [SIG_ALG, WRAP_ALG, HASH_ALG]:
            raise MessageError(f"header: unsupported algorithms {algs[:3]!r}")
        dl = as_list(f[8], "deadlines", 4)
        desc = as_list(f[9], "description", 3)
        return cls(
            tx=as_bytes(f[2], "tx", 16),
            sender=as_party(f[3], "sender"),
            recipient=as_party(f[4], "recipient"),
            ttp=as_party(f[5], "ttp"),
            tss=as_str(f[6], "tss"),
            cipher=as_str(algs[3], "cipher", 64),
            deadlines=Deadlines(*(as_time(x, "deadline") for x in dl)),
            description=Description(
                as_line(desc[0], "subject"), as_int(desc[1], "size"), as_line(desc[2], "message-id")
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
        return [tag("CORE"), self.header.to_value(), self.h_c, self.h_er, self.h_et,
                self.hk_r, self.hk_t]

    @cached_property
    def encoded(self) -> bytes:
        return codec.encode(self.to_value())

    @cached_property
    def cid(self) -> bytes:
        return h(self.encoded)

    @classmethod
    def from_value(cls, v: codec.Value) -> Core:
        f = as_list(v, "core", 7)
        if f[0] != tag("CORE"):
            raise MessageError("core: wrong tag")
        return cls(Header.from_value(f[1]), *(as_bytes(x, "core hash", 32) for x in f[2:]))

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
        return codec.encode([tag("M1"), self.sender.to_value(), self.cid, self.tsq, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> M1:
        f = decode_array(data, "M1", 5)
        return cls(as_party(f[1], "sender"), as_bytes(f[2], "cid", 32), as_bytes(f[3], "tsq"),
                   as_bytes(f[4], "sig", 64))

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
        return codec.encode([tag("M3"), self.core.to_value(), self.c, self.e_r, self.e_t,
                             self.token, self.eoo])

    def encoded_around_c(self, size: int) -> tuple[bytes, bytes]:
        """The encoding of this m3 with a c of ``size`` bytes, but c: (before, after), so
        that before + c + after is ``replace(self, c=c).encode()`` (a large c is written
        where it goes without a copy of it)."""
        bare = replace(self, c=b"").encode()
        at = len(codec.encode([tag("M3"), self.core.to_value()]))
        if bare[at] != 0x40:  # the empty byte string c is
            raise MessageError("m3: c is not where the encoding puts it")
        return bare[:at] + codec.bytes_head(size), bare[at + 1:]

    @classmethod
    def decode(cls, data: bytes) -> M3:
        f = decode_array(data, "M3", 7)
        return cls(Core.from_value(f[1]), as_bytes(f[2], "c"), as_bytes(f[3], "e_R"),
                   as_bytes(f[4], "e_T"), as_bytes(f[5], "token"), as_bytes(f[6], "EOO", 64))

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
        return codec.encode([tag(self.NAME), self.cid, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> Self:
        f = decode_array(data, cls.NAME, 3)
        return cls(as_bytes(f[1], "cid", 32), as_bytes(f[2], "sig", 64))


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
        return codec.encode([tag("M5"), self.cid, self.w5, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> M5:
        f = decode_array(data, "M5", 4)
        return cls(as_bytes(f[1], "cid", 32), as_bytes(f[2], "w5"), as_bytes(f[3], "sig", 64))


def plaintext(m0: bytes, sender: str, recipient: str) -> bytes:
    """What c encrypts: m0 || h(m0) || ID_S || ID_R, as one canonical array."""
    return tagged("PAYLOAD", m0, h(m0), sender, recipient)


def parse_plaintext(data: bytes | bytearray, sender: str, recipient: str) -> bytes:
    """Return m0 if ``data`` is a payload naming this S and R whose hash matches.  m0 is
    read where it lies (as large as the mail: one copy, the one returned); a payload not
    laid out exactly as ``plaintext`` writes it is read by the decoder, which names what
    is wrong."""
    m0 = _payload_m0(memoryview(data), sender, recipient)
    if m0 is not None:
        return m0
    f = decode_array(bytes(data), "PAYLOAD", 5)
    m0 = as_bytes(f[1], "m0")
    if h(m0) != f[2]:
        raise MessageError("payload: h(m0) does not match m0")
    if f[3] != sender or f[4] != recipient:
        raise MessageError("payload: ID_S / ID_R do not match the header")
    return m0


def _payload_m0(view: memoryview, sender: str, recipient: str) -> bytes | None:
    """m0, if ``view`` is byte for byte ``plaintext(m0, sender, recipient)``; else None."""
    head = tagged("PAYLOAD", b"", b"", sender, recipient)
    at = len(tagged("PAYLOAD"))  # the array's head and the tag: the same for 1 or 5 items
    if len(view) <= at or view[:at] != head[:at] or view[at] >> 5 != 2:
        return None
    extra = view[at] & 31
    width = 0 if extra < 24 else 1 << (extra - 24) if extra < 28 else -1
    if width < 0 or len(view) < at + 1 + width:
        return None
    size = extra if width == 0 else int.from_bytes(view[at + 1:at + 1 + width], "big")
    start = at + 1 + width
    if view[at:start] != codec.bytes_head(size):
        return None  # not the shortest form
    m0 = view[start:start + size]
    if len(m0) != size or view[start + size:] != codec.encode([h(m0), sender, recipient])[1:]:
        return None  # h(m0), ID_S and ID_R, each as plaintext writes it, and nothing more
    return bytes(m0)
