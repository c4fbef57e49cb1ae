"""A time-stamp token written again in the other ways its unsigned parts can be encoded:
what verify_token accepted before it insisted on one encoding (issue 11, item 9)."""

from __future__ import annotations

from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tcms import der
from tcms.token_layout import (
    DIGEST_ALGORITHMS,
    certificate_set,
    issuer_and_serial,
    signed_data_token,
)

REENCODINGS = ["trailing-bytes", "extra-certificate", "certificate-twice",
               "sid-printable-string", "sid-other-case", "sid-serial-leading-zero",
               "digest-params-absent", "digest-oid-padded", "digest-algorithms-extra",
               "signature-alg-null-params", "signature-alg-sha384", "signature-alg-rsa",
               "version-leading-zero", "length-not-minimal"]


def reencodings(token: bytes, ca_cert: x509.Certificate) -> dict[str, tuple[bytes, str]]:
    """The token written again with unsigned parts changed: each decodes to the same values
    (or to values the old checks accepted) and must be refused, naming what is wrong."""
    sd = asn1_cms.ContentInfo.load(token)["content"]
    si = sd["signer_infos"][0]
    cert = sd["certificates"][0].chosen
    ca = ca_cert.public_bytes(serialization.Encoding.DER)
    sha256, ecdsa = DIGEST_ALGORITHMS["sha256"], der.seq(der.oid("1.2.840.10045.4.3.2"))
    issuer, serial = cert.issuer.dump(), cert.serial_number
    parts: dict[str, bytes] = {
        "digest_alg": sha256, "tst_info": sd["encap_content_info"]["content"].contents,
        "certificates": certificate_set(cert.dump()), "sid": issuer_and_serial(issuer, serial),
        "signed_attrs": si["signed_attrs"].untag().dump(), "signature_alg": ecdsa,
        "signature": si["signature"].native}
    assert signed_data_token(**parts) == token  # the parts rebuild the token exactly

    def variant(**changed: bytes) -> bytes:
        return signed_data_token(**{**parts, **changed})

    def in_signed_data(old: bytes, new: bytes) -> bytes:
        """The SignedData's first ``old`` written as ``new``, the outer lengths adjusted."""
        body = sd.contents
        assert old in body
        return der.seq(der.oid("1.2.840.113549.1.7.2"),
                       der.explicit(0, der.tlv(0x30, body.replace(old, new, 1))))

    cn = dict(cert.issuer.native)
    printable = asn1_x509.Name.build(cn, use_printable=True).dump()
    lower = asn1_x509.Name.build({k: v.lower() for k, v in cn.items()}).dump()
    assert printable != issuer and lower != issuer
    padded_serial = der.tlv(0x02, b"\x00" + der.integer(serial)[2:])
    # SHA-256 with its last arc written 0x80 0x01 (a non-minimal OID encoding)
    oid_padded = der.seq(der.tlv(0x06, bytes.fromhex("6086480165030402") + b"\x80\x01"),
                         b"\x05\x00")
    assert token[1] == 0x82
    return {
        "trailing-bytes": (token + b"\x05\x00", "trailing bytes"),
        "extra-certificate": (variant(certificates=certificate_set(cert.dump(), ca)),
                              "exactly one certificate"),
        "certificate-twice": (variant(certificates=certificate_set(cert.dump(), cert.dump())),
                              "exactly one certificate"),
        "sid-printable-string": (variant(sid=der.seq(printable, der.integer(serial))), "sid"),
        "sid-other-case": (variant(sid=der.seq(lower, der.integer(serial))), "sid"),
        "sid-serial-leading-zero": (variant(sid=der.seq(issuer, padded_serial)), "sid"),
        "digest-params-absent": (variant(digest_alg=der.seq(der.oid("2.16.840.1.101.3.4.2.1"))),
                                 "digest algorithm"),
        "digest-oid-padded": (variant(digest_alg=oid_padded), "digest algorithm"),
        "digest-algorithms-extra": (in_signed_data(der.set_of(sha256), der.set_of(
            sha256, DIGEST_ALGORITHMS["sha384"])), "digestAlgorithms"),
        "signature-alg-null-params": (
            variant(signature_alg=der.seq(der.oid("1.2.840.10045.4.3.2"), b"\x05\x00")),
            "signature algorithm"),
        "signature-alg-sha384": (variant(signature_alg=der.seq(der.oid("1.2.840.10045.4.3.3"))),
                                 "signature algorithm"),
        "signature-alg-rsa": (variant(signature_alg=der.seq(
            der.oid("1.2.840.113549.1.1.11"), b"\x05\x00")), "signature algorithm"),
        "version-leading-zero": (in_signed_data(b"\x02\x01\x03", b"\x02\x02\x00\x03"),
                                 "one DER encoding"),
        "length-not-minimal": (token[:1] + b"\x83\x00" + token[2:], "not DER"),
    }
