"""The TSRG's commands (``tcms tsrg``): raw generator output for external test batteries."""

from __future__ import annotations

import sys

import click


@click.group()
def tsrg() -> None:
    """The TSRG generator: raw output for external test batteries."""


@tsrg.command("stream")
@click.option("--source", type=click.Choice(
    ["modern", "modern-stage1", "modern-stage2", "paper", "paper-stage1", "paper-stage2",
     "chacha20", "minstd"]), default="modern", show_default=True,
    help="Which generator or stage (paper-* and minstd are unsafe, for comparison).")
@click.option("--bytes", "nbytes", type=int, default=0,
              help="How many bytes (0: until the reader stops).")
@click.option("--seed", default="tcms-tsrg-battery-seed", show_default=True,
              help="Seed of the deterministic test mode.")
def tsrg_stream(source: str, nbytes: int, seed: str) -> None:
    """Write raw generator output to standard output, e.g.
    `tcms tsrg stream | dieharder -g 200 -d 100`."""
    from tsrg import stats

    src = stats.source(source, seed.encode())
    out = sys.stdout.buffer
    left = nbytes
    try:
        while nbytes == 0 or left > 0:
            n = 1 << 20 if nbytes == 0 else min(1 << 20, left)
            out.write(src(n))
            left -= n
        out.flush()
    except BrokenPipeError:
        pass


