"""Thin, named wrappers over vetted primitives from ``cryptography``.

Nothing here is a new primitive: SHA-256, Ed25519, HKDF-SHA256 and HPKE (RFC 9180,
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) all come from ``cryptography``.
Every signature and every key wrap is domain-separated by a step tag encoded with the
deterministic codec, so no signed item can be reused as another.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tcms import codec

PROTOCOL = "TCMS1"
SIG_ALG = "ed25519"
WRAP_ALG = "hpke-x25519-sha256-aes256gcm"
HASH_ALG = "sha256"

_HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class CryptoError(Exception):
    """A signature, key wrap or commitment did not verify."""


def h(data: bytes | bytearray | memoryview) -> bytes:
    """H = SHA-256."""
    return hashlib.sha256(data).digest()


def tagged(tag: str, *fields: codec.Value) -> bytes:
    """The canonical byte string of a step tag and its fields: what gets signed or hashed."""
    return codec.encode([f"{PROTOCOL}/{tag}", *fields])


def ct_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two byte strings."""
    return hmac.compare_digest(a, b)


# --- signatures -------------------------------------------------------------------------


def sign(key: Ed25519PrivateKey, tag: str, *fields: codec.Value) -> bytes:
    return key.sign(tagged(tag, *fields))


def verify(public: bytes, signature: bytes, tag: str, *fields: codec.Value) -> None:
    """Raise CryptoError unless ``signature`` is ``public``'s Ed25519 signature of the fields."""
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise CryptoError("signature has the wrong length")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, tagged(tag, *fields))
    except (InvalidSignature, ValueError):
        raise CryptoError("signature does not verify") from None


# --- key wrap (HPKE base mode, single shot) --------------------------------------------


def wrap(public: bytes, secret: bytes, tag: str, *context: codec.Value) -> bytes:
    """Encrypt ``secret`` to an X25519 public key; the tag and context are HPKE ``info``."""
    return bytes(
        _HPKE.encrypt(
            secret, X25519PublicKey.from_public_bytes(public), info=tagged(tag, *context)
        )
    )


def unwrap(private: X25519PrivateKey, blob: bytes, tag: str, *context: codec.Value) -> bytes:
    try:
        return bytes(_HPKE.decrypt(blob, private, info=tagged(tag, *context)))
    except (InvalidTag, ValueError):
        raise CryptoError("key wrap does not open") from None


# --- key split and commitments ---------------------------------------------------------


def derive_message_key(k_r: bytes, k_t: bytes, tx: bytes) -> bytes:
    """k = HKDF-SHA256(k_R || k_T, salt = tx, info = "TCMS1/K")."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=tx, info=tagged("K")
    ).derive(k_r + k_t)


def commit(label: str, tx: bytes, share: bytes) -> bytes:
    """hk = H("kR"|"kT", tx, share)."""
    return h(tagged("COMMIT", label, tx, share))


def check_commitment(label: str, tx: bytes, share: bytes, expected: bytes) -> None:
    if not ct_equal(commit(label, tx, share), expected):
        raise CryptoError(f"key share does not match its commitment hk_{label[1:]}")
