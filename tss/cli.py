"""The TSS's commands (``tcms tss``) and its service for ``tcms serve``."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import click

from tcms.cli.registry import Service
from tcms.cli.util import passphrase_of, settings_of
from tcms.config import Settings
from tcms.store import Store
from tss import credentials

if TYPE_CHECKING:
    from tcms.metrics import SqlGauges
    from tcms.web import Listener


@click.group()
def tss() -> None:
    """The Time Stamping Server's credentials and log."""


@tss.command("init")
@click.option("--force", is_flag=True, help="Replace existing credentials.")
@click.pass_context
def tss_init(ctx: click.Context, force: bool) -> None:
    """Create the TSA's CA and its time-stamping certificate (keys encrypted at rest)."""
    settings = settings_of(ctx)
    try:
        creds = credentials.init(settings.keys.dir, settings.tss.name, passphrase_of(settings),
                                 now=dt.datetime.now(dt.UTC), force=force)
    except credentials.CredentialsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"TSA certificate {creds.tsa_cert.subject.rfc4514_string()} in "
               f"{settings.keys.dir} (CA: {credentials.FILES['ca']})")


def listeners(settings: Settings, store: Store) -> list[Listener]:
    """The RFC 3161 authority over HTTP(S), as configured in [tss]."""
    from tcms.web import Listener
    from tss.api import create_app
    from tss.authority import TimeStampAuthority

    try:
        tsa = TimeStampAuthority(credentials.load(settings.keys.dir, passphrase_of(settings)))
    except credentials.CredentialsError as exc:
        raise click.ClickException(str(exc)) from None
    s = settings.tss
    return [Listener(create_app(store, tsa), s.host, s.port, s.tls_cert, s.tls_key)]


def _gauges(store: Store) -> SqlGauges:
    from tss import metrics

    return metrics.sql_gauges(store)


service = Service("tss", listeners=listeners, gauges=_gauges)
