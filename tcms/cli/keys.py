"""``tcms keys``: identities in the keystore and the data key of the database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tcms.cli.util import passphrase_of, settings_of, when, with_store
from tcms.keystore import Keystore, KeystoreError


def _keystore(ctx: click.Context, need_secret: bool) -> Keystore:
    settings = settings_of(ctx)
    return Keystore(settings.keys.dir, passphrase_of(settings) if need_secret else None)


@click.group()
def keys() -> None:
    """Create, list and export identities (Ed25519 signing + X25519 encryption keys)."""


@keys.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(["user", "gateway", "tss", "ttp", "dc"]),
              default="user", show_default=True, help="What the identity is for.")
@click.option("--force", is_flag=True, help="Replace an existing identity of that name.")
@click.pass_context
def keys_create(ctx: click.Context, name: str, kind: str, force: bool) -> None:
    """Create the identity NAME (an e-mail address or a service name)."""
    store = _keystore(ctx, need_secret=True)
    try:
        ident = store.create(name, kind, overwrite=force)
    except (KeystoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {kind} {ident.name}  fingerprint {ident.party.fingerprint}")


@keys.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    """List the identities in the key directory with their fingerprints."""
    store = _keystore(ctx, need_secret=False)
    rows = store.list()
    if not rows:
        click.echo(f"no identities in {store.dir}")
    for kind, party in rows:
        click.echo(f"{kind:8} {party.name:32} {party.fingerprint}")


@keys.command("export")
@click.argument("name")
@click.option("--output", "-o", type=click.File("w"), default="-",
              help="Where to write the public keys (default: standard output).")
@click.pass_context
def keys_export(ctx: click.Context, name: str, output: Any) -> None:
    """Export the PUBLIC keys of NAME as JSON (private keys never leave the keystore)."""
    store = _keystore(ctx, need_secret=False)
    try:
        kind, party = store.public(name)
    except (KeystoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    output.write(json.dumps({"kind": kind, **party.to_json()}, indent=1) + "\n")


@keys.group("data-key")
def data_key() -> None:
    """The data key that encrypts mail, key shares and protocol state in the database.

    Kept in the key directory (data-keys.keyring, sealed with the passphrase); a gateway
    creates it on first use.  Rotate: `rotate`, then `tcms db reencrypt`, then `retire`
    the old version (docs/gateway.md, "Data at rest")."""


def _passphrase_of(ctx: click.Context) -> tuple[Path, bytes]:
    settings = settings_of(ctx)
    return Path(settings.keys.dir), passphrase_of(settings)


def _keyring_command(fn: Any) -> Any:
    from tcms import datakeys

    try:
        return fn()
    except datakeys.DataKeyError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


@data_key.command("create")
@click.pass_context
def data_key_create(ctx: click.Context) -> None:
    """Create the data key (an error if there is one: use `rotate`)."""
    from tcms import datakeys

    directory, passphrase = _passphrase_of(ctx)
    keys = _keyring_command(lambda: datakeys.create(directory, passphrase))
    click.echo(f"data key {keys.current:08x} created in {datakeys.keyring_path(directory)}")


@data_key.command("rotate")
@click.pass_context
def data_key_rotate(ctx: click.Context) -> None:
    """Add a new version of the data key and make it current: new values are sealed under
    it, old ones still open.  Restart the gateways (copy the keyring to every gateway
    sharing the database), then run `tcms db reencrypt`."""
    from tcms import datakeys

    directory, passphrase = _passphrase_of(ctx)
    keys = _keyring_command(lambda: datakeys.rotate(directory, passphrase))
    old = ", ".join(f"{k:08x}" for k in sorted(keys.keys) if k != keys.current) or "none"
    click.echo(f"data key {keys.current:08x} is now current (older versions kept: {old})")


@data_key.command("list")
@click.pass_context
def data_key_list(ctx: click.Context) -> None:
    """The versions of the data key, oldest first (no passphrase needed)."""
    from tcms import datakeys

    directory = Path(settings_of(ctx).keys.dir)
    rows = _keyring_command(lambda: datakeys.describe(directory))
    if not rows:
        click.echo(f"no data key in {directory}")
    for kid, created, current in sorted(rows, key=lambda r: r[1]):
        click.echo(f"{kid:08x}  created {when(created)}{'  current' if current else ''}")


@data_key.command("retire")
@click.argument("key_id")
@click.pass_context
def data_key_retire(ctx: click.Context, key_id: str) -> None:
    """Drop the old version KEY_ID, once no value in the database is sealed under it
    (`tcms db reencrypt` first).  What it sealed could never be opened again: it is
    checked, on the configured database ([database] url)."""
    from tcms import datakeys
    from tcms.store.reencrypt import usage

    directory, passphrase = _passphrase_of(ctx)
    kid = _keyring_command(lambda: datakeys.parse_key_id(key_id))
    used = with_store(ctx, usage)
    left = {col: n[kid] for col, n in used.items() if n[kid]}
    if left:
        raise click.ClickException(
            f"data key {kid:08x} still seals " + ", ".join(f"{n} value(s) of {c}"
                                                            for c, n in left.items())
            + ": run `tcms db reencrypt` first")
    _keyring_command(lambda: datakeys.retire(directory, passphrase, kid))
    click.echo(f"data key {kid:08x} retired")

