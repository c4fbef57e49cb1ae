"""The gateway's operations commands: `tcms tx purge` (retention) and `tcms doctor`
(docs/operations.md)."""

from __future__ import annotations

import datetime as dt
import time

import click

from tcms.cli.util import settings_of, when, with_store
from tcms.store import Store


def _moment(value: str | None) -> int:
    """Now, or the time given as seconds since the epoch or an ISO 8601 date and time."""
    if value is None:
        return int(time.time())
    if value.isdigit():
        return int(value)
    try:
        given = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("must be seconds since the epoch or an ISO 8601 time "
                                 "such as 2029-06-01T00:00:00Z", param_hint="--now") from None
    if given.tzinfo is None:
        given = given.replace(tzinfo=dt.UTC)
    return int(given.timestamp())


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
    click.echo(f"retention as of {when(now)}: {verb} " + ", ".join(
        f"{n} {what}" for what, n in report.counts.items()))


@click.command("doctor")
@click.option("--user", metavar="ADDRESS", default=None,
              help="A user whose mailbox the master login opens (default: the first user "
                   "of the gateway's domains in the key directory).")
@click.option("--probe-wait", type=click.FloatRange(1, 600), default=30.0,
              show_default=True, help="Seconds to wait for the probe to come round "
              "through the MTA to the intake.")
@click.option("--offline", is_flag=True,
              help="Only what is on this machine: files, keys, trust, the database.")
@click.pass_context
def doctor(ctx: click.Context, user: str | None, probe_wait: float, offline: bool) -> None:
    """Check a gateway's configuration before going live, one line per check, and say
    how to fix what fails: the configuration and TLS files (expiry, the key matches the
    certificate), the passphrase opens every key, the trust files, the database is
    migrated, the upstream SMTP and IMAP servers answer with verified TLS, the master
    login works, the DC has this gateway's registration and its users' keys, the TTP and
    the TSS answer and are the ones in the trust file, and the MTA routes protocol mail to
    the gateway (a probe that goes round through the MTA to the running gateway's intake,
    which recognises it and keeps nothing).

    \b
    Exit status: 0 when every check passes (warnings allowed), 1 otherwise."""
    import asyncio
    import os
    import sys

    from gateway import doctor as doc
    from gateway import doctor_net

    settings = settings_of(ctx)  # an invalid configuration: every wrong value, exit 1
    report = doc.Report(say=click.echo)
    obj = ctx.ensure_object(dict)
    source = obj.get("config") or os.environ.get("TCMS_CONFIG") or "defaults and environment"
    report.ok("config", f"{source}: valid")
    if not settings.gateway.domains:
        report.fail("config", "gateway.domains is empty",
                    "set the mail domains the gateway certifies for (TCMS_GATEWAY__DOMAINS)")
    found = doc.Found()
    doc.check_files(report, settings, dt.datetime.now(dt.UTC))
    doc.check_keys(report, settings, found)
    doc.check_signing(report, settings, dt.datetime.now(dt.UTC))
    doc.check_trust(report, settings, found)

    async def checks() -> None:
        await doc.check_database(report, settings)
        if not offline:
            await doctor_net.network(report, settings, found, user=user,
                                     probe_wait=probe_wait)

    asyncio.run(checks())
    failed = report.failed
    warned = sum(f.status == "warn" for f in report.findings)
    click.echo(f"\n{len(report.findings)} checks: {len(failed)} failed, {warned} warning(s)"
               + ("" if failed else " - ready to go live"))
    sys.exit(1 if failed else 0)
