"""A sans-IO RFC 3161 time-stamp authority: request in, reply out; time and serial are inputs.

The signing key is ECDSA P-256 (SHA-256): it is what every RFC 3161 client, OpenSSL's
``ts -verify`` included, accepts.  The TSA certificate is issued by the service's own CA
with basicConstraints CA:FALSE, keyUsage digitalSignature and a critical extendedKeyUsage
holding only timeStamping, as RFC 3161 section 2.3 requires.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Literal, overload

from asn1crypto import tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tcms import der, token_layout
from tcms.timestamp import TimeStampResp
from tcms.token_layout import OID_TST_INFO
from tss.request import HASH_LENGTHS, TsRequest, read_common

OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
OID_SIGNING_TIME = "1.2.840.113549.1.9.5"
OID_SIGNING_CERT_V2 = "1.2.840.113549.1.9.16.2.47"

# A UUID-derived OID (ITU-T X.667, arc 2.25) naming the TCMS time-stamping policy.
POLICY_OID = "2.25.142144126307827040010324908873667743154"


@dataclass(frozen=True)
class TsaCredentials:
    ca_cert: x509.Certificate
    tsa_cert: x509.Certificate
    tsa_key: ec.EllipticCurvePrivateKey = field(repr=False)

    def pem_chain(self) -> tuple[bytes, bytes]:
        enc = serialization.Encoding.PEM
        return self.ca_cert.public_bytes(enc), self.tsa_cert.public_bytes(enc)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TCMS"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@overload
def create_credentials(name: str, *, now: dt.datetime, years: int = 10,
                       with_ca_key: Literal[False] = False) -> TsaCredentials: ...


@overload
def create_credentials(name: str, *, now: dt.datetime, years: int = 10,
                       with_ca_key: Literal[True]) -> tuple[TsaCredentials,
                                                            ec.EllipticCurvePrivateKey]: ...


def create_credentials(name: str, *, now: dt.datetime, years: int = 10,
                       with_ca_key: bool = False) -> (
        TsaCredentials | tuple[TsaCredentials, ec.EllipticCurvePrivateKey]):
    """A new CA and a TSA certificate it issues, both ECDSA P-256."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    tsa_key = ec.generate_private_key(ec.SECP256R1())
    start = now - dt.timedelta(minutes=5)
    end = now + dt.timedelta(days=365 * years)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{name} CA"))
        .issuer_name(_name(f"{name} CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    tsa_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(tsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(tsa_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    creds = TsaCredentials(ca_cert, tsa_cert, tsa_key)
    return (creds, ca_key) if with_ca_key else creds


def granted(token: bytes) -> bytes:
    """The TimeStampResp granting ``token``: SEQUENCE { PKIStatusInfo { 0 }, token }.
    Written here, not by asn1crypto from the parsed token: asn1crypto 1.5 takes a token
    length whose last octet is 0x80 (one token in 256) for an indefinite length and encodes
    the whole token again, at every level once more (some 30,000 steps, 0.3 s)."""
    return der.seq(der.seq(der.integer(0)), token)


class RequestRejected(Exception):
    def __init__(self, fail_info: str, text: str) -> None:
        super().__init__(text)
        self.fail_info = fail_info


@dataclass(frozen=True)
class Stamp:
    """What the authority did: the reply to send, and what to log."""

    reply: bytes
    token: bytes | None
    serial: int | None
    imprint: bytes | None
    error: str | None = None


class TimeStampAuthority:
    """Turns RFC 3161 requests into replies.  Encoded parts are cached: only TSTInfo varies."""

    def __init__(self, creds: TsaCredentials, *, policy: str = POLICY_OID,
                 accuracy_ms: int = 500) -> None:
        self.creds = creds
        self.policy = policy
        self.accuracy_ms = accuracy_ms
        cert_der = creds.tsa_cert.public_bytes(serialization.Encoding.DER)
        self._cert = asn1_x509.Certificate.load(cert_der)
        self._ess = tsp.SigningCertificateV2(
            {"certs": [{"cert_hash": hashlib.sha256(cert_der).digest()}]}
        )
        # Everything that does not change from one token to the next is encoded once.
        self._certset_der = token_layout.certificate_set(cert_der)
        self._sid_der = token_layout.issuer_and_serial(self._cert.issuer.dump(),
                                                       self._cert.serial_number)
        self._sha256_der = token_layout.DIGEST_ALGORITHMS["sha256"]
        self._ecdsa_der = token_layout.SIGNATURE_ALGORITHMS["ec", "sha256"]
        self._policy_der = der.oid(policy)
        secs, ms = divmod(accuracy_ms, 1000)
        self._accuracy_der = der.seq(
            (der.integer(secs) if secs else b"") + (der.tlv(0x80, der.integer(ms)[2:])
                                                    if ms else b""))
        self._tsa_name_der = der.explicit(0, der.explicit(4, self._cert.subject.dump()))
        self._attr_content_type = der.seq(der.oid(OID_CONTENT_TYPE),
                                          der.set_of(der.oid(OID_TST_INFO)))
        self._attr_ess = der.seq(der.oid(OID_SIGNING_CERT_V2), der.set_of(self._ess.dump()))
        self._oid_message_digest = der.oid(OID_MESSAGE_DIGEST)
        self._ecdsa_sha256 = ec.ECDSA(hashes.SHA256())
        self._last_time: tuple[dt.datetime, bytes, bytes] | None = None

    def parse_request(self, request: bytes) -> TsRequest:
        """A DER TimeStampReq (RFC 3161 section 3.4), parsed in full now so that nothing
        malformed is found later; anything else is a RequestRejected naming its failInfo.
        The usual form is read directly (tss/request.py), any other by asn1crypto."""
        common = read_common(request, self._policy_der)
        return common if common is not None else self._parse_any(request)

    def _parse_any(self, request: bytes) -> TsRequest:
        try:
            req = tsp.TimeStampReq.load(request, strict=True)
            req.native  # noqa: B018 - parse every field (asn1crypto parses lazily)
            canonical = tsp.TimeStampReq.load(request).dump(force=True)
            version = req["version"].native
            alg = req["message_imprint"]["hash_algorithm"]["algorithm"].native
            imprint = req["message_imprint"]["hashed_message"].native
            req_policy = req["req_policy"].dotted if req["req_policy"].native else None
            has_ext = bool(req["extensions"].native)
        except Exception:  # asn1crypto raises many types on malformed input
            raise RequestRejected("bad_data_format", "request is not a DER TimeStampReq") from None
        if canonical != request:
            raise RequestRejected("bad_data_format", "request is not DER (RFC 3161 section 3.4)")
        if version != "v1":
            raise RequestRejected("bad_request", "only TimeStampReq version 1 is supported")
        if alg not in HASH_LENGTHS:
            raise RequestRejected("bad_alg", f"hash algorithm {alg} is not accepted")
        if len(imprint) != HASH_LENGTHS[alg]:
            raise RequestRejected("bad_data_format", "imprint length does not fit its hash")
        if req_policy is not None and req_policy != self.policy:
            raise RequestRejected("unaccepted_policy", f"policy {req_policy} is not offered")
        if has_ext:
            raise RequestRejected("unaccepted_extensions", "request extensions are not supported")
        nonce = req["nonce"].native
        return TsRequest(alg, imprint, req["message_imprint"].dump(), nonce,
                         req["nonce"].dump() if nonce is not None else b"",
                         bool(req["cert_req"].native))

    def stamp(self, request: bytes, *, now: dt.datetime, serial: int) -> Stamp:
        """Answer one request.  ``serial`` must be fresh (the caller's durable counter)."""
        try:
            req = self.parse_request(request)
        except RequestRejected as exc:
            return Stamp(self.rejection(exc.fail_info, str(exc)), None, None, None, str(exc))
        token = self.issue(req, now=now, serial=serial)
        return Stamp(granted(token), token, serial, req.imprint)

    @staticmethod
    def rejection(fail_info: str, text: str) -> bytes:
        return bytes(
            TimeStampResp(
                {
                    "status": {
                        "status": "rejection",
                        "status_string": [text],
                        "fail_info": {fail_info},
                    }
                }
            ).dump()
        )

    def issue(self, req: TsRequest, *, now: dt.datetime, serial: int) -> bytes:
        """A token (DER ContentInfo) for a parsed request: cached DER fragments around a
        fresh TSTInfo, signed attributes and signature, in the one layout of
        tcms/token_layout.py."""
        gen_time, signing_time = self._times(now)
        tst_der = der.seq(
            b"\x02\x01\x01", self._policy_der, req.imprint_der, der.integer(serial), gen_time,
            self._accuracy_der, req.nonce_der, self._tsa_name_der)
        signed_attrs = der.set_of(
            self._attr_content_type, signing_time,
            der.seq(self._oid_message_digest,
                    der.set_of(der.octets(hashlib.sha256(tst_der).digest()))),
            self._attr_ess)  # signed as a SET (tag 0x31), carried as [0]
        signature = self.creds.tsa_key.sign(signed_attrs, self._ecdsa_sha256)
        return token_layout.signed_data_token(
            digest_alg=self._sha256_der, tst_info=tst_der,
            certificates=self._certset_der if req.cert_req else b"",
            sid=self._sid_der, signed_attrs=signed_attrs, signature_alg=self._ecdsa_der,
            signature=signature)

    def _times(self, now: dt.datetime) -> tuple[bytes, bytes]:
        """genTime and the signingTime attribute for ``now``: the tokens of one group
        commit share them, so they are encoded once."""
        if self._last_time is None or self._last_time[0] != now:
            self._last_time = (now, der.generalized_time(now), der.seq(
                der.oid(OID_SIGNING_TIME), der.set_of(der.utc_time(now))))
        return self._last_time[1], self._last_time[2]
