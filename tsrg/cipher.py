"""TSRG randomized encryption E_k: the off-line format (one blob, for mail) and the
interactive format (a session of records, for gateway-to-service payloads inside TLS).

The frame.  The payload is hidden in a frame whose length is a size class: the Padmé
padding of PURBs (Nikitin et al., PETS 2019), at least 256 bytes, which keeps the top
log2(log2(L)) + 1 bits of the length L and so adds at most 12 % (3 % at 1 MiB), while the
length shows only as its class.  At a key-derived position P the frame holds the 8-byte
payload length, then the payload, then random filler (from ``TsrgRandom``), all read
circularly: P is uniform over the frame, so the payload may sit anywhere, even wrapped
around its end.

The encryption.  The frame is cut into segments whose lengths come from the stage-1
randomizer (256 KiB .. 2 MiB: the unpredictable reseed instants); each segment is
encrypted with AES-256-GCM under its own stage-2 key and nonce, drawn from stage 1, with
the segment index, a final flag and H(associated data) as GCM associated data.  So every
segment has its own key, any changed, moved, dropped or added byte fails a tag, and
nothing is released before every tag has verified.

Speed.  Encryption writes every segment straight into one output buffer, and decryption
writes the payload straight into its result: no frame is assembled and nothing is joined.
``encrypt_buffer``/``decrypt_buffer`` hand that buffer over (a ``bytearray``);
``encrypt``/``decrypt``, which the protocol calls, return ``bytes`` at the cost of one copy.

Off-line blob (class and sequence numbers big-endian)::

    "TSR2" | profile (1) = 1 | 0x00 | class (2) | nonce (16) | segment ciphertexts+tags

Session record (both ends share a 32-byte key; each direction has its own stream)::

    "TSI2" | class (2) | sequence number (8) | segment ciphertexts+tags
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tcms.cipher import DecryptionError
from tsrg.generator import MAX_SEGMENT, MIN_SEGMENT, Randomizer, TsrgRandom, hkdf

MAGIC = b"TSR2"
SESSION_MAGIC = b"TSI2"
MODERN = 1
HEADER_LEN = 24
SESSION_HEADER_LEN = 14
TAG_LEN = 16
LENGTH_LEN = 8
MIN_FRAME = 256
MAX_CLASS_EXP = 40  # frames up to 1 TiB
GATHER_MAX = 1 << 16  # a segment up to this long that spans pieces is gathered or scattered


class TsrgError(DecryptionError):
    """The blob or record is malformed or fails authentication."""


# --- size classes (Padmé) -----------------------------------------------------------------


def _low_bits(e: int) -> int:
    """Padmé: a length of bit length e + 1 keeps its top floor(log2 e) + 1 bits."""
    return e - (e.bit_length() - 1) - 1 if e > 1 else 0


def class_index(need: int) -> int:
    """The class of the smallest frame holding ``need`` bytes: (e << 8) | m, the frame
    being m << low_bits(e) bytes for a padded length of bit length e + 1."""
    need = max(need, MIN_FRAME)
    e = need.bit_length() - 1
    low = _low_bits(e)
    m = -(-need >> low)  # ceil(need / 2**low)
    if m >> (e - low + 1):  # rounded up to the next power of two
        e, m = e + 1, 1 << (e + 1 - _low_bits(e + 1))
    return (e << 8) | m


def class_length(index: int) -> int:
    e, m = divmod(index, 256)
    if e > MAX_CLASS_EXP or (e << 8) | m != class_index(max(MIN_FRAME, m << _low_bits(e))):
        raise TsrgError("size class out of range")
    return m << _low_bits(e)


def filler_length(payload_len: int) -> tuple[int, int]:
    """(class index, filler bytes) for a payload."""
    cls = class_index(payload_len + LENGTH_LEN)
    return cls, class_length(cls) - LENGTH_LEN - payload_len


# --- the frame, cut into segments -----------------------------------------------------------


def _plan(rnd: Randomizer, total: int) -> tuple[int, list[tuple[int, bytes, bytes]]]:
    """The payload position P and the segments (length, key, nonce), all from stage 1."""
    p = rnd.uniform(total)
    segs, pos = [], 0
    while pos < total:
        seg = rnd.segment()
        n = min(seg.length, total - pos)
        segs.append((n, seg.key, seg.nonce))
        pos += n
    return p, segs


def _rotated(pieces: list[memoryview], p: int, total: int) -> list[memoryview]:
    """The frame in order from byte 0, where ``pieces`` is its linear layout
    [length | payload | filler] and that layout starts at frame position p."""
    out = []
    start = total - p  # the frame begins at this offset of the linear layout
    for lo, hi in ((start, total), (0, start)):
        pos = 0
        for piece in pieces:
            a, b = max(lo, pos), min(hi, pos + len(piece))
            if a < b:
                out.append(piece[a - pos:b - pos])
            pos += len(piece)
    return out


def _runs(frame: list[memoryview], segs: list[tuple[int, bytes, bytes]]
          ) -> Iterator[list[memoryview]]:
    """For each segment, the frame pieces (views) it covers, in order."""
    it = iter(frame)
    cur = next(it)
    for n, _, _ in segs:
        run = []
        while n:
            if not len(cur):
                cur = next(it)
            take = min(n, len(cur))
            run.append(cur[:take])
            cur = cur[take:]
            n -= take
        yield run


def _seg_aad(index: int, count: int, aad_digest: bytes) -> bytes:
    return struct.pack(">IB", index, index == count - 1) + aad_digest


def _seal(rnd: Randomizer, payload: bytes, aad: bytes, head: bytes, cls: int,
          filler: memoryview) -> bytearray:
    total = class_length(cls)
    p, segs = _plan(rnd, total)
    out = bytearray(len(head) + total + TAG_LEN * len(segs))
    out[:len(head)] = head
    view = memoryview(out)
    linear = [memoryview(struct.pack(">Q", len(payload))), memoryview(payload).cast("B"),
              filler]
    aad_digest = hashlib.sha256(aad).digest()
    w = len(head)
    runs = list(_runs(_rotated(linear, p, total), segs))
    for i, ((n, key, nonce), run) in enumerate(zip(segs, runs, strict=True)):
        seg_aad = _seg_aad(i, len(segs), aad_digest)
        if len(run) == 1:  # the whole segment lies in one piece: one-shot AEAD
            AESGCM(key).encrypt_into(nonce, run[0], seg_aad, view[w:w + n + TAG_LEN])
        elif n <= GATHER_MAX:  # a short segment: gathering it is cheaper than a context
            AESGCM(key).encrypt_into(nonce, b"".join(run), seg_aad, view[w:w + n + TAG_LEN])
        else:
            enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
            enc.authenticate_additional_data(seg_aad)
            at = w
            for piece in run:
                enc.update_into(piece, view[at:at + len(piece)])
                at += len(piece)
            enc.finalize()
            view[at:at + TAG_LEN] = enc.tag
        w += n + TAG_LEN
    return out


def check_body_length(cls: int, body_len: int) -> int:
    """The frame length of class ``cls`` if ``body_len`` bytes of segments can hold it;
    TsrgError otherwise.  A frame of T bytes is cut into between ceil(T / MAX_SEGMENT) and
    ceil(T / MIN_SEGMENT) segments, each with its tag: checked from the header alone,
    before anything is planned or allocated, so that what decryption costs is bounded by
    the input and not by the class the header claims (which may be up to 1 TiB)."""
    total = class_length(cls)
    fewest, most = -(-total // MAX_SEGMENT), -(-total // MIN_SEGMENT)
    if not total + TAG_LEN * fewest <= body_len <= total + TAG_LEN * most:
        raise TsrgError("ciphertext length does not match its size class")
    return total


def _open(rnd: Randomizer, body: memoryview, aad: bytes, cls: int) -> bytearray:
    total = check_body_length(cls, len(body))
    p, segs = _plan(rnd, total)  # at most len(body) / MIN_SEGMENT + 1 segments
    if len(body) != total + TAG_LEN * len(segs):
        raise TsrgError("ciphertext length does not match its size class")
    # the linear layout is [length | payload | filler]: the length goes to its own
    # buffer, payload and filler to the result, which is then cut to the payload
    head, result = bytearray(LENGTH_LEN), bytearray(total - LENGTH_LEN)
    _decrypt_segments(body, segs, _rotated([memoryview(head), memoryview(result)], p, total),
                      hashlib.sha256(aad).digest())
    length = int.from_bytes(head, "big")
    if length > total - LENGTH_LEN:
        raise TsrgError("corrupt frame length")
    del result[length:]  # in place (no view of it is left): the payload starts the buffer
    return result


def _decrypt_segments(body: memoryview, segs: list[tuple[int, bytes, bytes]],
                      frame: list[memoryview], aad_digest: bytes) -> None:
    r = 0
    for i, ((n, key, nonce), run) in enumerate(zip(segs, list(_runs(frame, segs)),
                                                   strict=True)):
        seg_aad = _seg_aad(i, len(segs), aad_digest)
        try:
            if len(run) == 1:
                AESGCM(key).decrypt_into(nonce, body[r:r + n + TAG_LEN], seg_aad, run[0])
            elif n <= GATHER_MAX:
                plain = memoryview(AESGCM(key).decrypt(nonce, body[r:r + n + TAG_LEN], seg_aad))
                at = 0
                for piece in run:
                    piece[:] = plain[at:at + len(piece)]
                    at += len(piece)
            else:
                dec = Cipher(algorithms.AES(key),
                             modes.GCM(nonce, bytes(body[r + n:r + n + TAG_LEN]))).decryptor()
                dec.authenticate_additional_data(seg_aad)
                at = r
                for piece in run:
                    dec.update_into(body[at:at + len(piece)], piece)
                    at += len(piece)
                dec.finalize()
        except InvalidTag:
            raise TsrgError(f"authentication failed (segment {i})") from None
        r += n + TAG_LEN


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

    def encrypt_buffer(self, key: bytes, plaintext: bytes, aad: bytes) -> bytearray:
        """The blob, in the buffer it was written to (no copy)."""
        cls, fill = filler_length(len(plaintext))
        rand = bytearray(16 + fill)
        self._random.read_into(rand)  # one request: nonce, then filler
        header = MAGIC + bytes([MODERN, 0]) + struct.pack(">H", cls) + rand[:16]
        return _seal(self._randomizer(key, header), plaintext, aad, header, cls,
                     memoryview(rand)[16:])

    def encrypt(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return bytes(self.encrypt_buffer(key, plaintext, aad))

    def decrypt_buffer(self, key: bytes, ciphertext: bytes | bytearray | memoryview,
                       aad: bytes) -> bytearray:
        """The payload, in the buffer it was decrypted into (no copy)."""
        body = memoryview(ciphertext).cast("B")
        if len(body) < HEADER_LEN + MIN_FRAME + TAG_LEN:
            raise TsrgError("ciphertext too short")
        header = bytes(body[:HEADER_LEN])
        if header[:4] != MAGIC:
            raise TsrgError("not a TSRG blob")
        if header[4] != MODERN:
            raise TsrgError(f"unsupported TSRG profile {header[4]}")
        if header[5] != 0:
            raise TsrgError("reserved header byte must be zero")
        cls = struct.unpack(">H", header[6:8])[0]
        return _open(self._randomizer(key, header), body[HEADER_LEN:], aad, cls)

    def decrypt(self, key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        return bytes(self.decrypt_buffer(key, ciphertext, aad))


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
        filler = bytearray(fill)
        self._random.read_into(filler)
        record = _seal(self._out, payload, head + aad, head, cls, memoryview(filler))
        self._out.ratchet()  # this record's keys cannot be recomputed from what is left
        return bytes(record)

    def open(self, record: bytes, aad: bytes = b"") -> bytes:
        if self._broken:
            raise TsrgError("the session is closed after a failed record")
        try:
            if len(record) < SESSION_HEADER_LEN or record[:4] != SESSION_MAGIC:
                raise TsrgError("not a TSRG session record")
            cls, seq = struct.unpack(">HQ", record[4:SESSION_HEADER_LEN])
            if seq != self._received:
                raise TsrgError(f"record {seq} out of order (expected {self._received})")
            head = record[:SESSION_HEADER_LEN]
            payload = bytes(_open(self._in, memoryview(record)[SESSION_HEADER_LEN:],
                                  head + aad, cls))
            self._in.ratchet()
        except TsrgError:
            self._broken = True
            raise
        self._received += 1
        return payload

