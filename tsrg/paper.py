"""The ``paper`` profile: the published TSRG generator, as closely as the libraries allow.

UNSAFE.  Kept only to measure it next to the ``modern`` profile.  Never used by the protocol.

Stage 1: IDEA (``cryptography``'s decrepit module) in a "special" output-feedback mode: each
step encrypts the 64-bit register, outputs the top 32 bits and shifts them into the register
(OFB with 32-bit feedback; the published text does not define the mode further, and with
less than full-block feedback the expected cycle length drops to about 2**32 blocks).

Stage 2: a Lehmer generator (MINSTD, x <- 16807 x mod 2**31 - 1) whose 31-bit states are the
output, as 32-bit big-endian words; stage 1 reseeds it at intervals and to states drawn from
its own output.  The most significant bit of every word is 0, and a state is predictable
from the previous one: exactly the leak the authors report.
"""

from __future__ import annotations

import struct
import warnings

from cryptography.hazmat.primitives.ciphers import Cipher, modes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from cryptography.hazmat.decrepit.ciphers.algorithms import IDEA

LEHMER_M = 2**31 - 1
LEHMER_A = 16807
MIN_INTERVAL, MAX_INTERVAL = 1 << 10, 1 << 16


class IdeaSpecialOfb:
    """Stage 1: IDEA-OFB with 32-bit feedback."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        if len(key) != 16 or len(iv) != 8:
            raise ValueError("IDEA needs a 16-byte key and an 8-byte IV")
        # one block at a time: the OFB register is driven here, not by the library
        self._ecb = Cipher(IDEA(key), modes.ECB()).encryptor()  # noqa: S305
        self._reg = iv

    def word(self) -> int:
        out = self._ecb.update(self._reg)
        self._reg = self._reg[4:] + out[:4]
        return int(struct.unpack(">I", out[:4])[0])

    def read(self, n: int) -> bytes:
        words = (n + 3) // 4
        return b"".join(struct.pack(">I", self.word()) for _ in range(words))[:n]


def lehmer_words(seed: int, count: int) -> list[int]:
    """Stage 2 alone: ``count`` MINSTD states from ``seed`` (no reseeding)."""
    x = seed % LEHMER_M or 1
    out = []
    for _ in range(count):
        x = (LEHMER_A * x) % LEHMER_M
        out.append(x)
    return out


class PaperGenerator:
    """The cascade: stage 1 reseeds stage 2 at unpredictable instants to unpredictable states;
    stage 2's states are the output."""

    def __init__(self, key: bytes, iv: bytes = bytes(8)) -> None:
        self.stage1 = IdeaSpecialOfb(key, iv)
        self._x = 1
        self._left = 0
        self.reseeds = 0

    def _reseed(self) -> None:
        self._x = self.stage1.word() % LEHMER_M or 1
        self._left = MIN_INTERVAL + self.stage1.word() % (MAX_INTERVAL - MIN_INTERVAL + 1)
        self.reseeds += 1

    def read(self, n: int) -> bytes:
        out = bytearray()
        x, left = self._x, self._left
        while len(out) < n:
            if left == 0:
                self._x = x
                self._reseed()
                x, left = self._x, self._left
            take = min(left, (n - len(out) + 3) // 4)
            words = []
            for _ in range(take):
                x = (LEHMER_A * x) % LEHMER_M
                words.append(x)
            out += struct.pack(f">{take}I", *words)
            left -= take
        self._x, self._left = x, left
        return bytes(out[:n])


def stage2_output(seed: int, n: int) -> bytes:
    words = lehmer_words(seed, (n + 3) // 4)
    return struct.pack(f">{len(words)}I", *words)[:n]
