#!/usr/bin/env python3
"""Statistical quality of TSRG output, measured with batteries nobody here wrote.

- dieharder (Debian package) on raw bytes from stdin, a selection of its tests, on the
  modern profile until at least --mb megabytes have been consumed (default 100);
- NIST SP 800-22 (sp80022suite: NIST's C code) on --nist-sequences sequences of 10**6 bits
  of modern output (default 100), with NIST's proportion criterion per test;
- the same batteries, shorter, on each stage of both profiles and on two controls
  (ChaCha20 must pass, raw MINSTD must fail), and the frequency of the top bits of the
  32-bit output words: the published weakness of the paper profile's Lehmer stage.

Usage: python bench/tsrg_quality.py [--mb 100] [--nist-sequences 100] [--quick]
Needs: apt-get install dieharder; pip install sp80022suite (both in .ci/run / dev extras).
"""

from __future__ import annotations

import argparse
import sys
import time

from tsrg import stats

MODERN_DIEHARDER = [0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 15, 16, 17, 100, 101, 102, 201,
                    202, 203]
SHORT_DIEHARDER = [0, 15, 100, 101]


def say(text: str) -> None:
    print(text, flush=True)


def run_dieharder(name: str, tests: list[int], min_bytes: int = 0, short: bool = False) -> bool:
    src = stats.source(name)
    total = 0
    failed = weak = count = 0
    t0 = time.time()
    for test in tests:
        rows, used = stats.dieharder(src, test, psamples=20 if short else None)
        total += used
        for r in rows:
            count += 1
            failed += r.assessment == "FAILED"
            weak += r.assessment == "WEAK"
            if not short or r.assessment != "PASSED":
                say(f"    {r.test:24s} ntup={r.ntup:<3d} p={r.p:.6f} {r.assessment}")
    while total < min_bytes:  # repeat the cheap tests until enough output was consumed
        rows, used = stats.dieharder(src, 100)
        total += used
        for r in rows:
            count += 1
            failed += r.assessment == "FAILED"
            weak += r.assessment == "WEAK"
    say(f"  dieharder {name}: {count} results, {failed} FAILED, {weak} WEAK, "
        f"{total / 1e6:.0f} MB fed to dieharder, {time.time() - t0:.0f} s")
    return failed == 0


def run_nist(name: str, sequences: int, tests: tuple[str, ...] | None = None) -> bool:
    t0 = time.time()

    def progress(i: int) -> None:
        if i % 20 == 0 or i == sequences:
            print(f"\r  NIST {name}: {i}/{sequences} sequences", end="", flush=True)

    results = stats.nist(stats.source(name), sequences, tests=tests, progress=progress)
    print()
    ok = True
    for r in results:
        good = r.acceptable()
        ok &= good
        verdict = "ok" if good else ("did not run" if r.sequences == 0 else "REJECTED")
        say(f"    {r.test:26s} {r.passed:4d}/{r.sequences:<4d} pass  min p={r.min_p:.2e}  "
            f"{verdict}")
    say(f"  NIST {name}: {'all tests acceptable' if ok else 'some tests rejected'} "
        f"({sequences * 125_000 / 1e6:.1f} MB, {time.time() - t0:.0f} s)")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--nist-sequences", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="a few minutes instead of ~15")
    a = ap.parse_args()
    if a.quick:
        a.mb, a.nist_sequences = min(a.mb, 100), min(a.nist_sequences, 20)
    verdict: dict[str, bool] = {}

    say(f"== modern profile: dieharder on >= {a.mb} MB ==")
    tests = SHORT_DIEHARDER if a.quick else MODERN_DIEHARDER
    verdict["modern dieharder"] = run_dieharder("modern", tests, a.mb * 1_000_000)
    say(f"== modern profile: NIST SP 800-22, {a.nist_sequences} x 10^6 bits ==")
    verdict["modern NIST"] = run_nist("modern", a.nist_sequences)

    say("== each stage, both profiles, and the controls (short runs) ==")
    for name in ("modern-stage1", "modern-stage2", "paper-stage1", "paper-stage2", "paper",
                 "chacha20", "minstd"):
        say(f"-- {name}")
        verdict[f"{name} NIST"] = run_nist(name, 10, stats.QUICK)
        verdict[f"{name} dieharder"] = run_dieharder(name, SHORT_DIEHARDER, short=True)

    say("== top bits of 32-bit output words (frequency of 1; 0.5 is ideal) ==")
    for name in ("modern", "paper", "paper-stage2", "minstd"):
        bias = stats.msb_bias(stats.source(name)(4_000_000))
        say(f"  {name:14s} bit31={bias[0]:.4f} bit30={bias[1]:.4f} bit29={bias[2]:.4f} "
            f"bit28={bias[3]:.4f}")

    say("== summary ==")
    expected_bad = {"paper-stage2", "paper", "minstd"}
    sound = True
    for key, passed in verdict.items():
        source = key.split()[0]
        expect = source not in expected_bad
        mark = "as expected" if passed == expect else "UNEXPECTED"
        sound &= passed == expect
        say(f"  {key:26s} {'passes' if passed else 'fails':7s} {mark}")
    say("modern passes, the paper profile's Lehmer stage fails: "
        + ("confirmed" if sound else "NOT confirmed"))
    return 0 if sound else 1


if __name__ == "__main__":
    sys.exit(main())
