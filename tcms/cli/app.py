"""The ``tcms`` root command: the core's commands, then every installed package's
(:mod:`tcms.cli.registry`), loaded when the command line is first resolved."""

from __future__ import annotations

import logging

import click

from tcms.cli import registry


class _Root(click.Group):
    """The root group; it adds the packages' commands and ``serve`` on first use."""

    _loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        from tcms.cli.serve import serve_command

        reg = registry.load()
        for cmd in reg.commands:
            self.add_command(cmd)
        self.add_command(serve_command(reg.services))

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)


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


def _add_core_commands() -> None:
    from tcms.cli import config_cmd, db, keys, tx, verify

    for cmd in (config_cmd.config_group, keys.keys, verify.verify, db.db, tx.tx):
        main.add_command(cmd)


_add_core_commands()
