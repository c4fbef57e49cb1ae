"""Identities of users and services: a name, an Ed25519 signing key and an X25519 encryption key."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tcms import codec
from tcms.crypto import h, tagged

KINDS = ("user", "gateway", "tss", "ttp", "dc")


MAX_NAME = 254  # RFC 5321: a path holds at most 256 octets, the brackets included
MAX_LOCAL_PART = 64
# RFC 5322 atext without "/", "?", "#" and "%", which would change the meaning of the name in
# a URL (the DC lookup is GET /keys/{name}); quoted local parts are not party names
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                         "!$&'*+-=^_`{|}~.")
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def party_name_error(address: str) -> str | None:
    """Why ``address`` cannot be the name of a protocol party, or None if it can.

    A party name is a plain ASCII mail address ``local@domain`` (either case; names are
    kept lower-case by ``normalise_name``): at most 254 characters; a local part of at most
    64 characters from RFC 5322's atext without ``/ ? # %``, with no leading, trailing or
    double dot; a domain of dot-separated LDH labels of 1 to 63 characters.  Not accepted:
    quoted local parts, address literals, spaces, control characters, other characters.
    Pure and linear in the length of ``address``; the reason is plain ASCII and quotes
    nothing of ``address`` but at most one offending character (escaped), so it can go into
    a reply or a log as it is.
    """
    if not address:
        return "the address is empty"
    if len(address) > MAX_NAME:
        return f"the address is longer than {MAX_NAME} characters"
    for c in address:
        if not c.isprintable():  # also every space but U+0020 (CR, LF, TAB, U+2028, ...)
            return f"the address contains a control character ({_shown(c)})"
        if c.isspace():
            return f"the address contains a space ({_shown(c)})"
        if not c.isascii():
            return f"the address contains a non-ASCII character ({_shown(c)})"
    if address.count("@") != 1:
        return "the address must contain exactly one @"
    local, domain = address.split("@")
    if local.startswith('"'):
        return "a quoted local part cannot be a party name"
    if not local:
        return "the local part (before the @) is empty"
    if len(local) > MAX_LOCAL_PART:
        return f"the local part is longer than {MAX_LOCAL_PART} characters"
    for c in local:
        if c not in _LOCAL_CHARS:
            return f"the local part contains {_shown(c)}, which a party name may not hold"
    if local[0] == "." or local[-1] == "." or ".." in local:
        return "the local part begins or ends with a dot or has two dots in a row"
    if not domain:
        return "the domain (after the @) is empty"
    if domain.startswith("["):
        return "an address literal cannot be a party name"
    for label in domain.split("."):
        if not label:
            return "the domain has an empty label (a leading, trailing or double dot)"
        if len(label) > 63:
            return "a label of the domain is longer than 63 characters"
        for c in label:
            if c not in _LABEL_CHARS:
                return f"the domain contains {_shown(c)}, which a domain name may not hold"
        if label[0] == "-" or label[-1] == "-":
            return "a label of the domain begins or ends with a hyphen"
    return None


def _shown(c: str) -> str:
    """One character, shown safely in ASCII: 'x' or U+0000."""
    return f"'{c}'" if c.isascii() and c.isprintable() and c != " " else f"U+{ord(c):04X}"


def check_party_name(name: str) -> str:
    """``name`` normalised, or ValueError naming why it cannot be a party's name."""
    norm = normalise_name(name)
    why = party_name_error(norm)
    if why is not None:
        raise ValueError(f"{name[:80]!r} cannot be certified: {why}")
    return norm


def normalise_name(name: str) -> str:
    """Addresses compare case-insensitively; store them lower-case and stripped."""
    name = name.strip().lower()
    if not name or any(c.isspace() or not c.isprintable() for c in name) or len(name) > 254:
        raise ValueError(f"not a valid identity name: {name[:80]!r}")
    return name


def _raw(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


@dataclass(frozen=True)
class Party:
    """The public half of an identity, as it is bound into every protocol header."""

    name: str
    sig_pk: bytes
    enc_pk: bytes

    def __post_init__(self) -> None:
        if len(self.sig_pk) != 32 or len(self.enc_pk) != 32:
            raise ValueError("public keys must be 32 bytes (Ed25519, X25519)")

    def to_value(self) -> list[codec.Value]:
        return [self.name, self.sig_pk, self.enc_pk]

    @classmethod
    def from_value(cls, value: codec.Value) -> Party:
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not isinstance(value[0], str)
            or not isinstance(value[1], bytes)
            or not isinstance(value[2], bytes)
        ):
            raise codec.CodecError("malformed party")
        return cls(value[0], value[1], value[2])

    @property
    def fingerprint(self) -> str:
        """A stable fingerprint: SHA-256 of the canonical (name, keys), first 20 bytes, hex."""
        digest = h(tagged("PARTY", *self.to_value()))[:20].hex()
        return ":".join(digest[i : i + 4] for i in range(0, len(digest), 4))

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "sig_pk": base64.b64encode(self.sig_pk).decode(),
            "enc_pk": base64.b64encode(self.enc_pk).decode(),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Party:
        party = cls(
            normalise_name(data["name"]),
            base64.b64decode(data["sig_pk"], validate=True),
            base64.b64decode(data["enc_pk"], validate=True),
        )
        if "fingerprint" in data and data["fingerprint"] != party.fingerprint:
            raise ValueError(f"fingerprint mismatch for {party.name}")
        return party


@dataclass(frozen=True)
class Identity:
    """A party with its private keys (held only by its owner)."""

    name: str
    kind: str
    sig_key: Ed25519PrivateKey = field(repr=False)
    enc_key: X25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, name: str, kind: str = "user") -> Identity:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        return cls(
            normalise_name(name), kind, Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
        )

    @classmethod
    def from_seed(cls, name: str, seed: bytes, kind: str = "user") -> Identity:
        """Deterministic keys from a 32-byte seed: known-answer tests only."""
        return cls(
            normalise_name(name),
            kind,
            Ed25519PrivateKey.from_private_bytes(h(b"sig" + seed)),
            X25519PrivateKey.from_private_bytes(h(b"enc" + seed)),
        )

    @property
    def party(self) -> Party:
        return Party(self.name, _raw(self.sig_key.public_key()), _raw(self.enc_key.public_key()))

    def to_encrypted_json(self, passphrase: bytes) -> dict[str, Any]:
        """Serialise with both private keys as PKCS#8 PEM encrypted under ``passphrase``."""
        if len(passphrase) < 8:
            raise ValueError("the key passphrase must have at least 8 characters")
        enc = serialization.BestAvailableEncryption(passphrase)
        pem = serialization.Encoding.PEM
        pkcs8 = serialization.PrivateFormat.PKCS8
        return {
            "format": "tcms-identity/1",
            "kind": self.kind,
            **self.party.to_json(),
            "sig_key": self.sig_key.private_bytes(pem, pkcs8, enc).decode(),
            "enc_key": self.enc_key.private_bytes(pem, pkcs8, enc).decode(),
        }

    @classmethod
    def from_encrypted_json(cls, data: dict[str, Any], passphrase: bytes) -> Identity:
        try:
            sig = serialization.load_pem_private_key(data["sig_key"].encode(), passphrase)
            enc = serialization.load_pem_private_key(data["enc_key"].encode(), passphrase)
        except (ValueError, TypeError):
            raise ValueError(
                f"cannot decrypt the keys of {data.get('name')!r}: wrong passphrase?"
            ) from None
        if not isinstance(sig, Ed25519PrivateKey) or not isinstance(enc, X25519PrivateKey):
            raise ValueError("identity file holds keys of the wrong type")
        ident = cls(normalise_name(data["name"]), data.get("kind", "user"), sig, enc)
        if ident.party != Party.from_json(data):
            raise ValueError(f"identity file of {ident.name} is inconsistent")
        return ident


def new_tx_id() -> bytes:
    """A fresh 128-bit transaction id."""
    return os.urandom(16)
