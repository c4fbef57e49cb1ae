"""TSRG randomized encryption E_k: the off-line format (one blob, for mail) and the
interactive format (a session of records, for gateway-to-service payloads inside TLS).

The frame.  The payload is hidden in a frame of ``class_len`` bytes (a size class: four
steps per power of two, at least 256 bytes), so its length shows only as its class.  At a
key-derived position P the frame holds the 8-byte payload length, then the payload, then
random filler (from ``TsrgRandom``), all read circularly: P is uniform over the frame, so
the payload may sit anywhere, even wrapped around its end.

The encryption.  The frame is cut into segments whose lengths come from the stage-1
randomizer (64 KiB .. 1 MiB: the unpredictable reseed instants); each segment is encrypted
with AES-256-GCM under its own stage-2 key and nonce, drawn from stage 1, with the
segment index, a final flag and H(associated data) as GCM associated data.  So every
segment has its own key, any changed, moved, dropped or added byte fails a tag, and
nothing is released before every tag has verified.

Off-line blob (class and sequence numbers big-endian)::

    "TSR1" | profile (1) = 1 | 0x00 | class (2) | nonce (16) | segment ciphertexts+tags

Session record (both ends share a 32-byte key; each direction has its own stream)::

    "TSI1" | class (2) | sequence number (8) | segment ciphertexts+tags
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tcms.cipher import DecryptionError
from tsrg.generator import Randomizer, TsrgRandom, hkdf

MAGIC = b"TSR1"
SESSION_MAGIC = b"TSI1"
MODERN = 1
HEADER_LEN = 24
TAG_LEN = 16
MIN_CLASS_EXP = 8  # 256 bytes
MAX_CLASS_EXP = 40


class TsrgError(DecryptionError):
    """The blob or record is malformed or fails authentication."""


# --- size classes ------------------------------------------------------------------------


FINE_CLASS_EXP = 20  # from 1 MiB on, 16 steps per power of two (padding at most 6.25 %)


def _steps(e: int) -> int:
    return 16 if e >= FINE_CLASS_EXP else 4


def class_index(need: int) -> int:
    """The smallest class holding ``need`` bytes: index 16*e + j means 2**e * (1 + j/steps),
    with 4 steps per power of two below 1 MiB and 16 from there on."""
    e = max(MIN_CLASS_EXP, need.bit_length() - 1)
    while True:
        for j in range(_steps(e)):
            if class_length(16 * e + j) >= need:
                return 16 * e + j
        e += 1


def class_length(index: int) -> int:
    e, j = divmod(index, 16)
    if not MIN_CLASS_EXP <= e <= MAX_CLASS_EXP or j >= _steps(e):
        raise TsrgError("size class out of range")
    return (1 << e) + ((1 << e) * j) // _steps(e)


# --- the frame and its segments -----------------------------------------------------------


def _frame_pieces(payload: bytes, filler: bytes, p: int, total: int) -> Iterator[memoryview]:
    """The frame in order from byte 0: [length | payload | filler] rotated right by p."""
    lin = [memoryview(struct.pack(">Q", len(payload))), memoryview(payload),
           memoryview(filler)]
    start = total - p  # the frame begins at this offset of the linear layout
    for lo, hi in ((start, total), (0, start)):
        pos = 0
        for piece in lin:
            a, b = max(lo, pos), min(hi, pos + len(piece))
            if a < b:
                yield piece[a - pos:b - pos]
            pos += len(piece)


def _segments(rnd: Randomizer, total: int) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(start, length, key, nonce) covering ``total`` bytes, drawn from stage 1."""
    pos = 0
    while pos < total:
        seg = rnd.next_segment()
        n = min(seg.length, total - pos)
        yield pos, n, seg.key, seg.iv[:12]
        pos += n


def _seg_aad(index: int, final: bool, aad_digest: bytes) -> bytes:
    return struct.pack(">IB", index, final) + aad_digest


def filler_length(payload_len: int) -> tuple[int, int]:
    """(class index, filler bytes) for a payload."""
    cls = class_index(payload_len + 8)
    return cls, class_length(cls) - 8 - payload_len


def _seal(rnd: Randomizer, payload: bytes, aad: bytes, cls: int, filler: bytes,
          head: bytes) -> bytes:
    total = class_length(cls)
    p = rnd.uniform(total)
    aad_digest = hashlib.sha256(aad).digest()
    segs = list(_segments(rnd, total))
    parts: list[bytes | memoryview] = [head]
    pieces = _frame_pieces(payload, filler, p, total)
    piece = next(pieces)
    for i, (_, n, key, nonce) in enumerate(segs):
        chunks = []
        need = n
        while need:
            if not len(piece):
                piece = next(pieces)
            take = min(need, len(piece))
            chunks.append(piece[:take])
            piece = piece[take:]
            need -= take
        plain = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        seg_aad = _seg_aad(i, i == len(segs) - 1, aad_digest)
        parts.append(AESGCM(key).encrypt(nonce, plain, seg_aad))  # ciphertext || tag
    return b"".join(parts)


def _open(rnd: Randomizer, body: bytes | memoryview, aad: bytes, cls: int) -> bytes:
    total = class_length(cls)
    p = rnd.uniform(total)
    aad_digest = hashlib.sha256(aad).digest()
    segs = list(_segments(rnd, total))
    if len(body) != total + TAG_LEN * len(segs):
        raise TsrgError("ciphertext length does not match its size class")
    frame = bytearray(total + 15)
    view, src = memoryview(frame), memoryview(body)
    if len(segs) == 0:
        raise TsrgError("empty frame")
    r = 0
    for i, (start, n, key, nonce) in enumerate(segs):
        tag = bytes(src[r + n:r + n + TAG_LEN])
        dec = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
        dec.authenticate_additional_data(_seg_aad(i, i == len(segs) - 1, aad_digest))
        dec.update_into(src[r:r + n], view[start:start + n + 15])
        try:
            dec.finalize()
        except InvalidTag:
            raise TsrgError(f"authentication failed (segment {i})") from None
        r += n + TAG_LEN
    # read the length and the payload circularly from P
    if p + 8 <= total:
        head = bytes(view[p:p + 8])
    else:
        head = bytes(view[p:total]) + bytes(view[:p + 8 - total])
    length = struct.unpack(">Q", head)[0]
    if length > total - 8:
        raise TsrgError("corrupt frame length")
    start = (p + 8) % total
    if start + length <= total:
        return bytes(view[start:start + length])
    return bytes(view[start:total]) + bytes(view[:start + length - total])


# --- the off-line format -------------------------------------------------------------------


class TsrgCipher:
    """E_k for the protocol (alg id ``tsrg-modern``): one self-contained blob."""

    alg_id = "tsrg-modern"

    def __init__(self, random: TsrgRandom | None = None) -> None:
        self._random = random or TsrgRandom()

    @staticmethod
    def _randomizer(key: bytes, header: bytes) -> Randomizer:
        if len(key) != 32:
            raise TsrgError("the key must be 32 bytes")
        return Randomizer(hkdf(key, salt=header[8:24], info=b"TSRG1/offline/" + header[:8]))

    def encrypt(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        cls, fill = filler_length(len(plaintext))
        rand = self._random.read(16 + fill)  # one request: nonce, then filler
        header = MAGIC + bytes([MODERN, 0]) + struct.pack(">H", cls) + rand[:16]
        return _seal(self._randomizer(key, header), plaintext, aad, cls, rand[16:], header)

    def decrypt(self, key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        if len(ciphertext) < HEADER_LEN + 256 + TAG_LEN:
            raise TsrgError("ciphertext too short")
        header = ciphertext[:HEADER_LEN]
        if header[:4] != MAGIC:
            raise TsrgError("not a TSRG blob")
        if header[4] != MODERN:
            raise TsrgError(f"unsupported TSRG profile {header[4]}")
        if header[5] != 0:
            raise TsrgError("reserved header byte must be zero")
        cls = struct.unpack(">H", header[6:8])[0]
        body = memoryview(ciphertext)[HEADER_LEN:]
        return _open(self._randomizer(key, header), body, aad, cls)


# --- the interactive format ----------------------------------------------------------------


class TsrgSession:
    """One end of an interactive session: records in order, each direction its own
    ratcheting randomizer (so old records cannot be decrypted from a captured state).
    A record that fails to open ends the session (the streams are out of step)."""

    def __init__(self, key: bytes, *, initiator: bool, random: TsrgRandom | None = None) -> None:
        if len(key) != 32:
            raise TsrgError("the session key must be 32 bytes")
        out_label, in_label = (b"c2s", b"s2c") if initiator else (b"s2c", b"c2s")
        self._out = Randomizer(hkdf(key, b"", b"TSRG1/session/" + out_label))
        self._in = Randomizer(hkdf(key, b"", b"TSRG1/session/" + in_label))
        self._random = random or TsrgRandom()
        self._sent = 0
        self._received = 0
        self._broken = False

    def seal(self, payload: bytes, aad: bytes = b"") -> bytes:
        cls, fill = filler_length(len(payload))
        head = SESSION_MAGIC + struct.pack(">HQ", cls, self._sent)
        self._sent += 1
        return _seal(self._out, payload, head + aad, cls, self._random.read(fill), head)

    def open(self, record: bytes, aad: bytes = b"") -> bytes:
        if self._broken:
            raise TsrgError("the session is closed after a failed record")
        try:
            if len(record) < 14 or record[:4] != SESSION_MAGIC:
                raise TsrgError("not a TSRG session record")
            cls, seq = struct.unpack(">HQ", record[4:14])
            if seq != self._received:
                raise TsrgError(f"record {seq} out of order (expected {self._received})")
            payload = _open(self._in, memoryview(record)[14:], record[:14] + aad, cls)
        except TsrgError:
            self._broken = True
            raise
        self._received += 1
        return payload

