"""A directory of identity files, private keys encrypted at rest (PKCS#8, passphrase).

``<dir>/<name>.json`` holds one identity: public keys in clear, both private keys as
encrypted PEM.  Files are created with mode 0600.  Passphrases never reach a log line.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from tcms.identity import Identity, Party, normalise_name


class KeystoreError(Exception):
    pass


def write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 (its directory made 0700 if new).
    ``exclusive``: never replace an existing file (FileExistsError), so that two
    processes creating the same file at once keep one of them, whole."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


class Keystore:
    def __init__(self, directory: Path, passphrase: bytes | None = None) -> None:
        self.dir = Path(directory)
        self._passphrase = passphrase

    def _path(self, name: str) -> Path:
        safe = normalise_name(name).replace("/", "_")
        return self.dir / f"{safe}.json"

    def create(self, name: str, kind: str = "user", *, overwrite: bool = False) -> Identity:
        path = self._path(name)
        if path.exists() and not overwrite:
            raise KeystoreError(f"an identity named {normalise_name(name)} already exists")
        ident = Identity.generate(name, kind)
        self.save(ident)
        return ident

    def save(self, ident: Identity) -> None:
        if self._passphrase is None:
            raise KeystoreError("a passphrase is needed to store private keys")
        write_private(self._path(ident.name),
                      json.dumps(ident.to_encrypted_json(self._passphrase), indent=1))

    def load(self, name: str) -> Identity:
        if self._passphrase is None:
            raise KeystoreError("a passphrase is needed to open private keys")
        path = self._path(name)
        if not path.exists():
            raise KeystoreError(f"no identity named {normalise_name(name)} in {self.dir}")
        try:
            return Identity.from_encrypted_json(json.loads(path.read_text()), self._passphrase)
        except ValueError as exc:
            raise KeystoreError(str(exc)) from None

    def public(self, name: str) -> tuple[str, Party]:
        path = self._path(name)
        if not path.exists():
            raise KeystoreError(f"no identity named {normalise_name(name)} in {self.dir}")
        data = json.loads(path.read_text())
        return data.get("kind", "user"), Party.from_json(data)

    def list(self) -> list[tuple[str, Party]]:
        if not self.dir.exists():
            return []
        out = []
        for path in sorted(self.dir.glob("*.json")):
            data = json.loads(path.read_text())
            if data.get("format") == "tcms-identity/1":
                out.append((data.get("kind", "user"), Party.from_json(data)))
        return out
