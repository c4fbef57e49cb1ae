"""``tcms serve``: run the installed services (the TSS, the TTP, the DC, the gateway), one
or all of them in one process, with the configured database brought up to date first."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

import click

from tcms.cli.registry import Service, load_services, service_names
from tcms.cli.util import settings_of
from tcms.config import Settings
from tcms.store import Store
from tcms.web import Listener


async def _upgrade(url: str) -> None:
    store = Store(url)
    try:
        await store.upgrade()
    finally:
        await store.close()


def chosen(name: str, settings: Settings) -> list[Service]:
    """The services ``tcms serve NAME`` runs."""
    if name != "all":
        return list(load_services([name]).values())
    return [s for s in load_services().values() if s.in_all(settings)]


def metrics_listener(settings: Settings, run: list[Service]) -> Listener | None:
    """The process's Prometheus endpoint ([metrics] listen) with the SQL gauges of the
    services it runs; None when it is off (docs/operations.md)."""
    from tcms import metrics

    if not settings.metrics.listen:
        return None
    store = Store(settings.database.url)  # counts rows only: no data key needed
    readers = [s.gauges(store) for s in run if s.gauges]
    logging.getLogger("tcms").info("metrics: http://%s/metrics", settings.metrics.listen)
    return metrics.listener(settings.metrics, [r.refresh for r in readers])


_NAMES = service_names()


@click.command("serve", help=f"""Run TCMS services ({", ".join(_NAMES) or "none installed"}),
one or all of them in one process (``all`` includes the gateway when [gateway] domains is
set).

Addresses, TLS files and the database come from the configuration ([tss], [ttp], [dc],
[gateway], [database]); state is in SQL, so a restart continues where it stopped.""")
@click.argument("service", type=click.Choice(["all", *_NAMES]), default="all")
@click.pass_context
def serve(ctx: click.Context, service: str) -> None:
    from tcms.web import serve as serve_all

    settings = settings_of(ctx)
    run = chosen(service, settings)
    listeners: list[Listener] = []
    if any(s.listeners for s in run):
        asyncio.run(_upgrade(settings.database.url))
        store = Store(settings.database.url)  # a fresh engine for the serving loop
        for s in run:
            if s.listeners:
                listeners.extend(s.listeners(settings, store))

    endpoint = metrics_listener(settings, run)
    if endpoint is not None:
        listeners.append(endpoint)

    async def go() -> None:
        work: list[Awaitable[None]] = [s.run(settings) for s in run if s.run]
        if listeners:
            work.append(serve_all(listeners))
        await asyncio.gather(*work)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(go())
