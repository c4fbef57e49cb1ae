"""``tcms config``: inspect the configuration."""

from __future__ import annotations

import json

import click

from tcms.cli.util import settings_of


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the configuration and print it (secrets hidden)."""
    settings = settings_of(ctx)
    data = settings.model_dump(mode="json")
    for section in data.values():  # every secret value, whichever section holds it
        for key, value in section.items():
            if value and key.endswith(("password", "passphrase")):
                section[key] = "***"
    click.echo(json.dumps(data, indent=1))
    click.echo("configuration OK", err=True)

