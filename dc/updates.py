"""Signed updates of security modules with The Update Framework (python-tuf).

The DC keeps a TUF repository (``metadata/`` and ``targets/`` under ``[dc] updates_dir``)
and serves it over HTTP; gateways fetch modules with ``tuf.ngclient.Updater``, which checks
signatures against the trusted root, version numbers (no rollback, no freeze), expiry
dates, and the target's length and hashes.  A module is then applied only if its own
version is not lower than the one already applied.

A security module is a JSON document, for instance::

    {"module": "algorithm-suite", "version": 3, "message_cipher": "tsrg-modern"}

Keys: one Ed25519 key per role (root, targets, snapshot, timestamp), private halves
encrypted at rest (PKCS#8, the key passphrase).  TUF's own formats are used unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

ROLES = ("root", "targets", "snapshot", "timestamp")
MODULE_KINDS = {"algorithm-suite": {"message_cipher": ("tsrg-modern", "aes256gcm")}}


class UpdateError(Exception):
    """An update was refused or could not be fetched; the message says why."""


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _signer(key: Ed25519PrivateKey) -> CryptoSigner:
    return CryptoSigner(key, SSlibKey.from_crypto(key.public_key()))


@dataclass
class UpdateRepository:
    directory: Path
    signers: dict[str, CryptoSigner]

    @property
    def metadata_dir(self) -> Path:
        return self.directory / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.directory / "targets"

    # --- creation and loading --------------------------------------------------------

    @classmethod
    def init(cls, directory: Path, passphrase: bytes, *, now: dt.datetime,
             root_days: int = 365) -> UpdateRepository:
        if (directory / "metadata" / "1.root.json").exists():
            raise UpdateError(f"an update repository already exists in {directory}")
        keys = {role: Ed25519PrivateKey.generate() for role in ROLES}
        enc = serialization.BestAvailableEncryption(passphrase)
        for role, key in keys.items():
            _write(directory / "keys" / f"{role}.pem", key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc), True)
        repo = cls(directory, {role: _signer(k) for role, k in keys.items()})
        root = Root(expires=now + dt.timedelta(days=root_days), consistent_snapshot=False)
        for role in ROLES:
            root.add_key(repo.signers[role].public_key, role)
        repo._save(Metadata(root), "1.root.json")
        repo._save(Metadata(root), "root.json")
        repo._release(Targets(expires=now + dt.timedelta(days=90)), now, version=1)
        return repo

    @classmethod
    def load(cls, directory: Path, passphrase: bytes) -> UpdateRepository:
        signers = {}
        for role in ROLES:
            try:
                key = serialization.load_pem_private_key(
                    (directory / "keys" / f"{role}.pem").read_bytes(), passphrase)
            except FileNotFoundError:
                raise UpdateError(f"no update repository in {directory}: run "
                                  "`tcms dc updates init`") from None
            except ValueError:
                raise UpdateError("cannot decrypt the update keys: wrong passphrase?") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise UpdateError(f"the {role} key is not an Ed25519 key")
            signers[role] = _signer(key)
        return cls(directory, signers)

    def trusted_root(self) -> bytes:
        """The root metadata a client pins (distribute it out of band, e.g. with the
        gateway's configuration)."""
        return (self.metadata_dir / "1.root.json").read_bytes()

    # --- publishing ----------------------------------------------------------------------

    def _save(self, md: Metadata[Any], name: str) -> None:
        role = md.signed.type
        md.signatures.clear()
        md.sign(self.signers[role])
        _write(self.metadata_dir / name, md.to_bytes(JSONSerializer(compact=False)))

    def _current(self, role: str) -> Metadata[Any]:
        return Metadata.from_bytes((self.metadata_dir / f"{role}.json").read_bytes())

    def _release(self, targets: Targets, now: dt.datetime, *, version: int,
                 days: int = 7) -> None:
        """Sign targets, then a snapshot naming it, then a timestamp naming that."""
        targets.version = version
        self._save(Metadata(targets), "targets.json")
        snap_version = self._current("snapshot").signed.version + 1 if (
            self.metadata_dir / "snapshot.json").exists() else 1
        snapshot = Snapshot(version=snap_version, expires=now + dt.timedelta(days=days),
                            meta={"targets.json": MetaFile(version=version)})
        self._save(Metadata(snapshot), "snapshot.json")
        ts_version = self._current("timestamp").signed.version + 1 if (
            self.metadata_dir / "timestamp.json").exists() else 1
        timestamp = Timestamp(version=ts_version, expires=now + dt.timedelta(days=1),
                              snapshot_meta=MetaFile(version=snap_version))
        self._save(Metadata(timestamp), "timestamp.json")

    def publish(self, name: str, data: bytes, *, now: dt.datetime) -> int:
        """Add or replace the module ``name``; returns the new targets version."""
        if not name or "/" in name or name.startswith("."):
            raise UpdateError(f"invalid module name {name!r}")
        validate_module(data)
        current: Targets = self._current("targets").signed
        current.targets[name] = TargetFile.from_data(name, data, ["sha256"])
        current.expires = now + dt.timedelta(days=90)
        _write(self.targets_dir / name, data)
        self._release(current, now, version=current.version + 1)
        return current.version

    def refresh_timestamp(self, now: dt.datetime, *, days: int = 1) -> None:
        """Re-sign the timestamp (run regularly: clients refuse an expired one)."""
        ts: Timestamp = self._current("timestamp").signed
        ts.version += 1
        ts.expires = now + dt.timedelta(days=days)
        self._save(Metadata(ts), "timestamp.json")


def validate_module(data: bytes) -> dict[str, Any]:
    """A module's own format check (after TUF has verified where it came from)."""
    try:
        module = json.loads(data)
    except ValueError:
        raise UpdateError("the module is not JSON") from None
    if not isinstance(module, dict):
        raise UpdateError("the module is not a JSON object")
    kind = module.get("module")
    if kind not in MODULE_KINDS:
        raise UpdateError(f"unknown module kind {kind!r}")
    version = module.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UpdateError("the module needs a positive integer version")
    for field, allowed in MODULE_KINDS[kind].items():
        if module.get(field) not in allowed:
            raise UpdateError(f"{field} must be one of {', '.join(allowed)}")
    return module

