"""The data key: what encrypts the sensitive columns of the store at rest.

A keyring file in the keystore directory (``data-keys.keyring``, mode 0600) holds every
version of the key: each a random 256-bit AES-GCM key, sealed under a key derived from the
keystore passphrase (scrypt).  One version is current and seals new values; the others
still open what they sealed.  ``tcms keys data-key rotate`` adds a version and makes it
current, ``tcms store reencrypt`` moves every stored value to the current version, and
``tcms keys data-key retire`` drops a version no value uses any more (docs/gateway.md,
"Data at rest").

A sealed value is ``0x00 0x01``, the key id (4 bytes), a random 96-bit nonce, then the
AES-256-GCM ciphertext and tag.  The associated data binds that header and the column's
name (``runs.state`` ...), so a value cannot be moved to another column.  No value the store
keeps in clear starts with 0x00 (mail is text, machine state and protocol messages are
CBOR maps and arrays, time-stamp requests DER, notices JSON), so values stored before
encryption stay readable, told apart by their first byte, until re-encrypted.  The empty
value stays empty (a handled inbound mail, a delivery marker): it holds nothing.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tcms.keystore import write_private

FILE = "data-keys.keyring"
FORMAT = "tcms-data-keys/1"
MARK, VERSION = 0x00, 0x01
HEADER = struct.Struct(">BBI")  # mark, format version, key id
NONCE, TAG = 12, 16
SCRYPT = {"n": 2**15, "r": 8, "p": 1}
RELOAD_EVERY = 10.0  # seconds: how often an unknown key id makes the keyring be re-read


class DataKeyError(Exception):
    """A stored value cannot be sealed or opened; the subclass names why."""


class DataKeyMissing(DataKeyError):
    """The store has no data key, and a value needs one."""


class DataKeyUnknown(DataKeyError):
    """A value is sealed under a key version this keyring does not hold."""


class DataKeyMismatch(DataKeyError):
    """A value does not open under its key: altered, moved, or another keyring's key."""


class KeyringError(DataKeyError):
    """The keyring file is missing, malformed, or does not open with the passphrase."""


def keyring_path(directory: Path) -> Path:
    return Path(directory) / FILE


def key_id_of(value: bytes, *, whole: bool = True) -> int | None:
    """The key id a stored value is sealed under; None for a value in clear.  ``whole``
    False: ``value`` is only the start of the stored value (its header at least)."""
    if not value or value[0] != MARK:
        return None
    least = HEADER.size + NONCE + TAG if whole else HEADER.size
    if len(value) < least or value[1] != VERSION:
        raise DataKeyMismatch(f"a stored value starts like a sealed one but is not one "
                              f"(format {value[1] if len(value) > 1 else '?'}, "
                              f"{len(value)} bytes)")
    return int(HEADER.unpack_from(value)[2])


@dataclass(frozen=True)
class DataKey:
    id: int
    created_at: int
    secret: bytes = field(repr=False)


class DataKeys:
    """The versions of the data key one process holds; seals and opens column values."""

    def __init__(self, keys: Iterable[DataKey], current: int, *,
                 source: tuple[Path, bytes] | None = None) -> None:
        self.keys = {k.id: k for k in keys}
        if current not in self.keys:
            raise KeyringError(f"the current data key {current:08x} is not in the keyring")
        self.current = current
        self._aead = {k.id: AESGCM(k.secret) for k in self.keys.values()}
        self._source = source  # (directory, passphrase): re-read for a key made elsewhere
        self._reloaded = 0.0

    def seal(self, plain: bytes, column: str) -> bytes:
        """header, nonce, ciphertext and tag, written into one buffer (a large value is
        not copied once more to put them together)."""
        header = HEADER.pack(MARK, VERSION, self.current)
        nonce = os.urandom(NONCE)
        start = HEADER.size + NONCE
        sealed = bytearray(start + len(plain) + TAG)
        sealed[:start] = header + nonce
        self._aead[self.current].encrypt_into(nonce, plain, _associated(header, column),
                                              memoryview(sealed)[start:])
        return sealed  # type: ignore[return-value]  # bytes-like, for the database driver

    def open(self, value: bytes, column: str) -> bytes:
        kid = key_id_of(value)
        if kid is None:
            return value
        aead = self._aead.get(kid) or self._reload(kid)
        header, nonce = value[:HEADER.size], value[HEADER.size:HEADER.size + NONCE]
        try:  # the ciphertext as a view: a large value is not copied before it is opened
            return aead.decrypt(nonce, memoryview(value)[HEADER.size + NONCE:],
                                _associated(header, column))
        except InvalidTag:
            raise DataKeyMismatch(
                f"a value of {column} does not open with data key {kid:08x}: it was "
                "altered, moved from another column, or sealed by another keyring's key "
                "of that id") from None

    def _reload(self, kid: int) -> AESGCM:
        """A key made after this process loaded the keyring (another gateway rotated and
        the file was copied here): read the file again, at most every RELOAD_EVERY s."""
        now = time.monotonic()
        if self._source is not None and now - self._reloaded >= RELOAD_EVERY:
            self._reloaded = now
            fresh = load(*self._source)
            if fresh is not None:
                for k in fresh.keys.values():
                    if k.id not in self.keys:
                        self.keys[k.id] = k
                        self._aead[k.id] = AESGCM(k.secret)
        aead = self._aead.get(kid)
        if aead is None:
            raise DataKeyUnknown(
                f"a value is sealed under data key {kid:08x}, which this keyring "
                f"({', '.join(f'{i:08x}' for i in sorted(self.keys))}) does not hold: "
                f"copy {FILE} from the gateway that made it")
        return aead


def open_value(keys: DataKeys | None, value: bytes, column: str) -> bytes:
    """A stored value in clear: opened with ``keys``, or as it is if it was never sealed."""
    if keys is not None:
        return keys.open(value, column)
    kid = key_id_of(value)
    if kid is not None:
        raise DataKeyMissing(
            f"{column} is encrypted (data key {kid:08x}) and this store has no data key: "
            f"it is read from {FILE} in the keystore with the passphrase "
            "(TCMS_KEYS__PASSPHRASE)")
    return value


def seal_value(keys: DataKeys | None, value: bytes, column: str) -> bytes:
    if not value:
        return value
    if keys is None:
        raise DataKeyMissing(f"{column} is written encrypted and this store has no data "
                             f"key ({FILE} in the keystore)")
    return keys.seal(value, column)


def _associated(header: bytes, column: str) -> bytes:
    return header + b"tcms-column:" + column.encode()


# --- the keyring file ----------------------------------------------------------------


def _kek(passphrase: bytes, salt: bytes, params: dict[str, int]) -> AESGCM:
    return AESGCM(Scrypt(salt=salt, length=32, n=params["n"], r=params["r"],
                         p=params["p"]).derive(passphrase))


def _wrap_ad(kid: int) -> bytes:
    return f"tcms-data-key/{kid:08x}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _read(directory: Path) -> dict[str, Any] | None:
    path = keyring_path(directory)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise KeyringError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise KeyringError(f"{path} is not a TCMS data keyring ({FORMAT})")
    return data


def describe(directory: Path) -> list[tuple[int, int, bool]]:
    """(key id, created at, current) of every version, without the passphrase."""
    data = _read(directory)
    if data is None:
        return []
    try:
        return [(int(k["id"]), int(k["created_at"]), int(k["id"]) == int(data["current"]))
                for k in data["keys"]]
    except (KeyError, TypeError, ValueError):
        raise KeyringError(f"{keyring_path(directory)} is malformed") from None


def load(directory: Path, passphrase: bytes) -> DataKeys | None:
    """The keyring of ``directory`` opened with ``passphrase``; None if there is none."""
    data = _read(directory)
    if data is None:
        return None
    path = keyring_path(directory)
    try:
        kdf = data["kdf"]
        kek = _kek(passphrase, base64.b64decode(kdf["salt"]),
                   {k: int(kdf[k]) for k in ("n", "r", "p")})
        keys = []
        for k in data["keys"]:
            kid = int(k["id"])
            secret = kek.decrypt(base64.b64decode(k["nonce"]), base64.b64decode(k["sealed"]),
                                 _wrap_ad(kid))
            keys.append(DataKey(kid, int(k["created_at"]), secret))
        return DataKeys(keys, int(data["current"]), source=(Path(directory), passphrase))
    except InvalidTag:
        raise KeyringError(f"the data keys in {path} do not open with this passphrase "
                           "(or the file was altered)") from None
    except (KeyError, TypeError, ValueError):
        raise KeyringError(f"{path} is malformed") from None


def _save(directory: Path, passphrase: bytes, data: dict[str, Any] | None,
          secrets_by_id: dict[int, bytes], current: int, created: dict[int, int], *,
          exclusive: bool) -> None:
    if len(passphrase) < 8:  # as for identities (tcms/identity.py)
        raise KeyringError("the key passphrase must have at least 8 characters")
    if data is None:
        kdf: dict[str, Any] = {"name": "scrypt", "salt": _b64(os.urandom(16)), **SCRYPT}
        entries: dict[int, dict[str, Any]] = {}
    else:
        kdf = data["kdf"]
        entries = {int(k["id"]): k for k in data["keys"]}
    kek = _kek(passphrase, base64.b64decode(kdf["salt"]), {k: int(kdf[k]) for k in
                                                            ("n", "r", "p")})
    out = []
    for kid, secret in secrets_by_id.items():
        if kid not in entries:
            nonce = os.urandom(NONCE)
            entries[kid] = {"id": kid, "created_at": created[kid], "nonce": _b64(nonce),
                            "sealed": _b64(kek.encrypt(nonce, secret, _wrap_ad(kid)))}
        out.append(entries[kid])
    write_private(keyring_path(directory), json.dumps(
        {"format": FORMAT, "kdf": kdf, "current": current, "keys": out}, indent=1) + "\n",
        exclusive=exclusive)


def _new_id(taken: Iterable[int]) -> int:
    used = set(taken)
    while True:
        kid = secrets.randbits(32)
        if kid and kid not in used:
            return kid


def create(directory: Path, passphrase: bytes, now: int | None = None) -> DataKeys:
    """A new keyring with one key; KeyringError if ``directory`` has one already."""
    kid, secret, at = _new_id(()), AESGCM.generate_key(256), int(now or time.time())
    try:
        _save(directory, passphrase, None, {kid: secret}, kid, {kid: at}, exclusive=True)
    except FileExistsError:
        raise KeyringError(f"{keyring_path(directory)} exists already") from None
    return DataKeys([DataKey(kid, at, secret)], kid, source=(Path(directory), passphrase))


def load_or_create(directory: Path, passphrase: bytes, now: int | None = None) -> DataKeys:
    """The keyring, created on first use (two processes starting at once share one)."""
    keys = load(directory, passphrase)
    if keys is not None:
        return keys
    try:
        return create(directory, passphrase, now)
    except KeyringError:
        keys = load(directory, passphrase)  # another process created it meanwhile
        if keys is None:
            raise
        return keys


def rotate(directory: Path, passphrase: bytes, now: int | None = None) -> DataKeys:
    """Add a new key version and make it current (the keyring is created if missing)."""
    keys = load(directory, passphrase)
    if keys is None:
        return create(directory, passphrase, now)
    kid, secret, at = _new_id(keys.keys), AESGCM.generate_key(256), int(now or time.time())
    secrets_by_id = {k.id: k.secret for k in keys.keys.values()} | {kid: secret}
    created = {k.id: k.created_at for k in keys.keys.values()} | {kid: at}
    _save(directory, passphrase, _read(directory), secrets_by_id, kid, created,
          exclusive=False)
    return DataKeys([*keys.keys.values(), DataKey(kid, at, secret)], kid,
                    source=(Path(directory), passphrase))


def retire(directory: Path, passphrase: bytes, kid: int) -> DataKeys:
    """Drop the key version ``kid`` (never the current one).  The caller checks first
    that no stored value is sealed under it: what it sealed cannot be opened again."""
    keys = load(directory, passphrase)
    if keys is None:
        raise KeyringError(f"no data keys in {directory}")
    if kid not in keys.keys:
        raise KeyringError(f"no data key {kid:08x} in {keyring_path(directory)}")
    if kid == keys.current:
        raise KeyringError(f"data key {kid:08x} is the current one: rotate first")
    left = [k for k in keys.keys.values() if k.id != kid]
    _save(directory, passphrase, _read(directory), {k.id: k.secret for k in left},
          keys.current, {k.id: k.created_at for k in left}, exclusive=False)
    return DataKeys(left, keys.current, source=(Path(directory), passphrase))


def parse_key_id(text: str) -> int:
    """A key id as `tcms keys data-key list` prints it (8 hex digits)."""
    try:
        kid = int(text, 16)
    except ValueError:
        raise KeyringError(f"{text!r} is not a data key id (8 hex digits)") from None
    if not 0 < kid < 2**32:
        raise KeyringError(f"{text!r} is not a data key id (8 hex digits)")
    return kid
