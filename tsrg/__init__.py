"""TSRG: the two-stage random generator and the randomized encryption E_k built on it.

``modern`` (the default) composes ChaCha20, AES-256 (CTR/GCM) and HKDF-SHA256 from
``cryptography``; ``paper`` reproduces the published design (IDEA, Lehmer) and is unsafe,
kept only for comparison.  ``tsrg-modern`` is the protocol's default message cipher
(``tcms.cipher`` loads it on first use).  See docs/tsrg.md."""

from tsrg.cipher import TsrgCipher, TsrgError, TsrgSession
from tsrg.generator import TsrgRandom


def register() -> None:
    """Make ``tsrg-modern`` available to (and the default of) the protocol core."""
    from tcms import cipher

    if not cipher.registered(TsrgCipher.alg_id):
        cipher.register(TsrgCipher())


__all__ = ["TsrgCipher", "TsrgError", "TsrgRandom", "TsrgSession", "register"]
