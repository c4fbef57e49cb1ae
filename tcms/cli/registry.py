"""What the packages add to the ``tcms`` command line, found without importing them.

Each package names its commands in the ``tcms.commands`` entry points (pyproject.toml):
``NAME = "module:command"`` adds a top-level command, ``"GROUP.NAME"`` a subcommand of a
group another package owns (the gateway's ``tx.purge``).  ``tcms.services`` names the
:class:`Service` objects that ``tcms serve`` can run.  A command's module is imported only
when that command runs (or help lists it), so ``tcms keys list`` pays for no gateway."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from tcms.config import Settings
    from tcms.metrics import SqlGauges
    from tcms.store import Store
    from tcms.web import Listener

COMMANDS = "tcms.commands"
SERVICES = "tcms.services"


def _always(settings: Settings) -> bool:
    return True


@dataclass(frozen=True)
class Service:
    """One thing ``tcms serve NAME`` runs: HTTP ``listeners`` served with the shared store,
    or a long-running coroutine (``run``).  ``in_all`` says whether ``tcms serve all``
    includes it under the given configuration; ``gauges``, its metrics read from SQL."""

    name: str
    listeners: Callable[[Settings, Store], list[Listener]] | None = None
    run: Callable[[Settings], Awaitable[None]] | None = None
    in_all: Callable[[Settings], bool] = _always
    # its gauges read from SQL at each scrape of the metrics endpoint ([metrics] listen)
    gauges: Callable[[Store], SqlGauges] | None = None


def _missing(group: str) -> None:
    click.echo(f"tcms: no package adds to {group!r}: the entry points are not installed "
               "(run `make setup`, or `pip install -e .` again after pyproject.toml "
               "changed)", err=True)


def command_sources() -> dict[str, str]:
    """Command name (``GROUP.NAME`` for a subcommand) -> ``module:attribute``."""
    found = {ep.name: ep.value for ep in entry_points(group=COMMANDS)}
    if not found:
        _missing(COMMANDS)
    return found


def service_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=SERVICES))


def load_object(source: str) -> Any:
    """The object ``module:attribute`` names, importing its module now."""
    module, _, attr = source.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise click.ClickException(f"cannot load {source}: {exc}") from None


def load_services(names: list[str] | None = None) -> dict[str, Service]:
    """The services of ``names`` (all installed ones when None), importing only them."""
    out: dict[str, Service] = {}
    for ep in sorted(entry_points(group=SERVICES), key=lambda e: e.name):
        if names is None or ep.name in names:
            svc = load_object(ep.value)
            if not isinstance(svc, Service) or svc.name != ep.name:
                raise click.ClickException(f"{ep.value} is not the service {ep.name!r}")
            out[ep.name] = svc
    if not out and names is None:
        _missing(SERVICES)
    return out
