"""What every package's commands share: the settings of the current `tcms` invocation and
a store opened (and migrated) for one command, with the data keys when the keystore has
them and the passphrase is configured."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tcms import config as config_mod
from tcms import datakeys

if TYPE_CHECKING:
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


def passphrase_of(settings: config_mod.Settings) -> bytes:
    """The keystore passphrase, or the command ends naming what is missing."""
    try:
        return settings.keys.get_passphrase()
    except config_mod.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def data_keys_of(settings: config_mod.Settings) -> datakeys.DataKeys | None:
    """The keystore's data keys; None if it has none or no passphrase is configured (a
    sealed value read then fails with DataKeyMissing)."""
    try:
        passphrase = settings.keys.get_passphrase()
    except config_mod.ConfigError:
        return None
    try:
        return datakeys.load(settings.keys.dir, passphrase)
    except datakeys.KeyringError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


def with_store(ctx: click.Context, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``fn`` with the configured database, brought to the newest schema; a value the
    data keys cannot open ends the command with the error's name and reason."""
    from tcms.store import Store
    from tcms.store.encrypted import data_key_error

    settings = settings_of(ctx)
    keys = data_keys_of(settings)

    async def go() -> T:
        store = Store(settings.database.url, data_keys=keys)
        try:
            await store.upgrade()
            return await fn(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except Exception as exc:
        err = data_key_error(exc)
        if err is None:
            raise
        raise click.ClickException(f"{type(err).__name__}: {err}") from None


def when(t: int | None) -> str:
    """A time in a command's output: "-" for none, else as `checks.utc` says it (UTC, to
    the second); total, like it: a stored or given time no date can show (a corrupt row,
    a ``--now`` past the year 9999) is printed as such, never raised."""
    if t is None:
        return "-"
    from tcms.protocol.checks import utc

    return utc(t)
