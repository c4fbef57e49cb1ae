"""An RFC 3161 TimeStampReq as the TSA uses it, and a fast strict reader for its usual form.

``read_common`` reads, in a few microseconds, the DER shape that RFC 3161 clients send
(OpenSSL's ``ts -query``, this project's ``make_request``)::

    SEQUENCE { INTEGER 1,
               SEQUENCE { SEQUENCE { OID sha256|sha384|sha512 [, NULL] }, OCTET STRING },
               [OID <this TSA's policy>] [INTEGER nonce] [BOOLEAN TRUE] }

with minimal definite lengths and nothing after the request.  Anything else, valid or not,
gives None, and the caller parses with asn1crypto in full (tss/authority.py): this reader
never accepts what that parser refuses, and answers with the same fields
(tests/test_tss_request.py checks both on many valid and mutated requests).
"""

from __future__ import annotations

from dataclasses import dataclass

_HASH_OIDS: dict[bytes, str] = {
    bytes.fromhex("0609608648016503040201"): "sha256",
    bytes.fromhex("0609608648016503040202"): "sha384",
    bytes.fromhex("0609608648016503040203"): "sha512",
}
HASH_LENGTHS = {"sha256": 32, "sha384": 48, "sha512": 64}


@dataclass(frozen=True, slots=True)
class TsRequest:
    """What a token needs from a request: the MessageImprint (its DER, as the request
    carried it, and its values), the nonce (its DER, b"" if absent) and certReq."""

    hash_alg: str
    imprint: bytes
    imprint_der: bytes
    nonce: int | None
    nonce_der: bytes
    cert_req: bool


def _header(data: bytes, pos: int, end: int) -> tuple[int, int, int] | None:
    """(tag, start of content, end of content) of the element at ``pos``, if its length
    is definite, minimal and inside ``end``; else None."""
    if pos + 2 > end:
        return None
    tag, first = data[pos], data[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    elif first == 0x81 and pos + 3 <= end and data[pos + 2] >= 0x80:
        start, length = pos + 3, data[pos + 2]
    elif first == 0x82 and pos + 4 <= end and data[pos + 2] != 0:
        start, length = pos + 4, (data[pos + 2] << 8) | data[pos + 3]
        if length < 0x100:
            return None
    else:
        return None
    if start + length > end:
        return None
    return tag, start, start + length


def read_common(data: bytes, policy_der: bytes) -> TsRequest | None:
    """The request, if it has the usual form described above; else None."""
    outer = _header(data, 0, len(data))
    if outer is None or outer[0] != 0x30 or outer[2] != len(data):
        return None
    _, pos, end = outer
    if data[pos:pos + 3] != b"\x02\x01\x01":
        return None
    pos += 3
    mi = _header(data, pos, end)
    if mi is None or mi[0] != 0x30:
        return None
    alg = _header(data, mi[1], mi[2])
    if alg is None or alg[0] != 0x30:
        return None
    oid_bytes = data[alg[1]:alg[1] + 11]
    hash_alg = _HASH_OIDS.get(oid_bytes)
    if hash_alg is None or data[alg[1] + 11:alg[2]] not in (b"", b"\x05\x00"):
        return None
    digest = _header(data, alg[2], mi[2])
    if digest is None or digest[0] != 0x04 or digest[2] != mi[2] \
            or digest[2] - digest[1] != HASH_LENGTHS[hash_alg]:
        return None
    imprint_der, imprint = data[pos:mi[2]], data[digest[1]:digest[2]]
    pos = mi[2]
    if data.startswith(policy_der, pos):
        pos += len(policy_der)
    nonce, nonce_der = None, b""
    if pos < end and data[pos] == 0x02:
        el = _header(data, pos, end)
        if el is None or el[2] == el[1]:
            return None
        body = data[el[1]:el[2]]
        if len(body) > 1 and ((body[0] == 0 and body[1] < 0x80)
                              or (body[0] == 0xFF and body[1] >= 0x80)):
            return None
        nonce, nonce_der = int.from_bytes(body, "big", signed=True), data[pos:el[2]]
        pos = el[2]
    cert_req = data[pos:pos + 3] == b"\x01\x01\xff"
    if cert_req:
        pos += 3
    if pos != end:
        return None
    return TsRequest(hash_alg, imprint, imprint_der, nonce, nonce_der, cert_req)
