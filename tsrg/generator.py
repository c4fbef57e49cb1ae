"""The modern TSRG two-stage generator.

Stage 1, the *randomizer*: a ChaCha20 keystream whose output is never exposed.  It draws,
for each segment of output, a fresh stage-2 key and nonce and the segment's length (the
"unpredictable instant" of the next reseed).  It replaces its own key and discards the old
one (``ratchet``) after every segment of ``TsrgRandom`` and every record of a session:
without an entropy source (the cipher, whose receiver must follow every reseed, and the
seeded test mode) the new key is stage-1 output itself (fast key erasure); with one, it is
the same, except at intervals drawn from stage-1 output (256 KiB to 2 MiB of generated
output, or 64 requests, whichever comes first), where the new key is HKDF-SHA256(stage-1
output || OS entropy, salt = old key): the SP 800-90A reseed pattern.

Stage 2, the *fast generator*: AES-256 in counter mode (AES-NI), keyed by stage 1 for one
segment at a time.  Its keystream is the output (``TsrgRandom``), or, in the cipher, the
keystream of an AES-256-GCM segment (``tsrg.cipher``).

So a captured state reveals no earlier output (every key that produced it is gone:
backtracking resistance) and, once the next reseed has mixed in fresh OS entropy, no later
output either.  All primitives come from ``cryptography``; nothing is home-made.

How the keystreams are computed.  Building a cipher context costs microseconds of Python
per key, and both stages change keys often, so both use the one-shot AEAD objects of
``cryptography`` on zeros, whose ciphertext *is* the raw keystream:

- stage 1, ChaCha20 (RFC 8439) under the stage-1 key, 96-bit nonce = block number i,
  block counter from 1 (``ChaCha20Poly1305.encrypt`` of zeros, without its tag);
- stage 2, AES-256-CTR under the segment key from the counter block ``nonce || 2``
  (``AESGCM.encrypt`` of zeros, without its tag; GCM encrypts with exactly this CTR).

``tests/test_tsrg.py`` checks both identities against the plain ChaCha20 and AES-CTR
contexts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_SEGMENT = 1 << 18
MAX_SEGMENT = 1 << 21
RESEED_REQUESTS = 64  # at most this many requests between two OS-entropy reseeds
STAGE1_BLOCK = 512  # stage-1 keystream is computed this many bytes at a time
_ZEROS = memoryview(bytes(MAX_SEGMENT))


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


@dataclass(frozen=True, slots=True)
class Segment:
    """One stage-2 keying: AES-256 key, 12-byte nonce, length in bytes."""

    key: bytes
    nonce: bytes
    length: int


def aes_ctr_keystream(key: bytes, nonce: bytes, n: int) -> memoryview:
    """n bytes (n <= MAX_SEGMENT) of AES-256-CTR keystream from the counter block
    ``nonce || 2``: AES-GCM's encryption of zeros, without the tag."""
    return memoryview(AESGCM(key).encrypt(nonce, _ZEROS[:n], None))[:n]


class Randomizer:
    """Stage 1: ChaCha20 keystream under a ratcheting key; yields segments, never raw output."""

    def __init__(self, key: bytes, entropy: Callable[[int], bytes] | None = None) -> None:
        if len(key) != 32:
            raise ValueError("stage-1 key must be 32 bytes")
        if entropy is not None:  # the very first output already depends on fresh entropy
            key = hkdf(entropy(32), salt=key, info=b"TSRG1/instantiate")
        self._entropy = entropy
        self._set_key(key)
        self.reseeds = 0  # replacements of the stage-1 key (ratchets and OS reseeds)
        self.entropy_reseeds = 0
        self._budget = self._requests = 0
        if entropy is not None:
            self._draw_interval()

    def _set_key(self, key: bytes) -> None:
        self._key = key
        self._chacha = ChaCha20Poly1305(key)
        self._block = 0
        self._pool = b""
        self._at = 0

    def read(self, n: int) -> bytes:
        """Protected stage-1 output (for keying and layout decisions only)."""
        if self._at + n > len(self._pool):
            fresh = []
            for _ in range(-(-(n - len(self._pool) + self._at) // STAGE1_BLOCK)):
                nonce = self._block.to_bytes(12, "big")
                self._block += 1
                fresh.append(self._chacha.encrypt(nonce, _ZEROS[:STAGE1_BLOCK], None)
                             [:STAGE1_BLOCK])
            self._pool = self._pool[self._at:] + b"".join(fresh)
            self._at = 0
        out = self._pool[self._at:self._at + n]
        self._at += n
        return out

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

    def _span(self, r: bytes) -> int:
        return MIN_SEGMENT + int.from_bytes(r, "big") % (MAX_SEGMENT - MIN_SEGMENT + 1)

    def segment(self) -> Segment:
        """The next stage-2 keying, drawn from the stream (the key is not replaced)."""
        r = self.read(32 + 12 + 4)
        return Segment(r[:32], r[32:44], self._span(r[44:48]))

    def _draw_interval(self) -> None:
        self._budget = self._span(self.read(4))
        self._requests = RESEED_REQUESTS

    def ratchet(self, produced: int = 0) -> None:
        """Replace the stage-1 key; ``produced`` is the output made since the last call.
        The old key and its unused output are gone, so nothing drawn before can be
        recomputed from what is left."""
        nxt = self.read(32)
        self.reseeds += 1
        if self._entropy is not None:
            self._budget -= produced
            self._requests -= 1
            if self._budget <= 0 or self._requests <= 0:
                # mix fresh OS entropy with the old state (HKDF, SP 800-90A style reseed)
                nxt = hkdf(nxt + self._entropy(32), salt=self._key, info=b"TSRG1/ratchet")
                self.entropy_reseeds += 1
                self._set_key(nxt)
                self._draw_interval()
                return
        self._set_key(nxt)  # fast key erasure

    def next_segment(self) -> Segment:
        """A segment, then a ratchet: the next segment comes from a different stage-1 key."""
        seg = self.segment()
        self.ratchet(seg.length)
        return seg


class TsrgRandom:
    """A random generator for keys, nonces, offsets and filler.

    ``TsrgRandom()`` seeds from the OS and mixes fresh OS entropy into its reseeds;
    ``TsrgRandom.seeded(seed)`` is deterministic and exists only for tests and known-answer
    vectors.  Within a request, stage 2 is rekeyed at the segment boundaries stage 1
    draws; after every segment, so after every request, stage 1 is rekeyed too (Fortuna's
    rule), so the state left behind does not reveal what was returned."""

    def __init__(self, seed: bytes | None = None, *, deterministic: bool = False) -> None:
        entropy = None if deterministic else os.urandom
        if seed is None:
            if deterministic:
                raise ValueError("a deterministic generator needs a seed")
            seed = os.urandom(32)
        self._stage1 = Randomizer(hkdf(seed, b"", b"TSRG1/random"), entropy)

    @classmethod
    def seeded(cls, seed: bytes) -> TsrgRandom:
        return cls(seed, deterministic=True)

    @property
    def reseeds(self) -> int:
        return self._stage1.reseeds

    @property
    def entropy_reseeds(self) -> int:
        return self._stage1.entropy_reseeds

    def __call__(self, n: int) -> bytes:
        return self.read(n)

    def read(self, n: int) -> bytes:
        """``n`` random bytes (one request)."""
        out = bytearray(n)
        self.read_into(out)
        return bytes(out)

    def read_into(self, buf: bytearray | memoryview) -> None:
        """Fill ``buf`` with random bytes (one request), without an intermediate copy."""
        view = memoryview(buf).cast("B")
        n, pos = len(view), 0
        while True:  # every segment: its own stage-2 key, from its own stage-1 key
            seg = self._stage1.segment()
            take = min(n - pos, seg.length)
            if n - pos - take >= 16:  # room for GCM's tag, which the next segment overwrites
                AESGCM(seg.key).encrypt_into(seg.nonce, _ZEROS[:take], None,
                                             view[pos:pos + take + 16])
            else:
                view[pos:pos + take] = aes_ctr_keystream(seg.key, seg.nonce, take)
            pos += take
            self._stage1.ratchet(take)
            if pos == n:
                return

    def stream(self, n: int) -> bytes:
        """``n`` bytes of one continuous output, for the test batteries."""
        return self.read(n)

    def uniform(self, bound: int) -> int:
        return self._stage1.uniform(bound)
