"""Running entry points: inputs from (seed, entry point, index), findings with reproducers.

Input ``i`` of entry point ``E`` under seed ``S`` is made by a ``random.Random`` seeded with
``"S:E:i"``: the first inputs of a run from index 0 are the seeds themselves, the others a
seed mutated (mutate.py).  The seeds hold fresh keys, nonces and signatures each process,
so a finding is reported with its input's bytes (hex): ``bench/fuzz.py --only E --replay
HEX`` runs it again.  An exception outside the entry point's expected set is a finding;
an input that takes longer than ``SLOW`` seconds is reported as slow."""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from .mutate import mutate
from .targets import EntryPoint

SLOW = 1.0  # seconds: an input slower than this is listed
HEX_SHOWN = 8192  # hex digits of an input shown in a report (the whole of most inputs)


@dataclass
class Finding:
    entry: str
    seed: int
    index: int
    data: bytes
    error: str  # "Type: message"
    where: str  # file:line where it was raised
    trace: str

    @property
    def key(self) -> tuple[str, str]:
        return self.error.split(":", 1)[0], self.where

    def reproducer(self) -> str:
        shown = self.data.hex()
        more = "" if len(shown) <= HEX_SHOWN else f"... ({len(self.data)} bytes in all)"
        return (f"entry point {self.entry}, seed {self.seed}, input {self.index}: "
                f"{self.error[:300]}\n  raised at {self.where}\n"
                f"  replay: bench/fuzz.py --only {self.entry} --replay <hex>\n"
                f"  input ({len(self.data)} bytes), hex: {shown[:HEX_SHOWN]}{more}")


@dataclass
class Report:
    entry: str
    inputs: int = 0
    unexpected: int = 0
    expected: int = 0  # inputs refused with a named error
    seconds: float = 0.0
    findings: dict[tuple[str, str], list[Finding]] = field(default_factory=dict)
    slow: list[tuple[float, int, bytes]] = field(default_factory=list)
    slowest: float = 0.0

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    def add(self, finding: Finding) -> None:
        self.unexpected += 1
        self.findings.setdefault(finding.key, []).append(finding)

    def describe(self) -> str:
        lines = [f"{self.entry}: {self.inputs} inputs, {self.unexpected} unexpected "
                 f"exceptions ({len(self.findings)} distinct), {len(self.slow)} slow"]
        for found in self.findings.values():
            lines.append(f"- {len(found)} x {found[0].reproducer()}")
        for seconds, index, data in self.slow[:5]:
            lines.append(f"- slow: input {index} took {seconds:.2f} s ({len(data)} bytes, "
                         f"hex {data.hex()[:200]}...)")
        return "\n".join(lines)


def input_at(entry: EntryPoint, seeds: list[bytes], ctx: object, seed: int,
             index: int) -> bytes:
    if index < len(seeds):
        return seeds[index]
    r = random.Random(f"{seed}:{entry.name}:{index}")
    return mutate(r, r.choice(seeds), ctx, entry.structure, entry.prefix)  # type: ignore[arg-type]


def _where(exc: BaseException) -> str:
    """The project's (or a library's) frame that raised, not the harness's."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/tests/fuzzing/" not in f.filename]
    if not frames:
        return "?"
    last = frames[-1]
    return f"{_short(last.filename)}:{last.lineno} ({last.name})"


def _short(path: str) -> str:
    for root in ("/site-packages/", "/wt-fuzz/", "/main/"):
        if root in path:
            return path.split(root, 1)[1]
    return path


def check(entry: EntryPoint, target: Callable[[bytes], object], data: bytes, seed: int,
          index: int) -> Finding | None:
    """Run one input; the finding if it raised something unexpected."""
    try:
        target(data)
    except entry.expected:
        raise
    except Exception as exc:
        text = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
        return Finding(entry.name, seed, index, data, text, _where(exc),
                       "".join(traceback.format_exception(exc))[-4000:])
    return None


def run(entry: EntryPoint, inputs: int, seed: int, *, start: int = 0,
        progress: Callable[[Report], None] | None = None, every: float = 5.0) -> Report:
    """``inputs`` inputs of ``entry`` from index ``start``."""
    seeds = entry.seeds()
    ctx = entry.context(seeds)
    report = Report(entry.name)
    harness = entry.open()
    began = last = time.perf_counter()
    try:
        for index in range(start, start + inputs):
            data = input_at(entry, seeds, ctx, seed, index)
            t = time.perf_counter()
            try:
                finding = check(entry, harness, data, seed, index)
            except entry.expected:
                finding = None
                report.expected += 1
            took = time.perf_counter() - t
            report.inputs += 1
            if finding is not None:
                report.add(finding)
            report.slowest = max(report.slowest, took)
            if took > SLOW:
                report.slow.append((took, index, data))
            if progress is not None and t - last > every:
                last = t
                report.seconds = t - began
                progress(report)
    finally:
        harness.close()
    report.seconds = time.perf_counter() - began
    return report


def replay(entry: EntryPoint, data: bytes) -> str:
    """Run one input and say what happened (with the traceback of an unexpected one)."""
    harness = entry.open()
    try:
        try:
            finding = check(entry, harness, data, 0, 0)
        except entry.expected as exc:
            return f"expected: {type(exc).__name__}: {exc}"
    finally:
        harness.close()
    return "no exception" if finding is None else finding.trace
