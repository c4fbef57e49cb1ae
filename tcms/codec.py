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
    if encode(value) != data:
        raise CodecError("not canonical CBOR (or trailing bytes)")
    return value


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
