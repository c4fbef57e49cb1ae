"""The gateway's commands and its service for ``tcms serve``.

`tcms gateway enroll`: create users' keys and publish them at the DC.
`tcms queue`: the gateway's units of work as an administrator sees them.

Kinds: inbound (protocol mail from the MTA), submission, outbox, answers (a user's
accept/refuse folders), deadline (a run's timer, keyed CID/role).  Items that keep failing
are quarantined; `retry` tries one again now, `drop` gives up on it (kept in the audit).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import click

from dc.records import DirectoryError
from gateway import context
from gateway.queue import Queues
from gateway.queueview import KINDS, Entry
from tcms import config as config_mod
from tcms.cli.registry import Service
from tcms.cli.util import settings_of, when, with_store
from tcms.store import Store

if TYPE_CHECKING:
    from tcms.metrics import SqlGauges

KIND = click.Choice(KINDS)


def _line(e: Entry) -> str:
    error = f"  last error: {e.last_error[:120]}" if e.last_error else ""
    return (f"{e.kind:<10} {e.key:<20.70} {e.status:<11} tries {e.attempts:<3} "
            f"next {when(e.next_attempt)}  {e.summary[:100]}{error}")


@click.group("queue")
def queue_group() -> None:
    """The gateway's work: what waits, what fails, what is quarantined."""


@queue_group.command("list")
@click.option("--kind", type=KIND, default=None, help="Only this kind of work.")
@click.option("--all", "everything", is_flag=True, help="Finished items too.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.pass_context
def queue_list(ctx: click.Context, kind: str | None, everything: bool, limit: int) -> None:
    """Items waiting, failing or quarantined (one line each)."""
    async def go(store: Store) -> list[Entry]:
        return await Queues(store).entries(kind, everything=everything, limit=limit)

    entries = with_store(ctx, go)
    for e in entries:
        click.echo(_line(e))
    quarantined = sum(e.status == "quarantined" for e in entries)
    click.echo(f"{len(entries)} item(s), {quarantined} quarantined", err=True)


@queue_group.command("show")
@click.argument("kind", type=KIND)
@click.argument("key")
@click.pass_context
def queue_show(ctx: click.Context, kind: str, key: str) -> None:
    """One item whole: KIND and KEY as `tcms queue list` prints them."""
    async def go(store: Store) -> Entry | None:
        return await Queues(store).entry(kind, key)

    try:
        e = with_store(ctx, go)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="KEY") from None
    if e is None:
        raise click.ClickException(f"no {kind} item {key}")
    for label, value in (("kind", e.kind), ("key", e.key), ("status", e.status),
                         ("attempts", str(e.attempts)), ("next try", when(e.next_attempt)),
                         ("what", e.summary), ("outcome", e.detail or "-"),
                         ("last error", e.last_error or "-")):
        click.echo(f"{label + ':':<12}{value}")


def _act(ctx: click.Context, kind: str, key: str, verb: str) -> None:
    async def go(store: Store) -> bool:
        q = Queues(store)
        now = int(time.time())
        return await (q.retry(kind, key, now) if verb == "retry" else q.drop(kind, key, now))

    try:
        changed = with_store(ctx, go)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="KEY") from None
    if not changed:
        raise click.ClickException(f"no {kind} item {key} that can be {verb}ped"
                                   if verb == "drop" else f"no {kind} item {key} to retry")
    click.echo(f"{kind} {key}: {'will be tried again now' if verb == 'retry' else 'dropped'}")


def _verb(verb: str, doc: str) -> None:
    @queue_group.command(verb, help=doc)
    @click.argument("kind", type=KIND)
    @click.argument("key")
    @click.pass_context
    def act(ctx: click.Context, kind: str, key: str) -> None:
        _act(ctx, kind, key, verb)


_verb("retry", "Try a failed or quarantined item again now (its tries start from zero).")
_verb("drop", "Give up on an item for good (recorded in the audit log).")


@click.group("gateway")
def gateway_group() -> None:
    """The gateway's users: enrol them (key pair, published at the DC)."""


@gateway_group.command("enroll")
@click.argument("addresses", nargs=-1, required=True)
@click.pass_context
def gateway_enroll(ctx: click.Context, addresses: tuple[str, ...]) -> None:
    """Create the keys of ADDRESSES (users of the gateway's domains) and publish them at the
    DC, so that others can send them certified mail.  Users who log in to the gateway's
    SMTP are enrolled on their own."""
    settings = settings_of(ctx)

    async def go() -> None:
        try:
            gw = context.create(settings)
        except config_mod.ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            for address in addresses:
                ident = await gw.enroll(address)
                click.echo(f"{ident.name}: key {ident.party.fingerprint} published at the DC")
        except DirectoryError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            await gw.aclose()

    asyncio.run(go())


async def _serve(settings: config_mod.Settings) -> None:
    from gateway import server

    await server.run(settings)


def _gauges(store: Store) -> SqlGauges:
    from gateway import metrics

    return metrics.sql_gauges(store)


service = Service("gateway", run=_serve, gauges=_gauges,
                  in_all=lambda settings: bool(settings.gateway.domains))
