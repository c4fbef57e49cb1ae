"""``tcms serve``: run the installed services (the TSS, the TTP, the DC, the gateway), one
or all of them in one process, with the configured database brought up to date first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

import click

from tcms.cli.registry import Service
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


def chosen(services: dict[str, Service], name: str, settings: Settings) -> list[Service]:
    """The services ``tcms serve NAME`` runs."""
    if name != "all":
        return [services[name]]
    return [s for s in services.values() if s.in_all(settings)]


def serve_command(services: dict[str, Service]) -> click.Command:
    """The ``serve`` command over the registered services."""
    names = ", ".join(services) or "none installed"

    @click.command("serve", help=f"""Run TCMS services ({names}), one or all of them in one
    process (``all`` includes the gateway when [gateway] domains is set).

    Addresses, TLS files and the database come from the configuration ([tss], [ttp], [dc],
    [gateway], [database]); state is in SQL, so a restart continues where it stopped.""")
    @click.argument("service", type=click.Choice(["all", *services]), default="all")
    @click.pass_context
    def serve(ctx: click.Context, service: str) -> None:
        from tcms.web import serve as serve_all

        settings = settings_of(ctx)
        run = chosen(services, service, settings)
        listeners: list[Listener] = []
        if any(s.listeners for s in run):
            asyncio.run(_upgrade(settings.database.url))
            store = Store(settings.database.url)  # a fresh engine for the serving loop
            for s in run:
                if s.listeners:
                    listeners.extend(s.listeners(settings, store))

        async def go() -> None:
            work: list[Awaitable[None]] = [s.run(settings) for s in run if s.run]
            if listeners:
                work.append(serve_all(listeners))
            await asyncio.gather(*work)

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(go())

    return serve
