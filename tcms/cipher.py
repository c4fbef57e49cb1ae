"""The message encryption E_k used for c in m3, as a pluggable interface.

The default is the TSRG cryptosystem (package ``tsrg``, algorithm id ``tsrg-modern``),
loaded on first use; AES-256-GCM from ``cryptography`` (``aes256gcm``) is the plain AEAD
alternative.  The algorithm id is part of the signed protocol header, so a downgrade
changes H(core).
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class DecryptionError(Exception):
    """Ciphertext, key or associated data do not match."""


class MessageCipher(Protocol):
    alg_id: str

    def encrypt(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes: ...

    def decrypt(self, key: bytes, ciphertext: bytes, aad: bytes) -> bytes: ...


class AesGcmCipher:
    alg_id = "aes256gcm"

    def encrypt(self, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)

    def decrypt(self, key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        if len(ciphertext) < 28:
            raise DecryptionError("ciphertext too short")
        try:
            return AESGCM(key).decrypt(ciphertext[:12], ciphertext[12:], aad)
        except InvalidTag:
            raise DecryptionError("authentication tag does not verify") from None


_REGISTRY: dict[str, MessageCipher] = {AesGcmCipher.alg_id: AesGcmCipher()}
DEFAULT_ALG = "tsrg-modern"


def register(cipher: MessageCipher, *, default: bool = False) -> None:
    global DEFAULT_ALG
    _REGISTRY[cipher.alg_id] = cipher
    if default:
        DEFAULT_ALG = cipher.alg_id


def registered(alg_id: str) -> bool:
    return alg_id in _REGISTRY


def _load_builtins() -> None:
    """Let the installed packages register their ciphers (the ``tcms.ciphers`` entry
    points: the TSRG package adds ``tsrg-modern``)."""
    for ep in entry_points(group="tcms.ciphers"):
        ep.load()()


def get(alg_id: str) -> MessageCipher:
    if alg_id not in _REGISTRY:
        _load_builtins()
    try:
        return _REGISTRY[alg_id]
    except KeyError:
        hint = ("" if any(entry_points(group="tcms.ciphers")) else
                " (no package registers a cipher: the 'tcms.ciphers' entry points are not "
                "installed; run `make setup` or `pip install -e .`)")
        raise DecryptionError(f"unknown message cipher {alg_id!r}{hint}") from None


def default() -> MessageCipher:
    return get(DEFAULT_ALG)
