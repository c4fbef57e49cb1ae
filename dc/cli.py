"""The DC's commands (``tcms dc``) and its service for ``tcms serve``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dc import store as dc_store
from dc.client import DirectoryClient
from dc.records import DirectoryError
from dc.updates import UpdateError, UpdateRepository
from tcms.cli.registry import Service
from tcms.cli.util import passphrase_of, settings_of, with_store
from tcms.config import Settings
from tcms.identity import Party, check_party_name
from tcms.keystore import Keystore, KeystoreError
from tcms.store import Store

if TYPE_CHECKING:
    from tcms.metrics import SqlGauges
    from tcms.web import Listener


@click.group()
def dc() -> None:
    """The Distribution Center: register gateways, publish, revoke and look up keys."""


def _dc_client(ctx: click.Context, url: str | None) -> Any:

    settings = settings_of(ctx)
    try:
        _, dc_party = Keystore(settings.keys.dir).public(settings.dc.identity)
    except (KeystoreError, ValueError) as exc:
        raise click.ClickException(f"the DC's public keys: {exc}") from None
    return DirectoryClient(url or settings.dc.url, dc_party)


@dc.command("register")
@click.argument("domain")
@click.argument("gateway_keys", type=click.File("r"))
@click.option("--protocol-address", default=None, metavar="ADDRESS",
              help="Where the domain's MTA routes protocol mail to the gateway "
                   "(default: tcms-gateway@DOMAIN; the gateway's [gateway] "
                   "protocol_address).")
@click.pass_context
def dc_register(ctx: click.Context, domain: str, gateway_keys: Any,
                protocol_address: str | None) -> None:
    """Allow the gateway whose public keys are in GATEWAY_KEYS (`tcms keys export`) to
    publish and revoke keys for DOMAIN, and publish the address its peers send protocol
    mail to (run on the DC's host: writes its database)."""

    try:
        gateway = Party.from_json(json.load(gateway_keys))
    except (ValueError, KeyError) as exc:
        raise click.ClickException(f"not a public key file: {exc}") from None
    domain = domain.strip().lower()
    address = protocol_address or f"tcms-gateway@{domain}"
    try:
        address = check_party_name(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--protocol-address") from None
    if address.rsplit("@", 1)[1] != domain:
        raise click.BadParameter(f"{address} is not in {domain}",
                                 param_hint="--protocol-address")
    with_store(ctx, lambda store: dc_store.register_gateway(store, domain, gateway,
                                                            int(time.time()), address))
    click.echo(f"{gateway.name} [{gateway.fingerprint}] may now publish keys for {domain}; "
               f"its protocol mail goes to {address}")


@dc.command("publish")
@click.argument("address")
@click.option("--gateway", required=True, help="The local gateway identity that signs.")
@click.option("--days", type=int, default=365, show_default=True, help="Validity.")
@click.option("--url", default=None, help="The DC's URL (default: [dc] url).")
@click.pass_context
def dc_publish(ctx: click.Context, address: str, gateway: str, days: int,
               url: str | None) -> None:
    """Publish the public keys of the local identity ADDRESS, signed by GATEWAY."""

    settings = settings_of(ctx)
    keys = Keystore(settings.keys.dir, passphrase_of(settings))
    try:
        gw = keys.load(gateway)
        _, party = keys.public(address)
    except KeystoreError as exc:
        raise click.ClickException(str(exc)) from None
    client = _dc_client(ctx, url)

    async def go() -> int:
        try:
            return int(await client.publish(gw, party, days=days))
        finally:
            await client.aclose()

    try:
        version = asyncio.run(go())
    except DirectoryError as exc:
        raise click.ClickException(f"the DC refused: {exc}") from None
    click.echo(f"published {party.name} version {version} [{party.fingerprint}]")


@dc.command("revoke")
@click.argument("address")
@click.argument("fingerprint")
@click.option("--gateway", required=True, help="The local gateway identity that signs.")
@click.option("--reason", default="key compromised", show_default=True)
@click.option("--url", default=None, help="The DC's URL (default: [dc] url).")
@click.pass_context
def dc_revoke(ctx: click.Context, address: str, fingerprint: str, gateway: str, reason: str,
              url: str | None) -> None:
    """Revoke the key FINGERPRINT of ADDRESS, signed by GATEWAY."""

    settings = settings_of(ctx)
    try:
        gw = Keystore(settings.keys.dir, passphrase_of(settings)).load(gateway)
    except KeystoreError as exc:
        raise click.ClickException(str(exc)) from None
    client = _dc_client(ctx, url)

    async def go() -> None:
        try:
            await client.revoke(gw, address, fingerprint, reason)
        finally:
            await client.aclose()

    try:
        asyncio.run(go())
    except DirectoryError as exc:
        raise click.ClickException(f"the DC refused: {exc}") from None
    click.echo(f"revoked {address} [{fingerprint}]")


@dc.command("lookup")
@click.argument("address")
@click.option("--url", default=None, help="The DC's URL (default: [dc] url).")
@click.pass_context
def dc_lookup(ctx: click.Context, address: str, url: str | None) -> None:
    """Look ADDRESS up at the DC and verify the DC's signed answer."""

    client = _dc_client(ctx, url)

    async def go() -> Any:
        try:
            return await client.lookup(address)
        finally:
            await client.aclose()

    try:
        rec = asyncio.run(go())
    except DirectoryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(rec.to_json(), indent=1))
    sys.exit(0 if rec.status == "active" else 1)


@dc.group("updates")
def dc_updates() -> None:
    """Signed security-module updates (The Update Framework)."""


def _repo(ctx: click.Context) -> Any:

    settings = settings_of(ctx)
    try:
        return UpdateRepository.load(settings.dc.updates_dir, passphrase_of(settings))
    except UpdateError as exc:
        raise click.ClickException(str(exc)) from None


@dc_updates.command("init")
@click.pass_context
def dc_updates_init(ctx: click.Context) -> None:
    """Create the update repository and its four role keys (encrypted at rest)."""

    settings = settings_of(ctx)
    try:
        UpdateRepository.init(settings.dc.updates_dir, passphrase_of(settings),
                              now=dt.datetime.now(dt.UTC))
    except UpdateError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"update repository created in {settings.dc.updates_dir}; give gateways "
               "its root: tcms dc updates root > root.json")


@dc_updates.command("root")
@click.pass_context
def dc_updates_root(ctx: click.Context) -> None:
    """Print the trusted root metadata that gateways pin."""
    sys.stdout.buffer.write(_repo(ctx).trusted_root())


@dc_updates.command("publish")
@click.argument("name")
@click.argument("module", type=click.File("rb"))
@click.pass_context
def dc_updates_publish(ctx: click.Context, name: str, module: Any) -> None:
    """Publish the security MODULE (JSON) under NAME, signed by the repository's keys."""

    try:
        version = _repo(ctx).publish(name, module.read(), now=dt.datetime.now(dt.UTC))
    except UpdateError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"published {name} (targets version {version})")


@dc_updates.command("refresh")
@click.pass_context
def dc_updates_refresh(ctx: click.Context) -> None:
    """Re-sign the timestamp role (run daily: clients refuse an expired timestamp)."""

    _repo(ctx).refresh_timestamp(dt.datetime.now(dt.UTC))
    click.echo("timestamp re-signed")


@dc_updates.command("apply")
@click.argument("name")
@click.option("--root", "root_file", type=click.File("rb"), required=True,
              help="The pinned trusted root (from `tcms dc updates root`).")
@click.option("--cache", type=click.Path(file_okay=False), default="var/update-cache",
              show_default=True, help="Where TUF keeps its trusted metadata.")
@click.option("--url", default=None, help="The DC's URL (default: [dc] url).")
@click.pass_context
def dc_updates_apply(ctx: click.Context, name: str, root_file: Any, cache: str,
                     url: str | None) -> None:
    """Fetch the module NAME through TUF, verify it and apply it (a gateway's step)."""
    from dc.updater import ModuleUpdater

    updater = ModuleUpdater(url or settings_of(ctx).dc.url, root_file.read(), Path(cache))
    try:
        module = updater.apply(name)
    except UpdateError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(module))



def listeners(settings: Settings, store: Store) -> list[Listener]:
    """The DC's API over HTTP(S), as configured in [dc]."""
    from dc.api import create_app
    from tcms.web import Listener

    try:
        me = Keystore(settings.keys.dir, passphrase_of(settings)).load(settings.dc.identity)
    except KeystoreError as exc:
        raise click.ClickException(str(exc)) from None
    d = settings.dc
    return [Listener(create_app(store, me, time.time, d.updates_dir), d.host, d.port,
                     d.tls_cert, d.tls_key)]


def _gauges(store: Store) -> SqlGauges:
    from dc import metrics

    return metrics.sql_gauges(store)


service = Service("dc", listeners=listeners, gauges=_gauges)
