"""TSRG: generator, randomized encryption (off-line and interactive), statistical quality."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from tcms import cipher as ciphers
from tsrg import TsrgCipher, TsrgError, TsrgRandom, TsrgSession, stats
from tsrg.cipher import HEADER_LEN, class_index, class_length, filler_length
from tsrg.generator import (
    MAX_SEGMENT,
    MIN_SEGMENT,
    RESEED_REQUESTS,
    STAGE1_BLOCK,
    Randomizer,
    aes_ctr_keystream,
)

KEY = b"\x04" * 32


def seeded_cipher(seed: bytes = b"\x03" * 32) -> TsrgCipher:
    return TsrgCipher(random=TsrgRandom.seeded(seed))


# --- known answers ------------------------------------------------------------------------


def test_seeded_generator_known_answers() -> None:
    r = TsrgRandom.seeded(b"\x01" * 32)
    assert r.read(32).hex() == (
        "f56ef8afe64a3d4494279dd87182861f65be7e578cbc438cf07a8a4275770e89")
    assert r.read(32).hex() == (
        "e00175a26ada543d9533699e54ab559ffc8f403bc6a0170c1b78fffbd82f9fb1")
    s = TsrgRandom.seeded(b"\x01" * 32)
    assert hashlib.sha256(s.stream(1 << 20)).hexdigest() == (
        "1ff7cc78e8e5c39a818bae7ed01ecaeb78dcb32fb1565cdfac97136c2a9dc1e6")
    seg = Randomizer(b"\x02" * 32).next_segment()
    assert (seg.key.hex()[:32], seg.nonce.hex(), seg.length) == (
        "4aca33714d944be16e8a66e255e856ae", "8892e1b058c1a3cb354a58d2", 1564426)


def test_keystreams_are_plain_chacha20_and_aes_ctr() -> None:
    """Both stages compute their keystream through one-shot AEAD objects; it must be
    exactly the plain ChaCha20 (RFC 8439) and AES-256-CTR keystream."""
    key = bytes(range(32))
    stage1 = Randomizer(key)
    got = stage1.read(1500)
    plain = b"".join(
        Cipher(algorithms.ChaCha20(key, (1).to_bytes(4, "little") + i.to_bytes(12, "big")),
               None).encryptor().update(bytes(STAGE1_BLOCK)) for i in range(3))
    assert got == plain[:1500]
    nonce = bytes(range(12))
    ctr = Cipher(algorithms.AES(key), modes.CTR(nonce + (2).to_bytes(4, "big"))).encryptor()
    assert bytes(aes_ctr_keystream(key, nonce, 5000)) == ctr.update(bytes(5000))


def _independent_open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """The off-line format as docs/tsrg.md describes it, from plain primitives only."""
    header, body = blob[:24], blob[24:]
    total = class_length(struct.unpack(">H", header[6:8])[0])
    k1 = HKDF(hashes.SHA256(), 32, header[8:24], b"TSRG1/offline/" + header[:8]).derive(key)
    stream = b"".join(
        Cipher(algorithms.ChaCha20(k1, (1).to_bytes(4, "little") + i.to_bytes(12, "big")),
               None).encryptor().update(bytes(512)) for i in range(2))
    nbytes = (total.bit_length() + 7) // 8 + 1  # P: rejection sampling, big-endian
    v = int.from_bytes(stream[:nbytes], "big")
    assert v < (256**nbytes // total) * total
    p, stream = v % total, stream[nbytes:]
    seg_key, seg_nonce = stream[:32], stream[32:44]
    assert MIN_SEGMENT + int.from_bytes(stream[44:48], "big") % (
        MAX_SEGMENT - MIN_SEGMENT + 1) >= total  # one segment
    frame = AESGCM(seg_key).decrypt(seg_nonce, body, struct.pack(">IB", 0, 1) +
                                    hashlib.sha256(aad).digest())
    linear = frame[p:] + frame[:p]
    return linear[8:8 + int.from_bytes(linear[:8], "big")]


def test_ciphertext_format_known_answers() -> None:
    c = seeded_cipher()
    blob = c.encrypt(KEY, b"Hello, TSRG", b"aad")
    # "TSR2", profile 1, reserved 0, class 0x0810 (16 << 4 = 256 bytes), 16-byte nonce
    assert blob[:8].hex() == "5453523201000810"
    assert len(blob) == HEADER_LEN + 256 + 16
    assert hashlib.sha256(blob).hexdigest() == (
        "93ed9e3d05cb0d00c346005175d2579992c625b81945ea3fecb75affa4448196")
    assert c.decrypt(KEY, blob, b"aad") == b"Hello, TSRG"
    assert _independent_open(KEY, blob, b"aad") == b"Hello, TSRG"
    big = c.encrypt(KEY, bytes(300000), b"aad")
    assert len(big) == 303144 and hashlib.sha256(big).hexdigest() == (
        "df0c479d2deddf5dd2fbbfcb6d4931eeb341aec72689d08444d75b3d6e42447e")
    rec = TsrgSession(b"\x05" * 32, initiator=True,
                      random=TsrgRandom.seeded(b"\x06" * 32)).seal(b"ping", b"ctx")
    assert rec[:14].hex() == "5453493208100000000000000000"
    assert hashlib.sha256(rec).hexdigest() == (
        "37c34f089baf14c33c1b1ee70500459dbef680a98c83ff63564465c8f5c66b66")


def test_buffer_api_round_trip_and_matches_bytes_api() -> None:
    c = TsrgCipher()
    for n in (0, 247, 248, 249, 70_000, 3 * MAX_SEGMENT + 5):
        msg = os.urandom(n)
        buf = c.encrypt_buffer(KEY, msg, b"x")
        assert isinstance(buf, bytearray)
        out = c.decrypt_buffer(KEY, buf, b"x")
        assert out == msg and isinstance(out, bytearray)
        assert c.decrypt(KEY, bytes(buf), b"x") == msg
        out.extend(b"more")  # the result is an ordinary, resizable buffer


# --- the generator ------------------------------------------------------------------------


def test_entropy_mode_differs_and_rekeys_after_each_request() -> None:
    a, b = TsrgRandom(b"s" * 32), TsrgRandom(b"s" * 32)
    assert a.read(64) != b.read(64)  # OS entropy mixed in from the start
    before = a.reseeds
    a.read(10)
    a.read(10)
    assert a.reseeds == before + 2  # every request rekeys: backtracking resistance


def test_os_entropy_is_mixed_in_at_drawn_intervals() -> None:
    calls: list[int] = []

    def entropy(n: int) -> bytes:
        calls.append(n)
        return os.urandom(n)

    rnd = Randomizer(b"\x09" * 32, entropy)
    assert calls == [32]  # instantiation
    for _ in range(RESEED_REQUESTS):  # small requests: at the latest every 64 of them
        rnd.ratchet(32)
    assert rnd.entropy_reseeds == 1 and len(calls) == 2
    for _ in range(4):  # big requests: the byte budget (at most 2 MiB) runs out first
        rnd.ratchet(MAX_SEGMENT)
    assert rnd.entropy_reseeds == 5
    g = TsrgRandom()
    g.read(10 * MAX_SEGMENT)  # one long request: reseeds inside it, with OS entropy too
    assert g.entropy_reseeds >= 4


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
    assert class_length(class_index(1000)) == 1024  # Padmé: multiples of 32 here
    assert class_length(class_index(1025)) == 1088  # multiples of 64 from 1024
    for need in (2**20 + 8, 10 * 2**20 + 8):
        assert need <= class_length(class_index(need)) <= need * 1.032  # <= 3.1 % padding
    for need in range(8, 300_000, 997):  # at most 12 % anywhere, and monotone
        padded = class_length(class_index(need))
        assert need <= padded <= max(256, need * 1.12)
        assert class_length(class_index(padded)) == padded
    assert filler_length(0) == (class_index(8), 248)
    # only canonical class numbers are accepted
    for bad in ((9 << 8) | 32, (8 << 8) | 32, (10 << 8) | 15, (41 << 8) | 64, 0):
        with pytest.raises(TsrgError, match="size class"):
            class_length(bad)


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
    blob = c.encrypt(KEY, os.urandom(3 * MAX_SEGMENT), b"")
    body = blob[HEADER_LEN:]
    assert len(body) > 3 * MAX_SEGMENT + 2 * 16  # several segments, several tags
    # the first segment is at least 256 KiB; move a 256 KiB+16 block to the end
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
    assert run.sender.state.c[:4] == b"TSR2"


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
        # one sequence through 9 tests at alpha = 0.01 fails one of them 8.6 % of the time
        # even for a perfect source: judge the family at 0.01 (Bonferroni), as the full
        # battery judges proportions over 100 sequences instead
        worst = {r.test: r.min_p for r in results if r.min_p < stats.ALPHA / len(results)}
        assert worst == {}, f"{name} failed {worst}"
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
