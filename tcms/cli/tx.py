"""``tcms tx``: every certified exchange stored here, its state and its evidence."""

from __future__ import annotations

from typing import Any

import click

from tcms import evidence
from tcms.cli.util import when, with_store


@click.group()
def tx() -> None:
    """See every certified exchange, its state and deadlines, and export its evidence."""


@tx.command("list")
@click.option("--owner", help="Only the exchanges of this local user.")
@click.option("--active", is_flag=True, help="Only exchanges that have not ended.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.pass_context
def tx_list(ctx: click.Context, owner: str | None, active: bool, limit: int) -> None:
    """One line per exchange and role: id, phase, next deadline, parties, subject."""
    runs = with_store(ctx, lambda s: s.list_runs(owner=owner, active_only=active,
                                                  limit=limit))
    if not runs:
        click.echo("no exchanges")
    for r in runs:
        click.echo(f"{r.tx}  {r.role:8} {r.phase:10} next {when(r.deadline):23} "
                   f"{r.owner} <-> {r.peer}  {r.subject!r}")


@tx.command("show")
@click.argument("tx_id")
@click.pass_context
def tx_show(ctx: click.Context, tx_id: str) -> None:
    """Everything about the exchange TX_ID (a unique prefix is enough)."""
    async def load(store: Any) -> Any:
        runs = await store.find_runs(tx_id)
        return [(r, await store.messages_of(r.cid), await store.payload_size(r.cid, r.role))
                for r in runs]

    found = with_store(ctx, load)
    if not found:
        raise click.ClickException(f"no exchange {tx_id}")
    for run, msgs, c_size in found:
        click.echo(f"exchange {run.tx} ({run.role} side), cid {run.cid.hex()}")
        click.echo(f"  {run.owner} <-> {run.peer}, subject {run.subject!r}")
        click.echo(f"  phase {run.phase}{' (ended)' if run.terminal else ''}, next deadline "
                   f"{when(run.deadline)}, updated {when(run.updated_at)}")
        if c_size is not None:
            click.echo(f"  c: {c_size} bytes, kept apart (its m3 is logged without it)")
        for m in msgs:
            click.echo(f"  {when(m.at)} {m.direction:3} {m.kind:10} {len(m.data)} bytes")


@tx.command("export")
@click.argument("tx_id")
@click.option("--role", type=click.Choice(["sender", "receiver"]), default=None,
              help="Which side's evidence (default: the only one stored).")
@click.option("--output", "-o", type=click.File("w"), default="-")
@click.pass_context
def tx_export(ctx: click.Context, tx_id: str, role: str | None, output: Any) -> None:
    """Write the evidence bundle of TX_ID (verify it with `tcms verify`)."""
    runs = with_store(ctx, lambda s: s.find_runs(tx_id))
    if role:
        runs = [r for r in runs if r.role == role]
    if not runs:
        raise click.ClickException(f"no exchange {tx_id}" + (f" on the {role} side"
                                                             if role else ""))
    if len(runs) > 1:
        raise click.ClickException("both sides are stored here: choose --role")
    run = runs[0]
    c = with_store(ctx, lambda s: s.get_payload(run.cid, run.role))
    output.write(evidence.dumps(evidence.from_stored(run.role, run.state, c)) + "\n")

