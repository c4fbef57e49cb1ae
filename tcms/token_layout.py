"""The one DER layout of an RFC 3161 time-stamp token (a CMS ``ContentInfo`` holding
``SignedData``), shared by the TSA that writes tokens and the verifier that accepts only this
encoding.

Only the TSTInfo, the signed attributes, the certificate and the signature value are
covered by a signature or a hash; everything around them (versions, algorithm identifiers,
the signer identifier, the certificate set, the lengths) could be written in many ways that
decode to the same values.  A token has exactly one accepted encoding: the one
``signed_data_token`` builds from its parts::

    ContentInfo { id-signedData, [0] SignedData {
        version 3, digestAlgorithms SET { <digest> },
        encapContentInfo { id-ct-TSTInfo, [0] OCTET STRING <TSTInfo> },
        certificates [0] { <the TSA certificate> },          -- only if certReq
        signerInfos SET { SignerInfo {
            version 1, sid { <issuer Name of the certificate, its bytes>, <serial> },
            <digest>, signedAttrs [0] <as signed>, <signature algorithm>,
            OCTET STRING <signature> } } } }

Algorithm identifiers are written exactly as ``DIGEST_ALGORITHMS`` and
``SIGNATURE_ALGORITHMS`` hold them: SHA-2 with NULL parameters (as this TSA has always
written them), ECDSA and Ed25519 without parameters (RFC 5758, RFC 8419), RSA PKCS#1 v1.5
with NULL (RFC 4055).
"""

from __future__ import annotations

from tcms import der

OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_TST_INFO = "1.2.840.113549.1.9.16.1.4"
_SIGNED_DATA_OID = der.oid(OID_SIGNED_DATA)
_TST_INFO_OID = der.oid(OID_TST_INFO)
_VERSION_1, _VERSION_3 = der.integer(1), der.integer(3)

DIGEST_ALGORITHMS: dict[str, bytes] = {
    name: der.seq(der.oid(oid), b"\x05\x00") for name, oid in (
        ("sha256", "2.16.840.1.101.3.4.2.1"),
        ("sha384", "2.16.840.1.101.3.4.2.2"),
        ("sha512", "2.16.840.1.101.3.4.2.3"),
    )
}

# (key type, digest) -> the signatureAlgorithm of the SignerInfo
SIGNATURE_ALGORITHMS: dict[tuple[str, str], bytes] = {
    **{("ec", d): der.seq(der.oid(o)) for d, o in (
        ("sha256", "1.2.840.10045.4.3.2"), ("sha384", "1.2.840.10045.4.3.3"),
        ("sha512", "1.2.840.10045.4.3.4"))},
    **{("rsa", d): der.seq(der.oid(o), b"\x05\x00") for d, o in (
        ("sha256", "1.2.840.113549.1.1.11"), ("sha384", "1.2.840.113549.1.1.12"),
        ("sha512", "1.2.840.113549.1.1.13"))},
    **{("ed25519", d): der.seq(der.oid("1.3.101.112")) for d in DIGEST_ALGORITHMS},
}


def certificate_set(*certificates: bytes) -> bytes:
    """``certificates [0] IMPLICIT CertificateSet`` (a SET OF: DER sorts the elements)."""
    return b"\xa0" + der.set_of(*certificates)[1:]


def issuer_and_serial(issuer_name: bytes, serial: int) -> bytes:
    """The SignerInfo's ``sid``: the certificate's issuer Name (its very bytes) and serial."""
    return der.seq(issuer_name, der.integer(serial))


def signed_data_token(*, digest_alg: bytes, tst_info: bytes, certificates: bytes, sid: bytes,
                      signed_attrs: bytes, signature_alg: bytes, signature: bytes) -> bytes:
    """The token (DER ContentInfo).  ``certificates`` is a whole ``certificate_set`` or b"";
    ``signed_attrs`` is the DER SET (tag 0x31) that was signed: it is carried as [0]."""
    signer_info = der.seq(_VERSION_1, sid, digest_alg, b"\xa0" + signed_attrs[1:],
                          signature_alg, der.octets(signature))
    signed_data = der.seq(
        _VERSION_3, der.set_of(digest_alg),
        der.seq(_TST_INFO_OID, der.explicit(0, der.octets(tst_info))),
        certificates, der.set_of(signer_info))
    return der.seq(_SIGNED_DATA_OID, der.explicit(0, signed_data))
