"""`tcms doctor`'s local checks (gateway/doctor.py) one by one, and the intake's probe
recognition; tests/test_ops_e2e.py runs the whole doctor against the real stack."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.doctor import Found, Report, check_database, check_keys, check_tls_pair
from gateway.intake import probe_nonce
from tcms.config import Settings
from tcms.keystore import Keystore

NOW = dt.datetime(2027, 1, 15, tzinfo=dt.UTC)


def pair(directory: Path, name: str, days: tuple[int, int],
         key: ec.EllipticCurvePrivateKey | None = None) -> tuple[Path, Path]:
    """A self-signed certificate valid from NOW + days[0] to NOW + days[1], and its key
    (or another one)."""
    own = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(own.public_key()).serial_number(1)
            .not_valid_before(NOW + dt.timedelta(days=days[0]))
            .not_valid_after(NOW + dt.timedelta(days=days[1])).sign(own, hashes.SHA256()))
    crt, pem = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes((key or own).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return crt, pem


def one(report: Report) -> tuple[str, str]:
    assert len(report.findings) == 1, report.findings
    f = report.findings[0]
    return f.status, f.what


def test_tls_pairs(tmp_path: Path) -> None:
    cases = {
        "good": ((-10, 100), None, "ok", "key matches, valid until 2027-04-25"),
        "expired": ((-10, -1), None, "FAIL", "expired on 2027-01-14"),
        "early": ((2, 100), None, "FAIL", "is not valid before 2027-01-17"),
        "soon": ((-10, 5), None, "warn", "expires on 2027-01-20"),
        "other": ((-10, 100), ec.generate_private_key(ec.SECP256R1()), "FAIL",
                  "does not belong to the certificate"),
    }
    for name, (days, key, status, text) in cases.items():
        crt, pem = pair(tmp_path, name, days, key)
        r = Report()
        check_tls_pair(r, "gateway", crt, pem, NOW, required=True)
        got = one(r)
        assert got[0] == status and text in got[1], (name, got)
        assert status == "ok" or r.findings[0].fix
    r = Report()
    check_tls_pair(r, "gateway", tmp_path / "missing.crt", tmp_path / "missing.key", NOW,
                   required=True)
    assert one(r)[0] == "FAIL" and "not a readable PEM certificate" in one(r)[1]
    r = Report()
    check_tls_pair(r, "tss", None, None, NOW, required=False)
    assert r.findings == []


def test_keys_a_wrong_passphrase_is_named(tmp_path: Path) -> None:
    Keystore(tmp_path, b"the right passphrase").create("gateway@a.test", "gateway")
    Keystore(tmp_path, b"the right passphrase").create("alice@a.test", "user")
    settings = Settings.model_validate({
        "keys": {"dir": str(tmp_path), "passphrase": "the right passphrase"},
        "gateway": {"identity": "gateway@a.test", "domains": ["a.test"]}})
    r, found = Report(), Found()
    check_keys(r, settings, found)
    assert r.failed == [] and found.me is not None
    assert [u.name for u in found.users] == ["alice@a.test"]
    wrong = settings.model_copy(update={"keys": settings.keys.model_copy(
        update={"passphrase": "a wrong passphrase"})})
    r, found = Report(), Found()
    check_keys(r, wrong, found)
    assert found.me is None
    assert "the passphrase does not open 2 of 2 keys" in r.failed[0].what
    assert "TCMS_KEYS__PASSPHRASE" in r.failed[0].fix


async def test_database_not_migrated_or_missing(tmp_path: Path) -> None:
    from tcms.store import Store

    url = f"sqlite:///{tmp_path / 'gw.db'}"
    settings = Settings.model_validate({"database": {"url": url}})
    r = Report()
    await check_database(r, settings)
    assert "does not exist" in r.failed[0].what and not (tmp_path / "gw.db").exists()
    store = Store(url)
    async with store.engine.begin() as conn:  # an empty database: no schema
        await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    await store.close()
    r = Report()
    await check_database(r, settings)
    assert "schema revision none" in r.failed[0].what and "tcms db upgrade" in r.failed[0].fix
    store = Store(url)
    await store.upgrade()
    await store.close()
    r = Report()
    await check_database(r, settings)
    assert r.failed == [] and "newest revision" in r.findings[0].what


def test_the_intake_recognises_only_a_probe_header() -> None:
    nonce = "0123456789abcdef" * 2
    assert probe_nonce(f"From: a\r\nTCMS-Probe: {nonce}\r\n\r\nbody".encode()) == nonce
    assert probe_nonce(f"tcms-probe:{nonce.upper()}\n\nx".encode()) == nonce
    assert probe_nonce(f"From: a\r\n\r\nTCMS-Probe: {nonce}\r\n".encode()) is None  # body
    assert probe_nonce(b"TCMS-Probe: short\r\n\r\n") is None
    assert probe_nonce(b"X-TCMS-Probe: " + nonce.encode() + b"\r\n\r\n") is None
