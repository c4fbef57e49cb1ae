"""`tcms mail`: the gateway's signing certificate and the organisation's templates.

An organisation with a CA: ``tcms mail csr request.csr`` (the key, encrypted, at
``mail.signing_key``), have the CA sign the request for S/MIME, then ``tcms mail install
cert.pem``.  A demo or a test: ``tcms mail ca DIR`` then ``tcms mail issue --ca DIR``.
``tcms mail show`` says what the gateway signs with; ``tcms mail preview KIND`` writes a
sample mail as the templates and the certificate make it.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway import signingcert
from gateway.signingcert import SigningCertError
from tcms.cli.util import settings_of
from tcms.config import ConfigError, Settings

CA_FILES = ("ca.pem", "ca-key.pem")


def _passphrase(settings: Settings) -> bytes:
    try:
        return settings.keys.get_passphrase()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _files(settings: Settings) -> tuple[Path, Path]:
    return settings.mail.signing_files(Path(settings.keys.dir))


def _addresses(settings: Settings, given: tuple[str, ...]) -> list[str]:
    addresses = [a.strip().lower() for a in given] or signingcert.postmasters(
        settings.gateway.domains)
    if not addresses:
        raise click.ClickException("no address to certify: set gateway.domains (the "
                                   "certificate names postmaster@DOMAIN) or give --address")
    return addresses


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group("mail")
def mail_group() -> None:
    """The mails the gateway writes to users: S/MIME certificate, templates."""


@mail_group.command("ca")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--org", default="TCMS", show_default=True, help="The organisation's name.")
@click.pass_context
def mail_ca(ctx: click.Context, directory: Path, org: str) -> None:
    """Make a small CA in DIRECTORY (ca.pem; ca-key.pem encrypted with the keys
    passphrase): for a demo or a test, when the organisation has no CA of its own."""
    passphrase = _passphrase(settings_of(ctx))
    if not org.strip():
        raise click.BadParameter("must name the organisation", param_hint="--org")
    if (directory / CA_FILES[0]).exists():
        raise click.ClickException(f"{directory / CA_FILES[0]} exists already")
    cert, key = signingcert.create_ca(org, now=dt.datetime.now(dt.UTC))
    signingcert.save_key(directory / CA_FILES[1], key, passphrase)
    (directory / CA_FILES[0]).write_bytes(signingcert.pem(cert))
    click.echo(f"CA {cert.subject.rfc4514_string()} in {directory / CA_FILES[0]}")


@mail_group.command("issue")
@click.option("--ca", "ca_dir", required=True, type=click.Path(file_okay=False, exists=True,
                                                              path_type=Path),
              help="A directory made by `tcms mail ca`.")
@click.option("--address", multiple=True,
              help="An address the certificate names (default: postmaster@ each domain).")
@click.option("--days", type=click.IntRange(1, 3650), default=825, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing key and certificate.")
@click.pass_context
def mail_issue(ctx: click.Context, ca_dir: Path, address: tuple[str, ...], days: int,
               force: bool) -> None:
    """Create the gateway's signing key and have the CA in --ca issue its certificate,
    both at mail.signing_cert / mail.signing_key."""
    settings = settings_of(ctx)
    passphrase = _passphrase(settings)
    cert_path, key_path = _files(settings)
    if (cert_path.exists() or key_path.exists()) and not force:
        raise click.ClickException(f"{cert_path} or {key_path} exists (--force replaces)")
    try:
        ca_cert = signingcert.load_certs(ca_dir / CA_FILES[0])[0]
        ca_key = signingcert.load_key(ca_dir / CA_FILES[1], passphrase)
        key = signingcert.new_key()
        cert = signingcert.issue(ca_cert, ca_key, key.public_key(),
                                 _addresses(settings, address), now=dt.datetime.now(dt.UTC),
                                 days=days)
    except SigningCertError as exc:
        raise _fail(exc) from None
    signingcert.save_key(key_path, key, passphrase)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(signingcert.pem(cert))
    click.echo(f"signing certificate for {', '.join(signingcert.Signer(cert, key).addresses)}"
               f" in {cert_path}, its key (encrypted) in {key_path}")


@mail_group.command("csr")
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--address", multiple=True,
              help="An address to certify (default: postmaster@ each domain).")
@click.option("--force", is_flag=True, help="Replace an existing key.")
@click.pass_context
def mail_csr(ctx: click.Context, output: Path, address: tuple[str, ...], force: bool) -> None:
    """Create the signing key (encrypted, at mail.signing_key) and write a certificate
    request for the organisation's CA to OUTPUT (ask for S/MIME: emailProtection)."""
    settings = settings_of(ctx)
    passphrase = _passphrase(settings)
    _, key_path = _files(settings)
    if key_path.exists() and not force:
        raise click.ClickException(f"{key_path} exists (--force replaces it)")
    key = signingcert.new_key()
    csr = signingcert.request(key, _addresses(settings, address))
    signingcert.save_key(key_path, key, passphrase)
    output.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    click.echo(f"key in {key_path}; request in {output}: have the CA sign it, then "
               "`tcms mail install CERT`")


@mail_group.command("install")
@click.argument("certificate", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_context
def mail_install(ctx: click.Context, certificate: Path) -> None:
    """Install the certificate the CA issued (PEM, intermediates after it) as
    mail.signing_cert, once it is checked against the key."""
    settings = settings_of(ctx)
    cert_path, key_path = _files(settings)
    try:
        signer = signingcert.load_signer(certificate, key_path, _passphrase(settings))
    except SigningCertError as exc:
        raise _fail(exc) from None
    if certificate.resolve() != cert_path.resolve():
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(certificate, cert_path)
    click.echo(f"installed {cert_path}: signs as {', '.join(signer.addresses) or '(none)'}")


def _describe(cert: x509.Certificate) -> str:
    return (f"{cert.subject.rfc4514_string()}, issued by {cert.issuer.rfc4514_string()}, "
            f"valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}")


@mail_group.command("show")
@click.pass_context
def mail_show(ctx: click.Context) -> None:
    """The signing certificate and key in use, checked; the languages and templates."""
    from gateway import context

    settings = settings_of(ctx)
    try:
        writer = context.writer(settings, _passphrase(settings))
    except ConfigError as exc:
        raise _fail(exc) from None
    click.echo(f"signs as:   {', '.join(writer.signer.addresses) or '(no address)'}")
    click.echo(f"certificate: {_describe(writer.signer.cert)}")
    for extra in writer.signer.chain:
        click.echo(f"  + {_describe(extra)}")
    m = settings.mail
    click.echo(f"templates:  {m.templates or '(shipped)'}; languages available: "
               f"{', '.join(writer.wording.languages)}; default {m.language}")
    for who, lang in sorted(m.languages.items()):
        click.echo(f"  {who}: {lang}")


@mail_group.command("preview")
@click.argument("kind", type=click.Choice(["notice", "receipt", "submitted", "refused",
                                           "aborted", "failed", "expired", "withdrawn",
                                           "uncertifiable"]))
@click.option("--to", "owner", default="user@example.org", show_default=True,
              help="The user it is for (their language is used).")
@click.option("--output", "-o", type=click.File("wb"), default="-")
@click.pass_context
def mail_preview(ctx: click.Context, kind: str, owner: str, output: Any) -> None:
    """A sample mail of KIND as users get it (signed), to check templates."""
    from gateway import context
    from gateway.wording import SAMPLES

    settings = settings_of(ctx)
    try:
        writer = context.writer(settings, _passphrase(settings))
    except ConfigError as exc:
        raise _fail(exc) from None
    base = kind if kind in ("notice", "receipt") else "status"
    values = {**SAMPLES[base], "owner": owner}
    output.write(writer.sample(kind, owner, values))
