"""``tcms db``: the SQL database's schema and the data keys its values are sealed under."""

from __future__ import annotations

from typing import Any

import click

from tcms.cli.util import data_keys_of, settings_of, with_store
from tcms.store import Store


@click.group()
def db() -> None:
    """Manage the SQL database (SQLite by default, PostgreSQL by URL)."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the schema to the newest revision."""
    async def nothing(store: Store) -> None:
        return None

    with_store(ctx, nothing)  # opening it brings the schema to the newest revision
    click.echo("database schema is up to date")


def _usage_lines(used: dict[str, Any], current: int | None) -> list[str]:
    lines = []
    for col, counts in used.items():
        parts = [f"{n} in clear" if kid is None else
                 f"{n} under {kid:08x}{' (current)' if kid == current else ''}"
                 for kid, n in sorted(counts.items(), key=lambda kv: (kv[0] is not None,
                                                                       kv[0] or 0))]
        lines.append(f"{col:18} {', '.join(parts) or 'empty'}")
    return lines


@db.command("key-usage")
@click.pass_context
def db_key_usage(ctx: click.Context) -> None:
    """Which data key seals the values of each encrypted column (or: in clear)."""
    from tcms.store.reencrypt import usage

    keys = data_keys_of(settings_of(ctx))
    for line in _usage_lines(with_store(ctx, usage), keys.current if keys else None):
        click.echo(line)


@db.command("reencrypt")
@click.pass_context
def db_reencrypt(ctx: click.Context) -> None:
    """Seal every value under the current data key: values sealed under an older version
    (after `tcms keys data-key rotate`) and values stored in clear before encryption.
    Safe while gateways run; run it again if it reports values rewritten meanwhile."""
    from tcms.store.reencrypt import reencrypt

    keys = data_keys_of(settings_of(ctx))
    if keys is None:
        raise click.ClickException("no data key: set the keystore passphrase "
                                   "(TCMS_KEYS__PASSPHRASE); a gateway creates the key on "
                                   "first start, or `tcms keys data-key create`")
    report = with_store(ctx, reencrypt)
    total = sum(report.resealed.values())
    click.echo(f"{total} value(s) sealed again under data key {keys.current:08x}"
               + "".join(f"; {c}: {n}" for c, n in report.resealed.items()))
    if report.raced:
        click.echo(f"{sum(report.raced.values())} value(s) were rewritten by a gateway "
                   "meanwhile (sealed under its current key)")
    for line in _usage_lines(report.usage, keys.current):
        click.echo(line)
    if report.vacuumed:
        click.echo("the SQLite file was rebuilt (VACUUM) and its WAL emptied: no page "
                   "keeps a value as it was")
    elif report.vacuumed is False:
        click.echo("the SQLite file was rebuilt (VACUUM) but a reader kept its WAL busy: "
                   "run `tcms db reencrypt` again to empty it")
    elif total and settings_of(ctx).database.url.startswith("postgres"):
        click.echo("PostgreSQL keeps old row versions until they are vacuumed: run "
                   "VACUUM FULL on submissions, inbound, runs, messages and evidence, and "
                   "destroy backups taken before")

