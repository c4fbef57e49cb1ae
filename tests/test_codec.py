from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcms import codec

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.binary(max_size=64)
    | st.text(max_size=32),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


@given(values)
def test_roundtrip_is_identity(value: codec.Value) -> None:
    data = codec.encode(value)
    assert codec.decode(data) == value
    assert codec.encode(codec.decode(data)) == data


def test_known_encodings() -> None:
    # RFC 8949 appendix A examples, restricted to the types TCMS signs
    assert codec.encode(0).hex() == "00"
    assert codec.encode(23).hex() == "17"
    assert codec.encode(24).hex() == "1818"
    assert codec.encode(1000000).hex() == "1a000f4240"
    assert codec.encode(-1000).hex() == "3903e7"
    assert codec.encode(b"\x01\x02\x03\x04").hex() == "4401020304"
    assert codec.encode("IETF").hex() == "6449455446"
    assert codec.encode([1, [2, 3], [4, 5]]).hex() == "8301820203820405"
    assert codec.encode([True, None]).hex() == "82f5f6"


@pytest.mark.parametrize(
    ("hexdata", "why"),
    [
        ("1817", "non-shortest integer"),
        ("9f01ff", "indefinite-length array"),
        ("5f4101ff", "indefinite-length bytes"),
        ("a10102", "map"),
        ("c11a00000000", "tag"),
        ("f93c00", "float"),
        ("8201", "truncated array"),
        ("0000", "trailing bytes"),
        ("", "empty input"),
        ("62c328", "invalid UTF-8"),
    ],
)
def test_rejects_non_canonical_or_foreign_input(hexdata: str, why: str) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode(bytes.fromhex(hexdata))


def test_decode_array_checks_tag_and_length() -> None:
    data = codec.encode(["TCMS1/M4", b"x", b"y"])
    assert codec.decode_array(data, "TCMS1/M4", 3)[1] == b"x"
    with pytest.raises(codec.CodecError, match="expected TCMS1/M6"):
        codec.decode_array(data, "TCMS1/M6", 3)
    with pytest.raises(codec.CodecError, match="expected 4 fields"):
        codec.decode_array(data, "TCMS1/M4", 4)


def test_deep_nesting_rejected() -> None:
    v: codec.Value = []
    for _ in range(codec.MAX_DEPTH + 2):
        v = [v]
    with pytest.raises(codec.CodecError, match="too deep"):
        codec.encode(v)


BIGS = st.binary(max_size=300).map(lambda b: b + bytes(codec.BIG))  # small to draw


@given(st.lists(values, max_size=4), BIGS, st.integers(0, 4), st.binary(max_size=3))
def test_a_large_byte_string_is_checked_where_it_is(items: list[codec.Value], big: bytes,
                                                    at: int, junk: bytes) -> None:
    """An array holding a byte string of BIG bytes or more is checked without encoding
    that string again: it decodes exactly as before, and any byte added, removed or
    changed outside the string's content is refused, as before."""
    value: list[codec.Value] = [*items[:at], big, *items[at:]]
    data = codec.encode(value)
    assert codec.decode(data) == value
    assert codec.decode_array(codec.encode(["T", big, 1]), "T", 3)[1] == big
    for bad in (data + (junk or b"\x00"), data[:-1]):
        with pytest.raises(codec.CodecError):
            codec.decode(bad)
    # the string's head in a longer form than needed (the same length, 8 bytes wide)
    head = codec.bytes_head(len(big))
    start = data.index(head + big)
    longer = data[:start] + b"\x5b" + len(big).to_bytes(8, "big") + data[start + len(head):]
    with pytest.raises(codec.CodecError, match="not canonical"):
        codec.decode(longer)
    # an integer after it in a longer form than needed
    loose = codec.encode([*value, 5])[:-1] + bytes.fromhex("1805")
    with pytest.raises(codec.CodecError, match="not canonical"):
        codec.decode(loose)


@pytest.mark.parametrize("big", [b"a" * 10, b"a" * codec.BIG])
def test_the_depth_bound_is_the_same_beside_a_large_byte_string(big: bytes) -> None:
    """An item nested one level past MAX_DEPTH is refused whether or not the array also
    holds a large byte string (the check where the string is looked at each other item
    on its own, one level less deep)."""
    deep: codec.Value = []
    for _ in range(codec.MAX_DEPTH - 1):
        deep = [deep]
    fits = cbor2.dumps([big, deep], canonical=True)  # MAX_DEPTH levels below the array
    assert codec.decode(fits) == [big, deep]
    too_deep = cbor2.dumps([big, [deep]], canonical=True)
    with pytest.raises(codec.CodecError, match="too deep"):
        codec.decode(too_deep)


def test_bytes_head_is_the_encoders() -> None:
    for size in (0, 1, 23, 24, 255, 256, 65535, 65536, 2**20):
        assert codec.bytes_head(size) + bytes(size) == codec.encode(bytes(size))
    assert codec.bytes_head(2**32 - 1) == b"\x5a" + (2**32 - 1).to_bytes(4, "big")
    assert codec.bytes_head(2**32) == b"\x5b" + (2**32).to_bytes(8, "big")
