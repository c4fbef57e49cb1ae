"""The messages between a party and the TTP (TCMS1): the recovery requests (R1S abort, R1R
and R2S resolve) and the TTP's signed answers (aborted, resolved, bad escrow, rejected).
Encodings as in tcms/protocol/messages.py: deterministic CBOR arrays, tag first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tcms import codec
from tcms.crypto import h
from tcms.protocol.fields import (
    MessageError,
    as_bytes,
    as_str,
    as_time,
    decode_array,
    tag,
)
from tcms.protocol.messages import Core, message_type

# --- requests to the TTP ---------------------------------------------------------------


@dataclass(frozen=True)
class AbortRequest:
    """R1S: S asks the TTP to abort.  Sig_S(ABORT-REQ, cid, t)."""

    core: Core
    t: int
    sig: bytes

    def encode(self) -> bytes:
        return codec.encode([tag("ABORT-REQ"), self.core.to_value(), self.t, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> AbortRequest:
        f = decode_array(data, "ABORT-REQ", 4)
        return cls(Core.from_value(f[1]), as_time(f[2], "t"), as_bytes(f[3], "sig", 64))


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
        return codec.encode([tag("RESOLVE-REQ"), self.by, self.core.to_value(), self.token,
                             self.eoo, self.m4, self.e_t, self.m5, self.t, self.sig])

    def signed_fields(self) -> tuple[codec.Value, ...]:
        return (self.core.cid, self.by, h(self.m4), h(self.m5 or b""), self.t)

    @classmethod
    def decode(cls, data: bytes) -> ResolveRequest:
        f = decode_array(data, "RESOLVE-REQ", 10)
        by = f[1]
        if by not in ("R", "S"):
            raise MessageError("resolve request: 'by' must be R or S")
        m5 = f[7]
        if by == "S":
            m5 = as_bytes(m5, "m5")
        elif m5 is not None:
            raise MessageError("resolve request: m5 only comes from S")
        return cls(str(by), Core.from_value(f[2]), as_bytes(f[3], "token"),
                   as_bytes(f[4], "EOO", 64), as_bytes(f[5], "m4"), as_bytes(f[6], "e_T"),
                   m5, as_time(f[8], "t"), as_bytes(f[9], "sig", 64))


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
        return codec.encode([tag("ABORTED"), self.cid, self.t, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> Aborted:
        f = decode_array(data, "ABORTED", 4)
        return cls(as_bytes(f[1], "cid", 32), as_time(f[2], "t"), as_bytes(f[3], "sig", 64))


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
        return codec.encode([tag("RESOLVED"), self.cid, self.kind, self.m4, self.w_t,
                             self.t, self.sig])

    def signed_fields(self, hk_t: bytes) -> tuple[codec.Value, ...]:
        return (self.cid, self.kind, h(self.m4), hk_t, h(self.w_t), self.t)

    @classmethod
    def decode(cls, data: bytes) -> Resolved:
        f = decode_array(data, "RESOLVED", 7)
        kind = f[2]
        if kind not in (DELIVERED, MADE_AVAILABLE):
            raise MessageError("resolution: unknown kind")
        return cls(as_bytes(f[1], "cid", 32), str(kind), as_bytes(f[3], "m4"),
                   as_bytes(f[4], "w_T"), as_time(f[5], "t"), as_bytes(f[6], "sig", 64))


@dataclass(frozen=True)
class BadEscrow:
    """Sig_TTP(BAD-ESCROW, cid, reason, t): e_T did not hold k_T -- proof that S cheated."""

    cid: bytes
    reason: str
    t: int
    sig: bytes

    def encode(self) -> bytes:
        return codec.encode([tag("BAD-ESCROW"), self.cid, self.reason, self.t, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> BadEscrow:
        f = decode_array(data, "BAD-ESCROW", 5)
        return cls(as_bytes(f[1], "cid", 32), as_str(f[2], "reason"), as_time(f[3], "t"),
                   as_bytes(f[4], "sig", 64))


@dataclass(frozen=True)
class Rejection:
    """Sig_TTP(REJECTED, cid, reason, t): the TTP will not act on a well-formed request
    (e.g. R1R after resolve_by).  It changes no state."""

    cid: bytes
    reason: str
    t: int
    sig: bytes

    def encode(self) -> bytes:
        return codec.encode([tag("REJECTED"), self.cid, self.reason, self.t, self.sig])

    @classmethod
    def decode(cls, data: bytes) -> Rejection:
        f = decode_array(data, "REJECTED", 5)
        return cls(as_bytes(f[1], "cid", 32), as_str(f[2], "reason"), as_time(f[3], "t"),
                   as_bytes(f[4], "sig", 64))


TTPAnswer = Aborted | Resolved | BadEscrow | Rejection


def decode_ttp_answer(data: bytes) -> TTPAnswer:
    kind = message_type(data)
    decoders: dict[str, Callable[[bytes], TTPAnswer]] = {
        "ABORTED": Aborted.decode, "RESOLVED": Resolved.decode,
        "BAD-ESCROW": BadEscrow.decode, "REJECTED": Rejection.decode}
    if kind not in decoders:
        raise MessageError(f"not a TTP answer: {kind}")
    return decoders[kind](data)
