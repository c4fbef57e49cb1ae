"""The TSA's CA and certificate on disk; both private keys encrypted at rest (PKCS#8)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tss.authority import TsaCredentials, create_credentials

FILES = {"ca": "tss-ca.pem", "cert": "tss-cert.pem", "key": "tss-key.pem",
         "ca_key": "tss-ca-key.pem"}


class CredentialsError(Exception):
    pass


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def init(directory: Path, name: str, passphrase: bytes, *, now: dt.datetime,
         force: bool = False) -> TsaCredentials:
    if (directory / FILES["cert"]).exists() and not force:
        raise CredentialsError(f"TSA credentials already exist in {directory}")
    creds, ca_key = create_credentials(name, now=now, with_ca_key=True)
    save(directory, creds, passphrase, ca_key=ca_key)
    return creds


def save(directory: Path, creds: TsaCredentials, passphrase: bytes, *,
         ca_key: ec.EllipticCurvePrivateKey | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    enc = serialization.BestAvailableEncryption(passphrase)
    ca_pem, cert_pem = creds.pem_chain()
    _write(directory / FILES["ca"], ca_pem, False)
    _write(directory / FILES["cert"], cert_pem, False)
    keys = [("key", creds.tsa_key)] + ([("ca_key", ca_key)] if ca_key else [])
    for fname, key in keys:
        _write(directory / FILES[fname], key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc), True)


def load(directory: Path, passphrase: bytes) -> TsaCredentials:
    try:
        ca = x509.load_pem_x509_certificate((directory / FILES["ca"]).read_bytes())
        cert = x509.load_pem_x509_certificate((directory / FILES["cert"]).read_bytes())
        key = serialization.load_pem_private_key((directory / FILES["key"]).read_bytes(),
                                                 passphrase)
    except FileNotFoundError:
        raise CredentialsError(f"no TSA credentials in {directory}: run `tcms tss init`") \
            from None
    except ValueError:
        raise CredentialsError("cannot decrypt the TSA key: wrong passphrase?") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialsError("the TSA key is not an EC key")
    return TsaCredentials(ca, cert, key)


def load_ca(directory: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate((directory / FILES["ca"]).read_bytes())
    except FileNotFoundError:
        raise CredentialsError(f"no TSA CA certificate in {directory}") from None
