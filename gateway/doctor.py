"""`tcms doctor`: a gateway's configuration checked the way an administrator needs before
going live, one line per check, each failure with what is wrong and how to fix it
(docs/operations.md, "The doctor").

This module holds the report and the checks of what is on this machine: TLS files, keys
and passphrase, trust files, the database's schema.  gateway/doctor_net.py checks what
the gateway talks to: the upstream SMTP and IMAP servers, the DC, the TTP, the TSS, and
the MTA's route for protocol mail (a probe that goes round through the MTA).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tcms import datakeys
from tcms.config import ConfigError, Settings
from tcms.identity import Identity, Party
from tcms.keystore import Keystore, KeystoreError
from tcms.protocol.checks import Trust
from tcms.store import Store

EXPIRY_WARNING = 21 * 86400  # a certificate that ends sooner is named (not a failure)


@dataclass(frozen=True)
class Finding:
    status: str  # ok | warn | FAIL | skip
    check: str
    what: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:>4}  {self.check}: {self.what}"
        return text + (f"\n      fix: {self.fix}" if self.fix else "")


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    say: Callable[[str], None] | None = None  # each line as soon as it is known

    def add(self, status: str, check: str, what: str, fix: str = "") -> Finding:
        f = Finding(status, check, what, fix)
        self.findings.append(f)
        if self.say is not None:
            self.say(f.line())
        return f

    def ok(self, check: str, what: str) -> None:
        self.add("ok", check, what)

    def warn(self, check: str, what: str, fix: str = "") -> None:
        self.add("warn", check, what, fix)

    def fail(self, check: str, what: str, fix: str) -> None:
        self.add("FAIL", check, what, fix)

    def skip(self, check: str, why: str) -> None:
        self.add("skip", check, why)

    @property
    def failed(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "FAIL"]


@dataclass
class Found:
    """What the local checks opened, for the network checks to use (None: unusable)."""

    me: Identity | None = None
    users: list[Identity] = field(default_factory=list)
    trust: Trust | None = None
    dc: Party | None = None


# --- TLS files ----------------------------------------------------------------------------


def _utc(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def check_tls_pair(r: Report, name: str, cert_path: Path | None, key_path: Path | None,
                   now: dt.datetime, *, required: bool) -> None:
    """A certificate and its key: readable, the key matches, valid now and for a while."""
    check = f"tls {name}"
    if cert_path is None or key_path is None:
        if required:
            r.fail(check, "no certificate and key: every listener speaks TLS",
                   f"set {name}.tls_cert and {name}.tls_key (PEM files; the key unencrypted)")
        return
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        r.fail(check, f"{cert_path} is not a readable PEM certificate ({exc})",
               f"point {name}.tls_cert at the PEM certificate the listeners present")
        return
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        r.fail(check, f"{key_path} is not a readable unencrypted PEM private key ({exc})",
               f"point {name}.tls_key at the certificate's private key (PEM, no passphrase)")
        return
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        r.fail(check, f"the key {key_path} does not belong to the certificate {cert_path}",
               f"give {name}.tls_key the private key the certificate was issued for")
        return
    subject = cert.subject.rfc4514_string()
    if cert.not_valid_after_utc <= now:
        r.fail(check, f"the certificate {cert_path} ({subject}) expired on "
               f"{_utc(cert.not_valid_after_utc)}",
               "renew it (and its key if need be), then restart the gateway")
    elif cert.not_valid_before_utc > now:
        r.fail(check, f"the certificate {cert_path} is not valid before "
               f"{_utc(cert.not_valid_before_utc)}",
               "check this machine's clock, or use a certificate valid now")
    elif (cert.not_valid_after_utc - now).total_seconds() < EXPIRY_WARNING:
        r.warn(check, f"the certificate {cert_path} expires on "
               f"{_utc(cert.not_valid_after_utc)}", "renew it before then")
    else:
        r.ok(check, f"{subject}, key matches, valid until "
             f"{_utc(cert.not_valid_after_utc)}")


def check_files(r: Report, settings: Settings, now: dt.datetime) -> None:
    g = settings.gateway
    check_tls_pair(r, "gateway", g.tls_cert, g.tls_key, now, required=True)
    for name, svc in (("tss", settings.tss), ("ttp", settings.ttp), ("dc", settings.dc)):
        if svc.tls_cert or svc.tls_key:
            check_tls_pair(r, name, svc.tls_cert, svc.tls_key, now, required=False)
    if g.upstream_ca_file is not None:
        try:
            x509.load_pem_x509_certificates(g.upstream_ca_file.read_bytes())
            r.ok("tls upstream CA", f"{g.upstream_ca_file} holds PEM certificates")
        except (OSError, ValueError) as exc:
            r.fail("tls upstream CA", f"{g.upstream_ca_file} cannot be read ({exc})",
                   "point gateway.upstream_ca_file at the PEM CA of the mail servers")


# --- keys and trust -----------------------------------------------------------------------


def check_keys(r: Report, settings: Settings, found: Found) -> None:
    """The passphrase opens every key in the key directory and the data keys."""
    directory = Path(settings.keys.dir)
    try:
        passphrase = settings.keys.get_passphrase()
    except (ConfigError, OSError) as exc:
        r.fail("keys", str(exc).removeprefix("keys: "), "set TCMS_KEYS__PASSPHRASE or "
               "keys.passphrase_file (the one the keys were created with)")
        return
    store = Keystore(directory, passphrase)
    listed = store.list()
    if not listed:
        r.fail("keys", f"no identities in {directory}", f"set keys.dir, or create the "
               f"gateway's key: tcms keys create {settings.gateway.identity} --kind gateway")
        return
    refused = []
    for _kind, party in listed:
        try:
            ident = store.load(party.name)
        except (KeystoreError, ValueError) as exc:
            refused.append(f"{party.name} ({exc})")
            continue
        if ident.name == settings.gateway.identity:
            found.me = ident
        elif ident.kind == "user" and ident.name.rsplit("@", 1)[-1] in \
                settings.gateway.domains:
            found.users.append(ident)
    if refused:
        r.fail("keys", f"the passphrase does not open {len(refused)} of {len(listed)} keys "
               f"in {directory}: {', '.join(refused[:5])}",
               "give the passphrase the keys were created with (TCMS_KEYS__PASSPHRASE or "
               "keys.passphrase_file)")
    else:
        r.ok("keys", f"the passphrase opens all {len(listed)} keys in {directory}")
    if found.me is None and not refused:
        r.fail("keys", f"no key for the gateway's identity {settings.gateway.identity}",
               f"tcms keys create {settings.gateway.identity} --kind gateway, then register "
               "it at the DC (tcms dc register)")
    try:
        keys = datakeys.load(directory, passphrase)
    except datakeys.DataKeyError as exc:
        r.fail("data keys", f"{type(exc).__name__}: {exc}", "give the passphrase the data "
               "keyring was sealed with; never delete data-keys.keyring")
        return
    if keys is None:
        r.warn("data keys", f"no data keyring in {directory} yet", "the gateway creates it "
               "on first start; copy it to every instance sharing the database")
    else:
        r.ok("data keys", f"the passphrase opens the data keyring (current key "
             f"{keys.current:08x}, {len(keys.keys)} version(s))")


def check_signing(r: Report, settings: Settings, now: dt.datetime) -> None:
    """The S/MIME certificate and key every mail to a user is signed with ([mail])."""
    from gateway.signingcert import SigningCertError, load_signer

    cert, key = settings.mail.signing_files(Path(settings.keys.dir))
    try:
        signer = load_signer(cert, key, settings.keys.get_passphrase(), now=now)
    except (SigningCertError, ConfigError, OSError) as exc:
        r.fail("mail signing", str(exc), "issue or install the gateway's S/MIME certificate "
               "(tcms mail csr, then tcms mail install; or tcms mail issue) and set "
               "mail.signing_cert and mail.signing_key (docs/mail.md)")
        return
    end = signer.cert.not_valid_after_utc
    if (end - now).total_seconds() < EXPIRY_WARNING:
        r.warn("mail signing", f"the S/MIME certificate {cert} expires on {_utc(end)}",
               "renew it before then (tcms mail csr / install)")
    else:
        r.ok("mail signing", f"{signer.cert.subject.rfc4514_string()}, key opens and "
             f"matches, valid until {_utc(end)}")


def check_trust(r: Report, settings: Settings, found: Found) -> None:
    g = settings.gateway
    if g.trust_file is None or g.dc_key_file is None:
        r.warn("trust", "gateway.trust_file or gateway.dc_key_file is unset: the TTP's and "
               "the DC's keys are read from the local key directory",
               "set both for a gateway that does not share its host with the services")
    from gateway.context import load_trust

    try:
        found.trust, found.dc = load_trust(settings, Keystore(settings.keys.dir))
    except ConfigError as exc:
        r.fail("trust", str(exc), "fetch the trust file from the TTP (GET /identity) and "
               "the DC's public keys (tcms keys export on the DC), and point "
               "gateway.trust_file and gateway.dc_key_file at them")
        return
    r.ok("trust", f"TTP {found.trust.ttp.name} [{found.trust.ttp.fingerprint[:23]}], TSA CA "
         f"{found.trust.tsa_ca.subject.rfc4514_string()}, DC {found.dc.name}")


# --- the database ----------------------------------------------------------------------------


async def check_database(r: Report, settings: Settings) -> None:
    """Reachable, and at the newest schema (never migrated here: `tcms db upgrade`)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from tcms.store.migrate import config

    url = settings.database.url
    shown = url.split("@")[-1] if "@" in url else url
    head = ScriptDirectory.from_config(config()).get_current_head()
    if url.startswith("sqlite:///") and not Path(url.split(":///", 1)[1]).exists():
        r.fail("database", f"{shown} does not exist", "check database.url; `tcms db upgrade` "
               "creates it (the gateway also does on start)")
        return
    store = Store(url)
    try:
        async with store.engine.connect() as conn:
            current = await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision())
    except Exception as exc:
        r.fail("database", f"cannot open {shown}: {type(exc).__name__}: {exc}"[:300],
               "check database.url, that the server runs and that the user may connect")
        return
    finally:
        await store.close()
    if current != head:
        r.fail("database", f"{shown} is at schema revision {current or 'none'}, not the "
               f"newest ({head})", "run `tcms db upgrade` (the gateway also does on start)")
    else:
        r.ok("database", f"{shown} reachable, schema at the newest revision ({head})")


def public_json(party: Party) -> str:
    return json.dumps(party.to_json(), sort_keys=True)
