"""The gateway's operations commands: `tcms tx purge` (retention) and `tcms doctor`
(docs/operations.md)."""

from __future__ import annotations

import datetime as dt
import time

import click

from tcms.cli.util import settings_of, with_store
from tcms.store import Store


def _when(t: int) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _moment(value: str | None) -> int:
    """Now, or the time given as seconds since the epoch or an ISO 8601 date and time."""
    if value is None:
        return int(time.time())
    if value.isdigit():
        return int(value)
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("must be seconds since the epoch or an ISO 8601 time "
                                 "such as 2029-06-01T00:00:00Z", param_hint="--now") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


@click.command("purge")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--now", "at", metavar="TIME", default=None,
              help="Purge as if it were TIME (epoch seconds or ISO 8601): what a later "
                   "purge will remove.  Default: now.")
@click.pass_context
def tx_purge(ctx: click.Context, dry_run: bool, at: str | None) -> None:
    """Remove what is past its retention period ([retention]; docs/operations.md): clear
    text, ciphertext and evidence of final exchanges, old audit entries.  Exchanges that
    are not final are never touched.  A running gateway does this every
    retention.interval on its own."""
    from gateway import retention

    now = _moment(at)
    policy = settings_of(ctx).retention

    async def go(store: Store) -> retention.Report:
        return await retention.purge(store, policy, now, dry_run=dry_run)

    report = with_store(ctx, go)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"retention as of {_when(now)} UTC: {verb} " + ", ".join(
        f"{n} {what}" for what, n in report.counts.items()))
