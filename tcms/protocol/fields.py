"""The fields of protocol messages, decoded strictly: each decoder takes a decoded CBOR
value and returns it typed, or raises ``MessageError`` naming the field (tcms/protocol/
messages.py builds the messages from them)."""

from __future__ import annotations

from tcms import codec
from tcms.crypto import PROTOCOL
from tcms.identity import Party, party_name_error

# The latest time a deadline may name: 9999-12-31 23:59:59 UTC, the last second that dates
# can be shown for.  A deadline past it is malformed, not merely far away.
MAX_TIME = 253_402_300_799
# Characters that must never reach a header or a notice: C0/C1 controls, DEL, and the
# Unicode line and paragraph separators (a mail client may break a line at them).
FORBIDDEN = frozenset([*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)),
                        "\u2028", "\u2029", "\u0085"])


class MessageError(ValueError):
    """A protocol message is malformed (wrong type, shape, field types or sizes)."""


def tag(name: str) -> str:
    return f"{PROTOCOL}/{name}"


def as_bytes(v: codec.Value, what: str, size: int | None = None) -> bytes:
    if not isinstance(v, bytes) or (size is not None and len(v) != size):
        raise MessageError(f"{what}: expected {size or 'some'} bytes")
    return v


def as_int(v: codec.Value, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise MessageError(f"{what}: expected a non-negative integer")
    return v


def as_str(v: codec.Value, what: str, limit: int = 998) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise MessageError(f"{what}: expected text of at most {limit} characters")
    return v


def as_line(v: codec.Value, what: str, limit: int = 998) -> str:
    """Text shown to people on one line (a subject): no control or line-break characters."""
    text = as_str(v, what, limit)
    if not FORBIDDEN.isdisjoint(text):
        raise MessageError(f"{what}: holds a control or line-break character")
    return text


def one_line(text: str, limit: int = 900) -> str:
    """``text`` made fit for a header or a notice line: control and line-break characters
    become spaces, runs of white space one space, at most ``limit`` characters."""
    cleaned = "".join(" " if c in FORBIDDEN else c for c in text)
    return " ".join(cleaned.split())[:limit]


def as_time(v: codec.Value, what: str) -> int:
    t = as_int(v, what)
    if t > MAX_TIME:
        raise MessageError(f"{what}: later than the year 9999")
    return t


def as_list(v: codec.Value, what: str, n: int) -> list[codec.Value]:
    if not isinstance(v, list) or len(v) != n:
        raise MessageError(f"{what}: expected {n} items")
    return v


def decode_array(data: bytes, name: str, n: int) -> list[codec.Value]:
    try:
        return codec.decode_array(data, tag(name), n)
    except codec.CodecError as exc:
        raise MessageError(str(exc)) from None


def as_party(v: codec.Value, what: str) -> Party:
    try:
        party = Party.from_value(v)
    except (codec.CodecError, ValueError):
        raise MessageError(f"{what}: malformed party") from None
    why = party_name_error(party.name)
    if why is not None or party.name != party.name.strip().lower():
        raise MessageError(f"{what}: not a usable address ({why or 'not lower-case'})")
    return party
