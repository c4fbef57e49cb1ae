"""The ``tcms`` root command.  Its commands, the core's and the packages'
(:mod:`tcms.cli.registry`), are imported only when they are used."""

from __future__ import annotations

import logging

import click

from tcms.cli import registry

# the core's own commands
CORE = {"config": "tcms.cli.config_cmd:config_group", "keys": "tcms.cli.keys:keys",
        "verify": "tcms.cli.verify:verify", "db": "tcms.cli.db:db", "tx": "tcms.cli.tx:tx",
        "serve": "tcms.cli.serve:serve"}


class _Root(click.Group):
    """The root group: a command's module is imported when the command is asked for, with
    the subcommands other packages add to it (``GROUP.NAME`` entry points)."""

    _sources: dict[str, str] | None = None

    def sources(self) -> dict[str, str]:
        if self._sources is None:
            self._sources = {**registry.command_sources(), **CORE}
        return self._sources

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({n for n in self.sources() if "." not in n} | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            source = self.sources().get(cmd_name)
            if source is None:
                return None
            cmd = registry.load_object(source)
            for name, sub in sorted(self.sources().items()):
                parent, _, child = name.partition(".")
                if parent == cmd_name and child and isinstance(cmd, click.Group):
                    cmd.add_command(registry.load_object(sub), child)
            self.add_command(cmd, cmd_name)
        return self.commands[cmd_name]


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
              envvar="TCMS_CONFIG", help="TOML configuration file (env TCMS_CONFIG).")
@click.version_option(package_name="tcms")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """TCMS, the certified-mail gateway: fair exchange of mail for a signed receipt."""
    ctx.ensure_object(dict)["config"] = config_path
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for chatty in ("mail.log", "aioimaplib"):  # aiosmtpd's and aioimaplib's per-line logs
        logging.getLogger(chatty).setLevel(logging.WARNING)
