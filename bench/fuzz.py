#!/usr/bin/env python3
"""The fuzz campaign: every entry point that takes untrusted bytes (tests/fuzzing/targets.py),
fed valid inputs made by the project's own code and mutated (tests/fuzzing/mutate.py).

Prints, per entry point, the inputs run, the unexpected exceptions (anything outside the
named errors the entry point may raise), the rate and the inputs slower than 1 s; then a
reproducer (entry point, seed, index, the input's hex) for each distinct finding, and last
one line ``RESULT inputs=... unexpected=...``.  Exit status 1 if anything unexpected was
raised.  The inputs are spread over the entry points by their share (slow targets such as
the inbound handler with its SQLite store get fewer).

Usage: python bench/fuzz.py [--inputs 1000000] [--seed 11] [--only NAME ...] [--jobs 2]
       python bench/fuzz.py --list
       python bench/fuzz.py --only NAME --replay HEX|FILE    (run one input, show its traceback)
       python bench/fuzz.py ... --save DIR    (the inputs of findings and slow inputs as files)
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from fuzzing import campaign  # noqa: E402
from fuzzing.targets import BY_NAME, ENTRY_POINTS, EntryPoint  # noqa: E402

# tests/conftest.py turns SIGTERM and SIGHUP into KeyboardInterrupt, for pytest's teardown;
# here that would leave the pool waiting for a worker that died: a signal ends the campaign
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_DFL)

CHUNK = 25_000  # inputs per task: a large entry point is run in pieces on all jobs


def allot(entries: list[EntryPoint], total: int) -> dict[str, int]:
    """``total`` inputs spread by share; every entry point gets at least one."""
    weight = sum(e.share for e in entries)
    counts = {e.name: max(1, int(total * e.share / weight)) for e in entries}
    counts[entries[0].name] += total - sum(counts.values())
    return counts


def task(args: tuple[str, int, int, int]) -> campaign.Report:
    name, start, n, seed = args
    logging.disable(logging.CRITICAL)

    def progress(r: campaign.Report) -> None:
        print(f"  [{name} from {start}] {r.inputs}/{n} inputs, {r.unexpected} unexpected, "
              f"{r.rate:.0f}/s", flush=True)

    return campaign.run(BY_NAME[name], n, seed, start=start, progress=progress, every=30)


def merge(reports: list[campaign.Report]) -> campaign.Report:
    out = campaign.Report(reports[0].entry)
    for r in reports:
        out.inputs += r.inputs
        out.unexpected += r.unexpected
        out.expected += r.expected
        out.seconds += r.seconds
        out.slowest = max(out.slowest, r.slowest)
        out.slow += r.slow
        for key, found in r.findings.items():
            out.findings.setdefault(key, []).extend(found)
    return out


def save(directory: Path, reports: list[campaign.Report]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for r in reports:
        for found in r.findings.values():
            for f in found[:10]:
                (directory / f"{r.entry}-{f.index}.unexpected").write_bytes(f.data)
        for _, index, data in r.slow[:10]:
            (directory / f"{r.entry}-{index}.slow").write_bytes(data)
    print(f"inputs written to {directory}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these entry points only")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--list", action="store_true", help="list the entry points")
    ap.add_argument("--replay", metavar="HEX|FILE",
                    help="run one input (with one --only NAME)")
    ap.add_argument("--save", metavar="DIR", type=Path,
                    help="write every finding's and every slow input's bytes there")
    a = ap.parse_args()
    logging.disable(logging.CRITICAL)
    if a.list:
        for e in ENTRY_POINTS:
            print(f"{e.name:22} share {e.share:<4} expected: "
                  f"{', '.join(x.__name__ for x in e.expected) or '(none)'}\n"
                  f"{'':22} {e.doc}")
        return 0
    unknown = [n for n in a.only or [] if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown entry point(s): {', '.join(unknown)} (see --list)")
    if a.replay is not None:
        if not a.only or len(a.only) != 1:
            ap.error("--replay needs exactly one --only NAME")
        path = Path(a.replay)
        data = path.read_bytes() if path.is_file() else bytes.fromhex(a.replay)
        print(campaign.replay(BY_NAME[a.only[0]], data))
        return 0
    entries = [BY_NAME[n] for n in a.only] if a.only else list(ENTRY_POINTS)
    counts = allot(entries, a.inputs)
    tasks = [(e.name, start, min(CHUNK, counts[e.name] - start), a.seed)
             for e in entries for start in range(0, counts[e.name], CHUNK)]
    tasks.sort(key=lambda t: -t[2] / BY_NAME[t[0]].share)  # the long ones first
    print(f"fuzz campaign: {a.inputs} inputs over {len(entries)} entry points, seed {a.seed}, "
          f"{a.jobs} job(s)", flush=True)
    began = time.monotonic()
    if a.jobs > 1:
        with multiprocessing.get_context("fork").Pool(a.jobs, maxtasksperchild=1) as pool:
            results = pool.map(task, tasks, chunksize=1)
    else:
        results = [task(t) for t in tasks]
    by_entry: dict[str, list[campaign.Report]] = {}
    for r in results:
        by_entry.setdefault(r.entry, []).append(r)
    reports = [merge(by_entry[e.name]) for e in entries]
    print(f"\n{'entry point':24} {'inputs':>9} {'unexpected':>10} {'refused':>9} "
          f"{'inputs/s':>9} {'slow':>5} {'slowest s':>9}")
    for r in reports:
        print(f"{r.entry:24} {r.inputs:9d} {r.unexpected:10d} {r.expected:9d} {r.rate:9.0f} "
              f"{len(r.slow):5d} {r.slowest:9.2f}")
    for r in reports:
        if r.findings or r.slow:
            print("\n" + r.describe())
    if a.save:
        save(a.save, reports)
    inputs = sum(r.inputs for r in reports)
    unexpected = sum(r.unexpected for r in reports)
    print(f"\nwall time {time.monotonic() - began:.0f} s; "
          f"slow inputs (> {campaign.SLOW:.0f} s): {sum(len(r.slow) for r in reports)}")
    print(f"RESULT inputs={inputs} unexpected={unexpected}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
