"""Known-answer tests: the exact bytes of the encoding and of every signature input.

Any change to these bytes breaks interoperability with evidence already issued; if one of
these tests fails, the change must come with a new protocol version, not a new vector.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from conftest import ALICE, BOB, TTP

from tcms import codec
from tcms.crypto import commit, derive_message_key, h, sign, tagged
from tcms.protocol.messages import (
    M4,
    Core,
    Deadlines,
    Description,
    Header,
    plaintext,
)

TX = bytes(range(16))
HDR = Header(TX, ALICE.party, BOB.party, TTP.party, "tss.tcms.test", "aes256gcm",
             Deadlines(1800000100, 1800000200, 1800000300, 1800001000),
             Description("Grüße", 1234, "<kat@a.test>"))
CORE = Core(HDR, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, b"\x05" * 32)
CID = CORE.cid


def test_seeded_identities() -> None:
    assert ALICE.party.sig_pk.hex() == (
        "67d16a45a850ac6fa85dac75f947d75c14c1999777429df9998592bde4360120")
    assert ALICE.party.fingerprint == "3990:19ef:eb6f:5cc3:e5e6:169b:73b7:a6ce:d15b:84c2"
    assert BOB.party.fingerprint == "c693:7c63:45da:c49e:0cb0:6250:499c:980f:e745:dd1e"
    assert TTP.party.fingerprint == "7887:0c5a:a8c6:8e14:bdd5:7ba4:e400:ef68:18ad:0dab"


def test_header_and_core_encoding() -> None:
    enc = HDR.encoded
    assert len(enc) == 390
    # array(10), text(9) "TCMS1/HDR", 1, bytes(16) tx, array(3) ["alice@a.test", ...
    assert enc[:40].hex() == ("8a6954434d53312f4844520150000102030405060708090a0b0c0d0e0f83"
                              "6c616c69636540612e74")
    assert h(enc).hex() == "9ab2dbbbdbe6ce61dccce7f1522873ea7ef83a333567f813e3c28121c5ab2117"
    assert CID.hex() == "f884f55d41657f2fe18699f91b11306e9fa39e0658bd8054e9fa868ddc4dbbf1"
    assert Header.from_value(codec.decode(enc)) == HDR
    assert Core.decode(CORE.encoded) == CORE


def test_m4_signature_input_by_hand() -> None:
    """Derived from RFC 8949 by hand, independently of the codec."""
    expected = (bytes([0x83, 0x68]) + b"TCMS1/M4" + bytes([0x58, 0x20]) + CID
                + bytes([0x58, 0x20]) + b"\x08" * 32)
    assert tagged("M4", CID, b"\x08" * 32) == expected
    assert M4(CID, b"\x0e" * 64).encode()[:20].hex() == (
        "836854434d53312f4d345820f884f55d41657f2f")


SIGNED = {
    "M1": ((CID, b"\x06" * 32),
           "5539205b5cf69dcac38b663a0779db5762f3ae814c7b9ef314b2fcb7c30fbe04",
           "d56befcaf45f7ad56b8dfff58809671f"),
    "M3": ((CID, b"\x07" * 32),
           "6553c4ddbf56068a30d675f4980c3586e1b6ce0ea48f3a4b383cb430bf0300e3",
           "1d24352a325b9308f24f10b386fa4350"),
    "M4": ((CID, b"\x08" * 32),
           "edad07172a83a2ddb9725ede6554cd1a5f2fb2dbea6df84b4f766992844ecfab",
           "9f7cd86eda6009060a86596ebc197e96"),
    "M5": ((CID, b"\x05" * 32, b"\x09" * 32),
           "bb5b5a7d58e696b3a2c9406dd909a997410cc5b014279caca576c3a5c428c998",
           "e2db70ed460ae5628eb4274ea9da4b22"),
    "M6": ((CID, b"\x0a" * 32),
           "d8699f1e8b80e9842d0626525616f1543f51bc9d6ae560608bde246cc36acd94",
           "54b87e5a1bfae4b3b16675af7ccebf99"),
    "REFUSE": ((CID, b"\x08" * 32),
               "68288e71706e94544ebf141469a0b142910563bab4c92a3a261e8dbbe0d5d0f9",
               "f3fe7a35be964d8d2e6c0ce1ad0c2687"),
    "ABORT-REQ": ((CID, 1800000101),
                  "0780cfe358841df1b94304020bb7344959af2c5a2d3b14a31aa17fb7edcabf0b",
                  "0b8c77e8dd80ed3814c0221a574d689e"),
    "RESOLVE-REQ": ((CID, "R", b"\x0b" * 32, b"\x0c" * 32, 1800000201),
                    "f646b3986055aed9f48c582dcc6eb0de7e699b555b417bcda47d260dbc49e0a5",
                    "525708fb58be64e74c3678e2da0efcf3"),
    "ABORTED": ((CID, 1800000102),
                "02c7a4cfb542c9eb7e55f9d74258e48ac2b5cc8adb56d038176b2a797d57670e",
                "d7eb34f93f81c01516f322ae56a910c1"),
    "RESOLVED": ((CID, "delivered", b"\x0b" * 32, b"\x05" * 32, b"\x0d" * 32, 1800000202),
                 "9c45a7378b8f33084f73e28b2fad85ee57e28f5000d80174019df91d837a5ebb",
                 "798bfeaf3a47ce8f8e4ead31a18c1f0e"),
    "BAD-ESCROW": ((CID, "key wrap does not open", 1800000203),
                   "f672f9c264f9ebe9f119b4cd6bea8895b37077b806544fec97f1431855cda642",
                   "34f6cfe8fe20ffad99759978c8d4c974"),
    "REJECTED": ((CID, "the resolve deadline has passed", 1800001001),
                 "3095a4ee36f4c30c3a5ecb2d05c908fc57a625ab25671980ed940334f8870b3a",
                 "14a2d5d8fba04f44c8c0316dbaa3ff2e"),
}


@pytest.mark.parametrize("step", sorted(SIGNED))
def test_signature_inputs_and_signatures(step: str) -> None:
    fields, digest, sig_prefix = SIGNED[step]
    assert h(tagged(step, *fields)).hex() == digest
    # Ed25519 is deterministic (RFC 8032): the signature is a known answer too
    assert sign(ALICE.sig_key, step, *fields).hex().startswith(sig_prefix)


def test_key_split_matches_rfc5869_computed_independently() -> None:
    k_r, k_t = b"\x11" * 32, b"\x22" * 32
    info = tagged("K")
    prk = hmac.new(TX, k_r + k_t, hashlib.sha256).digest()  # HKDF-Extract(salt=tx)
    okm = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()  # HKDF-Expand, 1 block
    assert derive_message_key(k_r, k_t, TX) == okm
    assert okm.hex() == "346c1012b226702f9c3521c9c92edf7760a51b21c6fb0ef80a530d0d547cd949"


def test_commitment_and_payload() -> None:
    assert commit("kR", TX, b"\x11" * 32).hex() == (
        "7ac546766266d336a02920926dc2b4cd6d5e91004167d95bad762e300801dbc2")
    assert commit("kR", TX, b"\x11" * 32) == h(tagged("COMMIT", "kR", TX, b"\x11" * 32))
    assert h(plaintext(b"hello", "alice@a.test", "bob@b.test")).hex() == (
        "1d83436e2f2f75173b8ab40e644fd0bc78659fe19f31b013625b7866e52eb06d")
