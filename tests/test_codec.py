from __future__ import annotations

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
