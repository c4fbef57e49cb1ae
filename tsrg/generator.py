"""The modern TSRG two-stage generator.

Stage 1, the *randomizer*: a ChaCha20 keystream whose output is never exposed.  It draws,
for each segment of output, a fresh stage-2 key and IV and the segment's length (the
"unpredictable instant" of the next reseed), then replaces its own key and discards the old
one: with an entropy source, the new key is HKDF-SHA256(stage-1 output || OS entropy, salt
= old key); without one (the cipher, whose receiver must follow every reseed, and the
seeded test mode), the new key is stage-1 output itself (fast key erasure).

Stage 2, the *fast generator*: AES-256 in counter mode (AES-NI), keyed by stage 1 for one
segment at a time.  Its keystream is the output (``TsrgRandom``), or, in the cipher, the
keystream of an AES-256-GCM segment (``tsrg.cipher``).

So a captured state reveals no earlier output (every key that produced it is gone:
backtracking resistance) and, once the next reseed has mixed in fresh OS entropy, no later
output either.  All primitives come from ``cryptography``; nothing is home-made.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_SEGMENT = 1 << 16
MAX_SEGMENT = 1 << 20
_ZEROS = bytes(MAX_SEGMENT)


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


@dataclass(frozen=True)
class Segment:
    """One stage-2 keying: AES-256 key, 16-byte IV (12-byte GCM nonce + counter), length."""

    key: bytes
    iv: bytes
    length: int


class Randomizer:
    """Stage 1: ChaCha20 keystream under a ratcheting key; yields segments, never raw output."""

    def __init__(self, key: bytes, entropy: Callable[[int], bytes] | None = None) -> None:
        if len(key) != 32:
            raise ValueError("stage-1 key must be 32 bytes")
        if entropy is not None:  # the very first output already depends on fresh entropy
            key = hkdf(entropy(32), salt=key, info=b"TSRG1/instantiate")
        self._key = key
        self._entropy = entropy
        self._stream = _chacha(key)
        self.reseeds = 0

    def read(self, n: int) -> bytes:
        """Protected stage-1 output (for keying and layout decisions only)."""
        return bytes(self._stream.update(_ZEROS[:n]))

    def uniform(self, bound: int) -> int:
        """An unbiased integer in [0, bound) by rejection sampling on stage-1 output."""
        if bound <= 1:
            return 0
        nbytes = (bound.bit_length() + 7) // 8 + 1
        limit = (256**nbytes // bound) * bound
        while True:
            v = int.from_bytes(self.read(nbytes), "big")
            if v < limit:
                return v % bound

    def next_segment(self) -> Segment:
        r = self.read(32 + 16 + 4 + 32)
        key, iv, span, ratchet = r[:32], r[32:48], r[48:52], r[52:]
        length = MIN_SEGMENT + int.from_bytes(span, "big") % (MAX_SEGMENT - MIN_SEGMENT + 1)
        if self._entropy is None:
            self._key = ratchet  # fast key erasure: stage-1 output becomes the next key
        else:  # mix fresh OS entropy with the old state (HKDF, SP 800-90A style reseed)
            self._key = hkdf(ratchet + self._entropy(32), salt=self._key, info=b"TSRG1/ratchet")
        self._stream = _chacha(self._key)
        self.reseeds += 1
        return Segment(key, iv, length)


def _chacha(key: bytes) -> CipherContext:
    return Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()


class TsrgRandom:
    """A random generator for keys, nonces, offsets and filler.

    ``TsrgRandom()`` seeds from the OS and mixes fresh OS entropy into every reseed;
    ``TsrgRandom.seeded(seed)`` is deterministic and exists only for tests and known-answer
    vectors.  After every request the stage-2 key is replaced (Fortuna-style), so the
    state left behind does not reveal what was returned."""

    def __init__(self, seed: bytes | None = None, *, deterministic: bool = False) -> None:
        entropy = None if deterministic else os.urandom
        if seed is None:
            if deterministic:
                raise ValueError("a deterministic generator needs a seed")
            seed = os.urandom(32)
        self._stage1 = Randomizer(hkdf(seed, b"", b"TSRG1/random"), entropy)
        self._left = 0
        self._stage2: object = None

    @classmethod
    def seeded(cls, seed: bytes) -> TsrgRandom:
        return cls(seed, deterministic=True)

    @property
    def reseeds(self) -> int:
        return self._stage1.reseeds

    def _next(self) -> None:
        seg = self._stage1.next_segment()
        self._stage2 = Cipher(algorithms.AES(seg.key), modes.CTR(seg.iv)).encryptor()
        self._left = seg.length

    def __call__(self, n: int) -> bytes:
        return self.read(n)

    def read(self, n: int) -> bytes:
        out = bytearray()
        while n > 0:
            if self._left == 0:
                self._next()
            take = min(n, self._left)
            out += self._stage2.update(_ZEROS[:take])  # type: ignore[attr-defined]
            self._left -= take
            n -= take
        self._left = 0  # rekey before the next request: backtracking resistance
        return bytes(out)

    def stream(self, n: int, chunk: int = 1 << 20) -> bytes:
        """``n`` bytes of one continuous output (no rekey between chunks), for batteries."""
        out = bytearray()
        while n > 0:
            if self._left == 0:
                self._next()
            take = min(n, self._left, chunk)
            out += self._stage2.update(_ZEROS[:take])  # type: ignore[attr-defined]
            self._left -= take
            n -= take
        return bytes(out)

    def uniform(self, bound: int) -> int:
        return self._stage1.uniform(bound)
