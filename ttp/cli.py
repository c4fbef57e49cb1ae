"""The TTP's commands (``tcms ttp``), its service for ``tcms serve``, and ``tcms demo``
(in-process exchanges that take every recovery path)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tcms.cli.registry import Service
from tcms.cli.util import passphrase_of, settings_of, with_store
from tcms.config import Settings
from tcms.keystore import Keystore, KeystoreError
from tcms.store import Store
from ttp import store as ttp_store

if TYPE_CHECKING:
    from tcms.metrics import SqlGauges
    from tcms.web import Listener


@click.group()
def ttp() -> None:
    """The Trusted Third Party's audit log and disputes."""


@ttp.command("audit")
@click.pass_context
def ttp_audit(ctx: click.Context) -> None:
    """Check the hash chain of the append-only audit log."""
    async def go(store: Store) -> tuple[int, str | None, dict[str, int]]:
        n, bad = await store.verify_audit_chain()
        return n, bad, await ttp_store.count_decisions(store)

    n, bad, counts = with_store(ctx, go)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no decisions"
    if bad:
        click.echo(f"audit log BROKEN after {n - 1} good entries: {bad}")
        sys.exit(1)
    click.echo(f"audit log intact: {n} entries; decisions: {summary}")


@ttp.command("dispute")
@click.argument("bundle", type=click.File("rb"))
@click.option("--url", default=None, help="The TTP's URL (default: [ttp] url).")
@click.option("--as", "filer", default=None, metavar="ADDRESS",
              help="The party filing: the exchange's sender or recipient, whose key is in "
                   "the keystore ([keys] dir).  Default: the bundle's holder.")
@click.pass_context
def ttp_dispute(ctx: click.Context, bundle: Any, url: str | None, filer: str | None) -> None:
    """Submit an evidence BUNDLE to the TTP and print its signed verdict.

    Only a party of the exchange may file: the request is signed with its key."""

    import httpx

    from tcms import boundedjson
    from ttp import filing

    settings = settings_of(ctx)
    body = bundle.read()
    try:
        parsed = boundedjson.loads(body, max_depth=4, max_items=256)
        core = filing.core_of(parsed)
    except (boundedjson.JsonRefused, filing.FilingRefused) as exc:
        raise click.ClickException(f"{bundle.name}: not an evidence bundle ({exc})") from None
    hdr = core.header
    if filer is None:
        filer = (hdr.recipient if parsed.get("holder") == "receiver" else hdr.sender).name
    try:
        me = Keystore(settings.keys.dir, passphrase_of(settings)).load(filer)
    except (KeystoreError, ValueError) as exc:
        raise click.ClickException(f"cannot file as {filer}: {exc}") from None
    target = (url or settings.ttp.url).rstrip("/") + "/dispute"
    headers = {"Content-Type": "application/json",
               **filing.filing_headers(me, core.cid, body, int(time.time()))}
    try:
        res = httpx.post(target, content=body, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the TTP at {target}: {exc}") from None
    if res.status_code != 200:
        raise click.ClickException(f"the TTP answered {res.status_code}: {res.text[:500]}")
    try:
        verdict = boundedjson.loads(res.content, max_depth=8, max_items=10_000)
    except boundedjson.JsonRefused:
        verdict = None
    if not isinstance(verdict, dict):
        raise click.ClickException("the TTP's answer is not a verdict")
    click.echo(json.dumps(verdict, indent=1))
    sys.exit(0 if verdict.get("valid") else 1)



def listeners(settings: Settings, store: Store) -> list[Listener]:
    """The TTP's API over HTTP(S), as configured in [ttp]."""
    from tcms.protocol.checks import Trust
    from tcms.web import Listener
    from tss import credentials
    from ttp.api import DisputeLimits, create_app

    passphrase = passphrase_of(settings)
    try:
        me = Keystore(settings.keys.dir, passphrase).load(settings.ttp.identity)
        trust = Trust(me.party, credentials.load_ca(settings.keys.dir))
    except (credentials.CredentialsError, KeystoreError) as exc:
        raise click.ClickException(str(exc)) from None
    t = settings.ttp
    limits = DisputeLimits(t.dispute_max_bytes, t.dispute_per_minute, t.dispute_burst,
                           t.dispute_concurrency)
    return [Listener(create_app(store, me, trust, time.time, limits), t.host, t.port,
                     t.tls_cert, t.tls_key)]


@click.command()
@click.option("--scenario", type=click.Choice(
    ["accept", "refuse", "silent-recipient", "sender-stalls", "recipient-stalls", "all"]),
    default="all", show_default=True, help="Which exchange to play.")
@click.option("--out", type=click.Path(file_okay=False), default="demo-out",
              show_default=True, help="Where keys, database and evidence files go.")
def demo(scenario: str, out: str) -> None:
    """Run certified exchanges between two in-process parties and verify the evidence."""
    from ttp import demo as demo_mod

    logging.getLogger().setLevel(logging.WARNING)
    scenarios = demo_mod.SCENARIOS if scenario == "all" else (scenario,)
    for name in scenarios:
        click.echo(f"\n=== scenario: {name} " + "=" * (50 - len(name)))
        asyncio.run(demo_mod.run(Path(out) / name, name, say=click.echo))


def _gauges(store: Store) -> SqlGauges:
    from ttp import metrics

    return metrics.sql_gauges(store)


service = Service("ttp", listeners=listeners, gauges=_gauges)
