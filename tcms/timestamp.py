"""RFC 3161 time stamps, client side: build requests (m1), read replies (m2), verify tokens.

Verification is offline and strict: the token must be in its one DER encoding (the layout
of ``tcms.token_layout``, rebuilt from its parts and compared byte for byte), its imprint
must be the expected hash, the ESS signingCertificateV2 attribute must name the embedded
TSA certificate, the CMS signature must verify, and the TSA certificate must be issued by a
trusted CA, be valid at genTime, and carry the critical extended key usage timeStamping
(and nothing else).  Every defect of a request, reply or token is a TimestampError.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms, tsp
from asn1crypto.core import Choice, Void
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tcms import der, token_layout
from tcms.crypto import ct_equal
from tcms.text import printable

_HASHES = {
    "sha256": (hashlib.sha256, hashes.SHA256),
    "sha384": (hashlib.sha384, hashes.SHA384),
    "sha512": (hashlib.sha512, hashes.SHA512),
}


class TimestampError(Exception):
    """A time-stamp request, reply or token is malformed or does not verify."""


@dataclass(frozen=True)
class TokenInfo:
    gen_time: dt.datetime
    serial: int
    policy: str
    nonce: int | None
    tsa_subject: str
    hash_alg: str
    imprint: bytes


class TimeStampResp(tsp.TimeStampResp):  # type: ignore[misc]
    """RFC 3161's TimeStampResp: the token is OPTIONAL (absent on rejection)."""

    _fields = [
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


def _der(value: Any) -> bytes:
    """The bytes a parsed ASN.1 value was read from (its lengths are checked to be minimal DER
    by ``check_der_lengths``), never encoded again.  Not ``value.dump()``: asn1crypto 1.5
    takes a definite length whose last octet is 0x80 (``30 82 03 80``) for an indefinite one
    and then encodes the value's whole subtree again, at every level below once more, at a
    cost exponential in its depth (the fuzz suite found it: a 3.5 KB token with 64 ESS
    certificate identifiers took 15 s to read, so one m3 could stall a gateway for minutes)."""
    if isinstance(value, Choice) and not value.explicit:  # the chosen alternative's bytes
        return _der(value.chosen)
    header = value._header
    if header is None:  # built here, not parsed: nothing was read
        return bytes(value.dump())
    return bytes(header + value.contents + value._trailer)


def make_request(imprint: bytes, *, hash_alg: str = "sha256", nonce: int | None = None,
                 cert_req: bool = True, policy: str | None = None) -> tuple[bytes, int]:
    """A DER TimeStampReq over a precomputed imprint; returns (request, nonce)."""
    if hash_alg not in _HASHES:
        raise TimestampError(f"unsupported hash {hash_alg}")
    if nonce is None:
        nonce = int.from_bytes(os.urandom(8), "big")
    fields: dict[str, object] = {
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": hash_alg}, "hashed_message": imprint},
        "nonce": nonce,
        "cert_req": cert_req,
    }
    if policy:
        fields["req_policy"] = policy
    return tsp.TimeStampReq(fields).dump(), nonce


def token_from_reply(reply: bytes) -> bytes:
    """Extract the token (a DER ContentInfo) from a TimeStampResp, or say why there is none.

    Every failure, a malformed reply included, is a TimestampError: the sender's machine
    turns it into an ignored reply, and the gateway into a failed time stamp."""
    try:
        resp = TimeStampResp.load(reply, strict=True)
        status_info = resp["status"]
        status = status_info["status"].native
        text = "; ".join(status_info["status_string"].native or [])
        fail = ",".join(sorted(status_info["fail_info"].native or []))
        token = resp["time_stamp_token"]
        token_der = None if isinstance(token, Void) else _der(token)
    except Exception:  # asn1crypto raises many types on malformed input
        raise TimestampError("malformed time-stamp reply: not a DER TimeStampResp") from None
    if status not in ("granted", "granted_with_mods"):
        # a status RFC 3161 does not name is read as a number, of any size: not shown
        named = status if isinstance(status, str) else "unknown status"
        raise TimestampError(printable(f"time-stamp refused: {named} {fail} {text}".strip()))
    if token_der is None:
        raise TimestampError("malformed time-stamp reply: granted without a token")
    return token_der


def _key_kind(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec"
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    raise TimestampError("unsupported TSA key type")


def _verify_cms_signature(cert: x509.Certificate, signature: bytes, data: bytes,
                          digest: str) -> None:
    key = cert.public_key()
    hash_cls = _HASHES[digest][1]
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hash_cls()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hash_cls())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            raise TimestampError("unsupported TSA key type")
    except InvalidSignature:
        raise TimestampError("TSA signature does not verify") from None


def verify_token(token: bytes, imprint: bytes, trusted_ca: x509.Certificate,
                 *, nonce: int | None = None) -> TokenInfo:
    """Verify an RFC 3161 token over ``imprint`` against a trusted CA; return what it says.

    Strict: one token has one accepted encoding, the DER layout of ``tcms.token_layout``
    (nothing after the ContentInfo, exactly one certificate, the TSA's, a ``sid`` that is
    that certificate's issuer and serial byte for byte, the digest and signature algorithm
    identifiers exactly as written there); the whole token is rebuilt from its parts and
    compared byte for byte.  Any defect, including a malformed structure found late by lazy
    ASN.1 parsing, raises TimestampError.

    One variation is beyond any encoding rule: an ECDSA signature (r, s) also verifies as
    (r, n - s), and tokens this TSA has already issued carry either, so both are accepted."""
    try:
        return _verify_token(token, imprint, trusted_ca, nonce)
    except TimestampError:
        raise
    except Exception as exc:  # asn1crypto and cryptography raise many types on bad input
        raise TimestampError(f"malformed time-stamp token: {type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                             ) from None


@dataclass(frozen=True)
class _Parts:
    """What a token says, as parsed (lazily parsed fields forced) before any check."""

    digest: str
    digest_alg_der: bytes
    listed_der: list[bytes]
    sig_alg_der: bytes
    tst_der: bytes
    tst: tsp.TSTInfo
    certs: list[cms.Certificate]
    sid_der: bytes
    attrs: dict[str, object]
    signed_der: bytes
    signature: bytes


def _parse(token: bytes) -> _Parts:
    try:
        info = cms.ContentInfo.load(token)
        if len(_der(info)) != len(token):
            raise TimestampError("token has trailing bytes after its ContentInfo")
        if info["content_type"].native != "signed_data":
            raise TimestampError("token is not CMS SignedData")
        sd = info["content"]
        if sd["version"].native != "v3":
            raise TimestampError("SignedData version must be 3 (RFC 5652 for id-ct-TSTInfo)")
        encap = sd["encap_content_info"]
        if encap["content_type"].native != "tst_info":
            raise TimestampError("token does not hold a TSTInfo")
        tst_der = encap["content"].contents
        if not isinstance(tst_der, bytes):
            raise TimestampError("token has no TSTInfo content")
        tst = tsp.TSTInfo.load(tst_der)
        tst.native  # noqa: B018 - parse every field now, not lazily later
        signer_infos = sd["signer_infos"]
        if len(signer_infos) != 1:
            raise TimestampError("token must have exactly one signer")
        si = signer_infos[0]
        if si["version"].native != "v1":
            raise TimestampError("SignerInfo version must be 1 (issuerAndSerialNumber)")
        choices = list(sd["certificates"]) if sd["certificates"] else []
        if any(c.name != "certificate" for c in choices):
            raise TimestampError("token carries something other than X.509 certificates")
        signed_attrs = si["signed_attrs"]
        if not signed_attrs:
            raise TimestampError("token has no signed attributes")
        if sd["crls"].native or si["unsigned_attrs"].native:
            raise TimestampError("token carries CRLs or unsigned attributes")
        parts = _Parts(
            digest=_digest_name(si["digest_algorithm"]),
            digest_alg_der=_der(si["digest_algorithm"]),
            listed_der=[_der(a) for a in sd["digest_algorithms"]],
            sig_alg_der=_der(si["signature_algorithm"]),
            tst_der=tst_der, tst=tst, certs=[c.chosen for c in choices],
            sid_der=_der(si["sid"]),
            attrs={a["type"].native: a["values"] for a in signed_attrs},
            signed_der=der.tlv(0x31, signed_attrs.contents),  # signed as a SET, sent as [0]
            signature=si["signature"].native)
        check_der_lengths(token)
    except TimestampError:
        raise
    except Exception as exc:
        raise TimestampError(f"malformed time-stamp token: {exc}") from None
    if parts.digest not in _HASHES:
        raise TimestampError(f"unsupported digest {parts.digest}")
    return parts


def _check_encoding(token: bytes, p: _Parts, signer: cms.Certificate,
                    cert: x509.Certificate) -> None:
    """The token is the one DER encoding of its parts (see ``tcms.token_layout``)."""
    digest_alg = token_layout.DIGEST_ALGORITHMS[p.digest]
    if p.digest_alg_der != digest_alg:
        raise TimestampError("the signer's digest algorithm is not encoded as "
                             "SEQUENCE { OID, NULL }")
    if p.listed_der != [digest_alg]:
        raise TimestampError("digestAlgorithms must list the signer's digest alone")
    sid = token_layout.issuer_and_serial(_der(signer["tbs_certificate"]["issuer"]),
                                         signer.serial_number)
    if p.sid_der != sid:
        raise TimestampError("the signer identifier (sid) is not exactly the TSA "
                             "certificate's issuer and serial number")
    sig_alg = token_layout.SIGNATURE_ALGORITHMS[_key_kind(cert), p.digest]
    if p.sig_alg_der != sig_alg:
        raise TimestampError("the signature algorithm is not the one for the TSA key and "
                             "digest, encoded exactly")
    canonical = token_layout.signed_data_token(
        digest_alg=digest_alg, tst_info=p.tst_der,
        certificates=token_layout.certificate_set(_der(signer)), sid=sid,
        signed_attrs=p.signed_der, signature_alg=sig_alg, signature=p.signature)
    if canonical != token:
        raise TimestampError("token is not in its one DER encoding")


def _verify_token(token: bytes, imprint: bytes, trusted_ca: x509.Certificate,
                  nonce: int | None) -> TokenInfo:
    p = _parse(token)
    tst, attrs, digest = p.tst, p.attrs, p.digest
    hash_alg = _digest_name(tst["message_imprint"]["hash_algorithm"])
    hashed = tst["message_imprint"]["hashed_message"].native
    if hash_alg != "sha256" or not ct_equal(hashed, imprint):
        raise TimestampError("token imprint does not match the time-stamped data")
    token_nonce = tst["nonce"].native
    if nonce is not None and token_nonce != nonce:
        raise TimestampError("token nonce does not match the request")
    # signed attributes: content type, message digest, ESS signing certificate v2
    ctype = attrs.get("content_type")
    if ctype is None or ctype[0].native != "tst_info":  # type: ignore[index]
        raise TimestampError("signed content-type attribute is not id-ct-TSTInfo")
    md = attrs.get("message_digest")
    if md is None or not ct_equal(md[0].native,  # type: ignore[index]
                                  _HASHES[digest][0](p.tst_der).digest()):
        raise TimestampError("message-digest attribute does not match the TSTInfo")
    # the signer certificate: the one certificate, named by sid and by the ESS attribute
    if not p.certs:
        raise TimestampError("token does not carry its TSA certificate")
    if len(p.certs) != 1:
        raise TimestampError("token must carry exactly one certificate: the TSA's")
    signer = p.certs[0]
    scv2 = attrs.get("signing_certificate_v2")
    if scv2 is None:
        raise TimestampError("token lacks the ESS signingCertificateV2 attribute")
    ess = scv2[0]["certs"][0]  # type: ignore[index]
    ess_alg = ess["hash_algorithm"]["algorithm"].native
    if ess_alg not in _HASHES or not ct_equal(
        ess["cert_hash"].native, _HASHES[ess_alg][0](_der(signer)).digest()
    ):
        raise TimestampError("ESS signingCertificateV2 does not name the TSA certificate")
    cert = x509.load_der_x509_certificate(_der(signer))
    _check_encoding(token, p, signer, cert)
    _verify_cms_signature(cert, p.signature, p.signed_der, digest)
    gen_time = tst["gen_time"].native
    check_tsa_certificate(cert, trusted_ca, gen_time)
    return TokenInfo(
        gen_time=gen_time,
        serial=tst["serial_number"].native,
        policy=tst["policy"].dotted,
        nonce=token_nonce,
        tsa_subject=cert.subject.rfc4514_string(),
        hash_alg=hash_alg,
        imprint=hashed,
    )


def _digest_name(alg: object) -> str:
    """A digest AlgorithmIdentifier's name; its parameters must be absent or NULL."""
    params = alg["parameters"]  # type: ignore[index]
    if _der(params) not in (b"", b"\x05\x00"):
        raise TimestampError("digest algorithm parameters must be absent or NULL")
    return str(alg["algorithm"].native)  # type: ignore[index]


def check_der_lengths(data: bytes) -> None:
    """Every TLV in ``data`` has a definite, minimal (DER) length and nothing trails.

    For a token this reaches into the parts its rebuilt encoding takes as they are (the
    certificate and the signed attributes, which a signature covers anyway)."""
    stack = [(0, len(data))]
    while stack:
        pos, end = stack.pop()
        while pos < end:
            if end - pos < 2:
                raise TimestampError("token is not DER: truncated element")
            tag = data[pos]
            if tag & 0x1F == 0x1F:
                raise TimestampError("token is not DER: multi-byte tags are not used")
            first = data[pos + 1]
            pos += 2
            if first < 0x80:
                length = first
            else:
                n = first & 0x7F
                if n == 0 or n > 4 or pos + n > end:
                    raise TimestampError("token is not DER: indefinite or oversized length")
                length = int.from_bytes(data[pos:pos + n], "big")
                if length < 0x80 or data[pos] == 0:
                    raise TimestampError("token is not DER: length not in shortest form")
                pos += n
            if pos + length > end:
                raise TimestampError("token is not DER: element overruns its container")
            if tag & 0x20:  # constructed: walk its contents too
                stack.append((pos, pos + length))
            pos += length


def check_tsa_certificate(cert: x509.Certificate, trusted_ca: x509.Certificate,
                          at: dt.datetime) -> None:
    try:
        cert.verify_directly_issued_by(trusted_ca)
    except (ValueError, TypeError, InvalidSignature):
        raise TimestampError("TSA certificate is not issued by the trusted CA") from None
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise TimestampError("TSA certificate was not valid at the token's time")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        raise TimestampError("TSA certificate lacks extendedKeyUsage timeStamping") from None
    if not eku.critical or list(eku.value) != [ExtendedKeyUsageOID.TIME_STAMPING]:
        raise TimestampError("TSA certificate's extendedKeyUsage must be critical timeStamping")
