"""Deterministic CBOR encoding (RFC 8949 section 4.2) for everything TCMS signs or hashes.

Signed structures are CBOR *arrays* of integers, byte strings, text strings, booleans,
null and nested arrays; maps are not used in signed data, so the core deterministic rules
(shortest integer forms, definite lengths) make the encoding unique.  Decoding is strict:
the input must be exactly one item, of the allowed types, and must re-encode to the very
same bytes, so two different byte strings can never decode to the same value.
"""

from __future__ import annotations

from typing import TypeAlias

import cbor2

Value: TypeAlias = "int | bytes | str | bool | list[Value] | None"

MAX_DEPTH = 16


class CodecError(ValueError):
    """Input is not a canonical TCMS CBOR item."""


def _check(value: object, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise CodecError("nesting too deep")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not -(2**64) <= value < 2**64:
            raise CodecError("integer out of range")
        return
    if isinstance(value, (bytes, str)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check(item, depth + 1)
        return
    raise CodecError(f"type not allowed in signed data: {type(value).__name__}")


def encode(value: Value | tuple[object, ...]) -> bytes:
    """Encode a value deterministically.  Tuples are encoded as arrays."""
    _check(value)
    return bytes(cbor2.dumps(value, canonical=True))


def _normalise(value: object) -> Value:
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, (bool, int, bytes, str)) or value is None:
        return value
    raise CodecError(f"type not allowed in signed data: {type(value).__name__}")


BIG = 64 * 1024  # a byte string this long is checked where it is, not encoded again


def bytes_head(size: int) -> bytes:
    """The head of a byte string of ``size`` bytes (major type 2, shortest form)."""
    if size < 24:
        return bytes([0x40 + size])
    for extra, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if size < 1 << (8 * width):
            return bytes([0x40 + extra]) + size.to_bytes(width, "big")
    raise CodecError("a byte string too long for CBOR")


def decode(data: bytes) -> Value:
    """Decode exactly one canonical item; raise CodecError for anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError("input is not bytes")
    data = bytes(data)
    try:
        value = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for malformed input
        raise CodecError(f"malformed CBOR: {exc}") from None
    value = _normalise(value)
    if not _encodes_as(value, data):
        raise CodecError("not canonical CBOR (or trailing bytes)")
    return value


def _encodes_as(value: Value, data: bytes) -> bool:
    """``encode(value) == data``, without encoding again the large byte strings an array
    holds (m3's c, the payload's m0: as large as a mail): each is compared by its head,
    where the encoding of the items before it ends (then the bytes that follow the head
    are the ones the value was decoded from)."""
    if not isinstance(value, list) or not any(
            isinstance(v, bytes) and len(v) >= BIG for v in value):
        return encode(value) == data
    _check(value)  # the depth bound counts from the array, as encode(value) does
    view = memoryview(data)
    nones = encode([None] * len(value))
    pos = len(nones) - len(value)  # the array's head: the same for any items
    if view[:pos] != nones[:pos]:
        return False
    for item in value:
        if isinstance(item, bytes) and len(item) >= BIG:
            head = bytes_head(len(item))
            if view[pos:pos + len(head)] != head:
                return False
            pos += len(head) + len(item)
        else:
            enc = encode(item)
            if view[pos:pos + len(enc)] != enc:
                return False
            pos += len(enc)
    return pos == len(data)


def decode_array(data: bytes, tag: str, length: int) -> list[Value]:
    """Decode an array that starts with the text ``tag`` and has exactly ``length`` items."""
    value = decode(data)
    if not isinstance(value, list) or not value:
        raise CodecError(f"expected a {tag} array")
    if value[0] != tag:
        raise CodecError(f"expected {tag}, got {value[0]!r:.40}")
    if len(value) != length:
        raise CodecError(f"{tag}: expected {length} fields, got {len(value)}")
    return value
