"""TSRG: generator, randomized encryption (off-line and interactive), statistical quality."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcms import cipher as ciphers
from tsrg import TsrgCipher, TsrgError, TsrgRandom, TsrgSession, stats
from tsrg.cipher import HEADER_LEN, class_index, class_length, filler_length
from tsrg.generator import MAX_SEGMENT, MIN_SEGMENT, Randomizer

KEY = b"\x04" * 32


def seeded_cipher(seed: bytes = b"\x03" * 32) -> TsrgCipher:
    return TsrgCipher(random=TsrgRandom.seeded(seed))


# --- known answers ------------------------------------------------------------------------


def test_seeded_generator_known_answers() -> None:
    r = TsrgRandom.seeded(b"\x01" * 32)
    assert r.read(32).hex() == (
        "1e67852a02cf18c682db0c9e10c6af37a67153f9691d3d3b674c6dbf65c611fd")
    assert r.read(32).hex() == (
        "cdd5e23178c7e902b32b7bf30e11117c2895d34f566abca5414cc59c9f7c412a")
    s = TsrgRandom.seeded(b"\x01" * 32)
    assert hashlib.sha256(s.stream(1 << 20)).hexdigest() == (
        "7453939089a53210cf63ebe2ddbd4190ca7b339f6c0791e2b4561eaef07e3ab5")
    seg = Randomizer(b"\x02" * 32).next_segment()
    assert (seg.key.hex()[:32], seg.iv.hex(), seg.length) == (
        "f6a12ca8ffc30a66ca140ccc72763361", "7f82dd63f4f75c33da444b72372be3aa", 327158)


def test_ciphertext_format_known_answers() -> None:
    c = seeded_cipher()
    blob = c.encrypt(KEY, b"Hello, TSRG", b"aad")
    # "TSR1", profile 1, reserved 0, class 0x0080 (256 bytes), 16-byte nonce
    assert blob[:8].hex() == "5453523101000080"
    assert len(blob) == HEADER_LEN + 256 + 16
    assert hashlib.sha256(blob).hexdigest() == (
        "3dee6654d317d270117c4238b716a56b0cd0ad467f7b8b8f82ca7d61f87dfc8f")
    assert c.decrypt(KEY, blob, b"aad") == b"Hello, TSRG"
    big = c.encrypt(KEY, bytes(300000), b"aad")
    assert len(big) == 327736 and hashlib.sha256(big).hexdigest() == (
        "d357832c910f7c609d33c14c7120f164602d57bb7d77348e23d22cf0eb5c410e")
    rec = TsrgSession(b"\x05" * 32, initiator=True,
                      random=TsrgRandom.seeded(b"\x06" * 32)).seal(b"ping", b"ctx")
    assert rec[:14].hex() == "5453493100800000000000000000"
    assert hashlib.sha256(rec).hexdigest() == (
        "78c6d0f4ee65c7c02ddddc917f2581a7935f3826b1c13d21a8be654896604a56")


# --- the generator ------------------------------------------------------------------------


def test_entropy_mode_differs_and_rekeys_after_each_request() -> None:
    a, b = TsrgRandom(b"s" * 32), TsrgRandom(b"s" * 32)
    assert a.read(64) != b.read(64)  # OS entropy mixed at every reseed
    before = a.reseeds
    a.read(10)
    a.read(10)
    assert a.reseeds == before + 2  # every request rekeys: backtracking resistance


def test_stage1_key_is_replaced_at_every_segment() -> None:
    rnd = Randomizer(b"\x07" * 32)
    keys = {rnd._key}
    lengths = []
    for _ in range(50):
        lengths.append(rnd.next_segment().length)
        keys.add(rnd._key)
    assert len(keys) == 51
    assert all(MIN_SEGMENT <= n <= MAX_SEGMENT for n in lengths)
    assert len(set(lengths)) > 45  # reseed instants are unpredictable, not periodic


def test_uniform_is_unbiased() -> None:
    rnd = Randomizer(b"\x08" * 32)
    counts = [0] * 6
    for _ in range(6000):
        counts[rnd.uniform(6)] += 1
    chi2 = sum((c - 1000) ** 2 / 1000 for c in counts)
    assert chi2 < 20.5  # p > 0.001 with 5 degrees of freedom


# --- randomized encryption ----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000), st.binary(max_size=40), st.binary(min_size=32, max_size=32))
def test_roundtrip(payload: bytes, aad: bytes, seed: bytes) -> None:
    c = seeded_cipher(seed)
    assert c.decrypt(KEY, c.encrypt(KEY, payload, aad), aad) == payload


def test_payload_position_is_unpredictable_and_may_wrap() -> None:
    """Over many nonces the payload's frame position P covers the whole frame."""
    from tsrg.cipher import MAGIC, MODERN

    positions = set()
    for i in range(200):
        header = MAGIC + bytes([MODERN, 0]) + struct.pack(">H", class_index(108)) + \
            hashlib.sha256(bytes([i])).digest()[:16]
        positions.add(TsrgCipher._randomizer(KEY, header).uniform(class_length(
            class_index(108))))
    # 200 draws from 256 positions give about 139 distinct values if P is uniform
    assert len(positions) > 120 and max(positions) > 240  # near the end: wraps around
    c = seeded_cipher()
    for i in range(64):  # exercise wrapped layouts end to end
        msg = os.urandom(100 + i)
        assert c.decrypt(KEY, c.encrypt(KEY, msg, b""), b"") == msg


def test_length_is_hidden_by_size_classes() -> None:
    c = seeded_cipher()
    sizes = {len(c.encrypt(KEY, bytes(n), b"")) for n in range(0, 248)}
    assert sizes == {HEADER_LEN + 256 + 16}
    assert class_length(class_index(1000)) == 1024
    assert class_length(class_index(1025)) == 1280
    big = class_length(class_index(10 * 2**20 + 8))
    assert 10 * 2**20 + 8 <= big <= (10 * 2**20 + 8) * 1.0625  # fine classes above 1 MiB
    assert filler_length(0) == (class_index(8), 248)


@pytest.mark.parametrize("size", [11, 300000])
def test_every_changed_byte_is_rejected(size: int) -> None:
    c = seeded_cipher()
    blob = c.encrypt(KEY, os.urandom(size), b"aad")
    positions = range(len(blob)) if len(blob) < 2000 else range(0, len(blob), 97)
    for i in positions:
        forged = blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1:]
        with pytest.raises(TsrgError):
            c.decrypt(KEY, forged, b"aad")


def test_truncation_extension_wrong_key_wrong_aad() -> None:
    c = seeded_cipher()
    blob = c.encrypt(KEY, b"x" * 1000, b"aad")
    for n in range(len(blob)):
        with pytest.raises(TsrgError):
            c.decrypt(KEY, blob[:n], b"aad")
    with pytest.raises(TsrgError):
        c.decrypt(KEY, blob + b"\0", b"aad")
    with pytest.raises(TsrgError, match="authentication failed"):
        c.decrypt(b"\x05" * 32, blob, b"aad")
    with pytest.raises(TsrgError, match="authentication failed"):
        c.decrypt(KEY, blob, b"other")
    with pytest.raises(TsrgError, match="32 bytes"):
        c.decrypt(b"short", blob, b"aad")


def test_segments_cannot_be_swapped() -> None:
    c = seeded_cipher()
    blob = c.encrypt(KEY, os.urandom(400000), b"")
    body = blob[HEADER_LEN:]
    # the first segment is at least 64 KiB; move a 64 KiB+16 block to the end
    cut = MIN_SEGMENT + 16
    swapped = blob[:HEADER_LEN] + body[cut:] + body[:cut]
    with pytest.raises(TsrgError):
        c.decrypt(KEY, swapped, b"")


# --- the interactive session ---------------------------------------------------------------


def test_session_in_order_both_directions() -> None:
    client = TsrgSession(KEY, initiator=True)
    server = TsrgSession(KEY, initiator=False)
    for i in range(20):
        assert server.open(client.seal(b"request %d" % i, b"ttp"), b"ttp") == b"request %d" % i
        assert client.open(server.seal(b"answer %d" % i, b"ttp"), b"ttp") == b"answer %d" % i
    big = os.urandom(3 * MAX_SEGMENT)  # spans several reseeds inside one record
    assert server.open(client.seal(big)) == big


def test_session_rejects_replay_reorder_reflection_and_tampering() -> None:
    client, server = TsrgSession(KEY, initiator=True), TsrgSession(KEY, initiator=False)
    r0, r1 = client.seal(b"zero"), client.seal(b"one")
    with pytest.raises(TsrgError, match="out of order"):
        server.open(r1)
    server = TsrgSession(KEY, initiator=False)
    assert server.open(r0) == b"zero"
    with pytest.raises(TsrgError, match="out of order"):
        server.open(r0)  # replay
    with pytest.raises(TsrgError, match="closed"):
        server.open(r1)  # after a failure the session is dead
    client2 = TsrgSession(KEY, initiator=True)
    with pytest.raises(TsrgError):
        client2.open(client2.seal(b"reflected"))  # own records are not accepted
    s3, c3 = TsrgSession(KEY, initiator=False), TsrgSession(KEY, initiator=True)
    rec = bytearray(c3.seal(b"payload"))
    rec[-1] ^= 1
    with pytest.raises(TsrgError, match="authentication failed"):
        s3.open(bytes(rec))
    s4, c4 = TsrgSession(KEY, initiator=False), TsrgSession(KEY, initiator=True)
    with pytest.raises(TsrgError, match="authentication failed"):
        s4.open(c4.seal(b"payload", b"context A"), b"context B")


# --- the protocol uses TSRG by default ---------------------------------------------------------


def test_tsrg_is_the_protocol_default() -> None:
    from conftest import start_run

    assert ciphers.default().alg_id == "tsrg-modern"
    run = start_run(b"Subject: x\r\n\r\ncertified")
    assert run.sender.core.header.cipher == "tsrg-modern"
    assert run.sender.state.c[:4] == b"TSR1"


# --- statistical quality (quick subset; bench/tsrg_quality.py runs the full batteries) -----


@pytest.mark.parametrize(("name", "good"), [
    ("modern", True), ("modern-stage1", True), ("modern-stage2", True),
    ("paper-stage1", True), ("chacha20", True),
    ("paper", False), ("paper-stage2", False), ("minstd", False),
])
def test_nist_quick_subset(name: str, good: bool) -> None:
    results = stats.nist(stats.source(name), sequences=1, tests=stats.QUICK)
    failed = [r.test for r in results if r.passed < r.sequences]
    if good:
        assert failed == [], f"{name} failed {failed}"
    else:
        assert len(failed) >= 5, f"{name} should fail most tests, failed only {failed}"


def test_nist_template_files_are_nists() -> None:
    counts = [len(stats.aperiodic_templates(m)) for m in range(2, 11)]
    assert counts == [2, 4, 6, 12, 20, 40, 74, 148, 284]  # NIST's numOfTemplates table
    [r] = stats.nist(stats.source("modern"), 1, tests=("non_overlapping_template",))
    assert r.sequences == 1 and r.passed == 1
    [r] = stats.nist(stats.source("minstd"), 1, tests=("non_overlapping_template",))
    assert r.sequences == 1 and r.passed == 0


def test_paper_profile_leaks_the_lehmer_top_bit() -> None:
    bias_paper = stats.msb_bias(stats.source("paper")(400_000))
    bias_modern = stats.msb_bias(stats.source("modern")(400_000))
    assert bias_paper[0] == 0.0  # the most significant bit of every word is 0
    assert all(abs(b - 0.5) < 0.01 for b in bias_modern)


@pytest.mark.parametrize(("name", "good"), [("modern", True), ("chacha20", True),
                                            ("paper", False), ("minstd", False)])
def test_dieharder_quick(name: str, good: bool) -> None:
    rows, used = stats.dieharder(stats.source(name), 100, psamples=20, tsamples=10000,
                                 timeout=120)
    assert rows and used > 0, "dieharder gave no result"
    verdicts = {r.assessment for r in rows}
    if good:
        assert "FAILED" not in verdicts
    else:
        assert verdicts == {"FAILED"}
