"""``tcms verify``: check an evidence bundle offline and say what it proves."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from tcms import evidence


class _UnusableInput(click.ClickException):
    """Input `tcms verify` cannot use at all: exit status 2 (1 means invalid evidence)."""

    exit_code = 2


def _read_bounded(file: Any, limit: int, what: str) -> bytes:
    try:
        data: bytes = file.read(limit + 1)
    except OSError as exc:
        raise _UnusableInput(f"cannot read the {what}: {exc.strerror or exc}") from None
    return data


@click.command()
@click.argument("bundle", type=click.File("rb"))
@click.option("--trust", "-t", "trust_file", type=click.File("rb"), required=True,
              help="Trust file: the TTP's public keys and the TSA's CA certificate.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@click.option("--extract", type=click.Path(dir_okay=False, writable=True),
              help="Write the certified original mail (m0) to this file.")
def verify(bundle: Any, trust_file: Any, as_json: bool, extract: str | None) -> None:
    """Verify an evidence BUNDLE offline and say what it proves (docs/evidence.md).

    \b
    Exit status:
      0  the evidence is valid; its verdict is printed
      1  the evidence is invalid; the failing check is named
      2  the input cannot be used: a file cannot be read, the bundle is not
         strict JSON (larger than 128 MiB, nested too deeply, a field twice),
         the trust file is not a valid tcms-trust/1 file, or the --extract
         file cannot be written"""
    try:
        trust = evidence.load_trust(_read_bounded(trust_file, evidence.MAX_TRUST_BYTES,
                                                  "trust file"))
    except evidence.TrustFileError as exc:
        raise _UnusableInput(f"cannot use the trust file: {exc}") from None
    try:
        data = evidence.loads(_read_bounded(bundle, evidence.MAX_BUNDLE_BYTES, "bundle"))
    except evidence.BundleUnreadable as exc:
        raise _UnusableInput(str(exc)) from None
    try:
        verdict = evidence.verify(data, trust)
    except evidence.EvidenceInvalid as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "check": exc.check, "reason": exc.reason}))
        else:
            click.echo(f"INVALID evidence: check {exc.check} failed: {exc.reason}")
        sys.exit(1)
    if extract:
        if verdict.m0 is None:
            click.echo("nothing extracted: m0 needs k_r, k_t and c in the bundle", err=True)
        else:
            try:
                Path(extract).write_bytes(verdict.m0)
            except OSError as exc:
                raise _UnusableInput(f"cannot write {extract}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(verdict.to_json(), indent=1))
        return
    click.echo(f"VALID evidence ({verdict.kind}) for exchange {verdict.tx}")
    for s in verdict.statements:
        click.echo(f"  - {s}")
    if verdict.m0_sha256:
        click.echo(f"  m0 SHA-256: {verdict.m0_sha256}")
    click.echo(f"  checks passed: {', '.join(verdict.checks)}")

