"""What a package adds to the ``tcms`` command line: its commands and the services that
``tcms serve`` can run.  Packages add themselves at start-up through the ``tcms.plugins``
entry points (pyproject.toml): each names a function that takes the :class:`Registry`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import click

from tcms.config import Settings
from tcms.store import Store
from tcms.web import Listener

ENTRY_POINTS = "tcms.plugins"


def _always(settings: Settings) -> bool:
    return True


@dataclass(frozen=True)
class Service:
    """One thing ``tcms serve NAME`` runs: HTTP ``listeners`` served with the shared store,
    or a long-running coroutine (``run``).  ``in_all`` says whether ``tcms serve all``
    includes it under the given configuration."""

    name: str
    listeners: Callable[[Settings, Store], list[Listener]] | None = None
    run: Callable[[Settings], Awaitable[None]] | None = None
    in_all: Callable[[Settings], bool] = _always


@dataclass
class Registry:
    """The commands and services the installed packages contribute."""

    commands: list[click.Command] = field(default_factory=list)
    services: dict[str, Service] = field(default_factory=dict)

    def command(self, cmd: click.Command) -> None:
        self.commands.append(cmd)

    def service(self, svc: Service) -> None:
        if svc.name in self.services or svc.name == "all":
            raise ValueError(f"service {svc.name!r} registered twice")
        self.services[svc.name] = svc


def load() -> Registry:
    """Every installed package's contribution, in the entry points' name order."""
    reg = Registry()
    found = sorted(entry_points(group=ENTRY_POINTS), key=lambda e: e.name)
    if not found:
        click.echo(f"tcms: no package adds its commands: the {ENTRY_POINTS!r} entry points "
                   "are not installed (run `make setup`, or `pip install -e .` again after "
                   "pyproject.toml changed)", err=True)
    for ep in found:
        try:
            plugin = ep.load()
        except ImportError as exc:
            raise click.ClickException(f"the {ep.name!r} commands cannot be loaded "
                                       f"({ep.value}): {exc}") from None
        plugin(reg)
    return reg
