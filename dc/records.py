"""The Distribution Center's messages, sans-IO: signed requests from gateways, signed
key records from the DC, and the checks both sides run.

- ``["TCMS1/DC-PUBLISH", domain, party, not_before, not_after, t, sig_gw]``: a gateway
  publishes (or rotates) the keys of an address in its domain.
- ``["TCMS1/DC-REVOKE", domain, address, fingerprint, reason, t, sig_gw]``: it revokes one.
- ``["TCMS1/DC-KEY", party, status, not_before, not_after, version, issued_at, expires_at,
  sig_dc]``: the DC's answer to a lookup; ``status`` is active, superseded or revoked, and
  the answer itself is only good until ``expires_at``.
- ``["TCMS1/DC-GATEWAY", domain, gateway, protocol_address, issued_at, expires_at, sig_dc]``:
  the gateway registered for a domain and the address its MTA routes protocol mail to (m3
  to m6 and refusals for the domain's users are sent there, never to the users).

The gateway signs with its own Ed25519 key (registered for its domain at the DC); every
signature carries its step tag, like the protocol's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tcms import codec
from tcms.crypto import CryptoError, sign, verify
from tcms.identity import Identity, Party, check_party_name, party_name_error
from tcms.protocol.messages import MessageError

ACTIVE, SUPERSEDED, REVOKED = "active", "superseded", "revoked"
FRESHNESS = 300  # a request's time may differ from the DC's clock by this much
ANSWER_LIFETIME = 3600


class DirectoryError(Exception):
    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


def domain_of(address: str) -> str:
    if "@" not in address:
        raise DirectoryError("address", f"{address[:254]!r} is not an e-mail address")
    return address.rsplit("@", 1)[1]


def checked_address(address: str) -> str:
    """``address`` as the directory keeps it (lower case), or DirectoryError("address")
    if it cannot be a party's name (``tcms.identity.party_name_error``: spaces, no domain,
    too long, ...)."""
    try:
        return check_party_name(address)
    except ValueError as exc:
        raise DirectoryError("address", str(exc)) from None


def _decode(data: bytes, tag: str, n: int) -> list[codec.Value]:
    try:
        return codec.decode_array(data, f"TCMS1/{tag}", n)
    except codec.CodecError as exc:
        raise MessageError(str(exc)) from None


def _int(v: codec.Value) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise MessageError("expected a non-negative integer")
    return v


def _str(v: codec.Value) -> str:
    if not isinstance(v, str) or len(v) > 254:
        raise MessageError("expected text")
    return v


def _sig(v: codec.Value) -> bytes:
    if not isinstance(v, bytes) or len(v) != 64:
        raise MessageError("expected a 64-byte signature")
    return v


@dataclass(frozen=True)
class Publish:
    domain: str
    party: Party
    not_before: int
    not_after: int
    t: int
    sig: bytes = b""

    def fields(self) -> tuple[codec.Value, ...]:
        return (self.domain, self.party.to_value(), self.not_before, self.not_after, self.t)

    def signed_by(self, gateway: Identity) -> Publish:
        return replace(self, sig=sign(gateway.sig_key, "DC-PUBLISH", *self.fields()))

    def encode(self) -> bytes:
        return codec.encode(["TCMS1/DC-PUBLISH", *self.fields(), self.sig])

    @classmethod
    def decode(cls, data: bytes) -> Publish:
        f = _decode(data, "DC-PUBLISH", 7)
        try:
            party = Party.from_value(f[2])
        except (codec.CodecError, ValueError):
            raise MessageError("malformed party") from None
        return cls(_str(f[1]), party, _int(f[3]), _int(f[4]), _int(f[5]), _sig(f[6]))


@dataclass(frozen=True)
class Revoke:
    domain: str
    address: str
    fingerprint: str
    reason: str
    t: int
    sig: bytes = b""

    def fields(self) -> tuple[codec.Value, ...]:
        return (self.domain, self.address, self.fingerprint, self.reason, self.t)

    def signed_by(self, gateway: Identity) -> Revoke:
        return replace(self, sig=sign(gateway.sig_key, "DC-REVOKE", *self.fields()))

    def encode(self) -> bytes:
        return codec.encode(["TCMS1/DC-REVOKE", *self.fields(), self.sig])

    @classmethod
    def decode(cls, data: bytes) -> Revoke:
        f = _decode(data, "DC-REVOKE", 7)
        return cls(_str(f[1]), _str(f[2]), _str(f[3]), _str(f[4]), _int(f[5]), _sig(f[6]))


@dataclass(frozen=True)
class KeyRecord:
    party: Party
    status: str
    not_before: int
    not_after: int
    version: int
    issued_at: int
    expires_at: int
    sig: bytes = b""

    def fields(self) -> tuple[codec.Value, ...]:
        return (self.party.to_value(), self.status, self.not_before, self.not_after,
                self.version, self.issued_at, self.expires_at)

    def signed_by(self, dc: Identity) -> KeyRecord:
        return replace(self, sig=sign(dc.sig_key, "DC-KEY", *self.fields()))

    def encode(self) -> bytes:
        return codec.encode(["TCMS1/DC-KEY", *self.fields(), self.sig])

    @classmethod
    def decode(cls, data: bytes) -> KeyRecord:
        f = _decode(data, "DC-KEY", 9)
        try:
            party = Party.from_value(f[1])
        except (codec.CodecError, ValueError):
            raise MessageError("malformed party") from None
        status = _str(f[2])
        if status not in (ACTIVE, SUPERSEDED, REVOKED):
            raise MessageError("unknown key status")
        nb, na, version, issued, expires = (_int(x) for x in f[3:8])
        return cls(party, status, nb, na, version, issued, expires, _sig(f[8]))

    def to_json(self) -> dict[str, object]:
        return {**self.party.to_json(), "status": self.status, "not_before": self.not_before,
                "not_after": self.not_after, "version": self.version,
                "issued_at": self.issued_at, "expires_at": self.expires_at}


def check_gateway_request(req: Publish | Revoke, gateway_pk: bytes, now: int) -> None:
    """The DC's checks: the gateway's signature, the address in its domain, a fresh time."""
    tag = "DC-PUBLISH" if isinstance(req, Publish) else "DC-REVOKE"
    try:
        verify(gateway_pk, req.sig, tag, *req.fields())
    except CryptoError as exc:
        raise DirectoryError("gateway.sig", str(exc)) from None
    address = req.party.name if isinstance(req, Publish) else req.address
    if checked_address(address) != address and isinstance(req, Publish):
        raise DirectoryError("address", "a published key's name must be its address in "
                             "lower case")
    if domain_of(address) != req.domain:
        raise DirectoryError("domain", f"{address} is not in the domain {req.domain}")
    if abs(now - req.t) > FRESHNESS:
        raise DirectoryError("request.time", "the request's time is not within 5 minutes")
    if isinstance(req, Publish) and not req.not_before < req.not_after:
        raise DirectoryError("validity", "not_before must precede not_after")


def verify_record(data: bytes, dc_pk: bytes, address: str, now: int) -> KeyRecord:
    """A client's checks of a DC answer: the DC's signature, the address asked for, a fresh
    answer.  The caller decides what the status means (only ``usable`` keys may be used).
    Any defect of the answer is a DirectoryError."""
    try:
        rec = KeyRecord.decode(data)
    except MessageError as exc:
        raise DirectoryError("dc.answer", f"the DC's answer is malformed: {exc}") from None
    try:
        verify(dc_pk, rec.sig, "DC-KEY", *rec.fields())
    except CryptoError as exc:
        raise DirectoryError("dc.sig", str(exc)) from None
    if rec.party.name != address.lower():
        raise DirectoryError("dc.address", "the answer is about another address")
    if not rec.issued_at - FRESHNESS <= now <= rec.expires_at:
        raise DirectoryError("dc.expired", "the DC's answer is not current")
    return rec


def usable(rec: KeyRecord, now: int) -> bool:
    return rec.status == ACTIVE and rec.not_before <= now <= rec.not_after


@dataclass(frozen=True)
class GatewayRecord:
    domain: str
    gateway: Party
    protocol_address: str
    issued_at: int
    expires_at: int
    sig: bytes = b""

    def fields(self) -> tuple[codec.Value, ...]:
        return (self.domain, self.gateway.to_value(), self.protocol_address, self.issued_at,
                self.expires_at)

    def signed_by(self, dc: Identity) -> GatewayRecord:
        return replace(self, sig=sign(dc.sig_key, "DC-GATEWAY", *self.fields()))

    def encode(self) -> bytes:
        return codec.encode(["TCMS1/DC-GATEWAY", *self.fields(), self.sig])

    @classmethod
    def decode(cls, data: bytes) -> GatewayRecord:
        f = _decode(data, "DC-GATEWAY", 7)
        try:
            gateway = Party.from_value(f[2])
        except (codec.CodecError, ValueError):
            raise MessageError("malformed party") from None
        address = _str(f[3])
        if party_name_error(address) is not None:
            raise MessageError("the protocol address is not a usable address")
        return cls(_str(f[1]), gateway, address, _int(f[4]), _int(f[5]), _sig(f[6]))

    def to_json(self) -> dict[str, object]:
        return {"domain": self.domain, "gateway": self.gateway.to_json(),
                "protocol_address": self.protocol_address, "issued_at": self.issued_at,
                "expires_at": self.expires_at}


def verify_gateway_record(data: bytes, dc_pk: bytes, domain: str, now: int) -> GatewayRecord:
    """A client's checks of the DC's answer about a domain's gateway: the DC's signature,
    the domain asked for, a fresh answer, and a protocol address in that domain.  Any
    defect of the answer is a DirectoryError."""
    try:
        rec = GatewayRecord.decode(data)
    except MessageError as exc:
        raise DirectoryError("dc.answer", f"the DC's answer is malformed: {exc}") from None
    try:
        verify(dc_pk, rec.sig, "DC-GATEWAY", *rec.fields())
    except CryptoError as exc:
        raise DirectoryError("dc.sig", str(exc)) from None
    if rec.domain != domain.lower() or domain_of(rec.protocol_address) != rec.domain:
        raise DirectoryError("dc.domain", "the answer is about another domain")
    if not rec.issued_at - FRESHNESS <= now <= rec.expires_at:
        raise DirectoryError("dc.expired", "the DC's answer is not current")
    return rec
