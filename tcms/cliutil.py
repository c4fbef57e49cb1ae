"""What every package's commands share: the settings of the current `tcms` invocation and
a store opened (and migrated) for one command."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from tcms import config as config_mod
from tcms.store import Store

T = TypeVar("T")


def settings_of(ctx: click.Context) -> config_mod.Settings:
    """The configuration named by ``tcms --config`` (loaded once per invocation)."""
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = config_mod.load(obj.get("config"))
        except config_mod.ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    settings: config_mod.Settings = obj["settings"]
    return settings


def with_store(ctx: click.Context, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``fn`` with the configured database, brought to the newest schema."""
    settings = settings_of(ctx)

    async def go() -> T:
        store = Store(settings.database.url)
        try:
            await store.upgrade()
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())
