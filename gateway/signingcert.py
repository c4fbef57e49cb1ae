"""The gateway's S/MIME signing certificate, issued by the organisation's CA.

Every mail the gateway writes to a user is signed with it (gateway/smime.py), so that mail
clients show the signature and ``openssl smime -verify -CAfile <organisation CA>`` passes.
The certificate names ``postmaster@<domain>`` (the notices' From) for each of the
gateway's domains; its private key is kept encrypted at rest (PKCS#8 PEM, the keys
passphrase of [keys], as every other private key of TCMS).

An organisation normally has a CA: ``tcms mail csr`` writes the key and a certificate
request for it.  For a demo or a test, ``tcms mail ca`` makes a small CA and ``tcms mail
issue`` issues the certificate directly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tcms.keystore import write_private

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SigningCertError(Exception):
    """The signing certificate or its key is missing, unreadable or unfit; says which."""


@dataclass(frozen=True)
class Signer:
    """What signs the gateway's mail: its certificate, the key, and any intermediate CA
    certificates that follow it in the certificate file (sent along in each signature)."""

    cert: x509.Certificate
    key: SigningKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def addresses(self) -> list[str]:
        try:
            san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return []
        return [a.lower() for a in san.value.get_values_for_type(x509.RFC822Name)]


def new_key() -> SigningKey:
    """RSA 3072: what every S/MIME client verifies."""
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def postmasters(domains: list[str]) -> list[str]:
    return [f"postmaster@{d.lower()}" for d in domains]


def create_ca(org: str, *, now: dt.datetime, years: int = 10) -> tuple[x509.Certificate,
                                                                       SigningKey]:
    """A self-signed CA for the organisation (a demo's or a test's; a real one has its own)."""
    key = new_key()
    name = _name(f"{org} mail CA", org)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365 * years))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca_cert: x509.Certificate, ca_key: SigningKey, public_key: object,
          addresses: list[str], *, now: dt.datetime, days: int = 825) -> x509.Certificate:
    """A signing certificate for ``addresses`` (S/MIME: digitalSignature, emailProtection)."""
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise SigningCertError("the key must be RSA or EC")
    if not addresses:
        raise SigningCertError("a signing certificate names at least one address")
    org = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return (x509.CertificateBuilder()
            .subject_name(_name(f"TCMS certified mail ({addresses[0]})",
                                str(org[0].value) if org else "TCMS"))
            .issuer_name(ca_cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(a)
                                                        for a in addresses]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_cert.public_key()), False)  # type: ignore[arg-type]
            .sign(ca_key, hashes.SHA256()))


def request(key: SigningKey, addresses: list[str]) -> x509.CertificateSigningRequest:
    """A certificate request for the organisation's CA."""
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(_name(f"TCMS certified mail ({addresses[0]})", "TCMS"))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(a)
                                                        for a in addresses]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .sign(key, hashes.SHA256()))


# --- on disk ------------------------------------------------------------------------------


def save_key(path: Path, key: SigningKey, passphrase: bytes) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(passphrase))
    write_private(path, pem.decode())


def load_key(path: Path, passphrase: bytes) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), passphrase)
    except FileNotFoundError:
        raise SigningCertError(f"the signing key {path} does not exist") from None
    except (ValueError, TypeError):
        raise SigningCertError(f"cannot open the signing key {path}: wrong passphrase, or "
                               "not an encrypted PKCS#8 PEM key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SigningCertError(f"the signing key {path} is neither RSA nor EC")
    return key


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def load_certs(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise SigningCertError(f"the signing certificate {path} does not exist") from None
    except ValueError:
        raise SigningCertError(f"{path} holds no PEM certificate") from None
    return certs


def load_signer(cert_path: Path, key_path: Path, passphrase: bytes, *,
                now: dt.datetime | None = None) -> Signer:
    """The signer of the configuration, checked: the key matches the certificate, which is
    valid now and fit for S/MIME signatures."""
    cert, *chain = load_certs(cert_path)
    key = load_key(key_path, passphrase)
    if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo):
        raise SigningCertError(f"the signing key {key_path} does not match the certificate "
                               f"{cert_path}")
    now = now or dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SigningCertError(f"the signing certificate {cert_path} is not valid now (valid "
                               f"{cert.not_valid_before_utc:%Y-%m-%d} to "
                               f"{cert.not_valid_after_utc:%Y-%m-%d})")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.EMAIL_PROTECTION not in eku:
            raise SigningCertError(f"the signing certificate {cert_path} is not for e-mail "
                                   "(its extended key usage lacks emailProtection)")
    except x509.ExtensionNotFound:
        pass
    return Signer(cert, key, tuple(chain))
