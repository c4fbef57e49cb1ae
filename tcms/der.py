"""Minimal DER writing (X.690): tag-length-value assembly of fragments, for the TSA's hot
path (each token costs one signature and a few joins) and for the verifier, which rebuilds a
token's one DER encoding to compare it byte for byte.  Parsing stays with asn1crypto; this
only concatenates, with definite minimal lengths."""

from __future__ import annotations

import datetime as dt


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + n.to_bytes(size, "big") + content


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def set_of(*parts: bytes) -> bytes:
    """A SET OF in DER: the encoded elements sorted."""
    return tlv(0x31, b"".join(sorted(parts)))


def integer(n: int) -> bytes:
    if n < 0:
        raise ValueError("only non-negative integers are written here")
    return tlv(0x02, n.to_bytes((n.bit_length() + 8) // 8, "big"))


def octets(data: bytes) -> bytes:
    return tlv(0x04, data)


def oid(dotted: str) -> bytes:
    arcs = [int(x) for x in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def explicit(number: int, content: bytes) -> bytes:
    return tlv(0xA0 | number, content)


def generalized_time(t: dt.datetime) -> bytes:
    """GeneralizedTime in UTC; fractional seconds without trailing zeros (DER)."""
    t = t.astimezone(dt.UTC)
    frac = f"{t.microsecond:06d}".rstrip("0")
    text = t.strftime("%Y%m%d%H%M%S") + ("." + frac if frac else "") + "Z"
    return tlv(0x18, text.encode())


def utc_time(t: dt.datetime) -> bytes:
    return tlv(0x17, t.astimezone(dt.UTC).strftime("%y%m%d%H%M%SZ").encode())
