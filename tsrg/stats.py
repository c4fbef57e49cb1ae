"""Statistical batteries written by others, run on TSRG output.

- NIST SP 800-22 through ``sp80022suite`` (NIST's C code; one byte per bit; multi-p tests
  return their minimum p, which is corrected for the number of sub-tests).  A sequence
  passes a test at p >= ALPHA.
- Debian's ``dieharder`` reading raw bytes from standard input (``-g 200``).

Sources: the modern and paper profiles, each stage on its own, and two controls that make
the harness trustworthy: ChaCha20 (must pass) and raw MINSTD words (must fail).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tsrg import generator, paper

ALPHA = 0.01
Source = Callable[[int], bytes]

_BITS = [bytes((b >> (7 - i)) & 1 for i in range(8)) for b in range(256)]


def to_bits(data: bytes) -> bytes:
    """One byte (0 or 1) per bit, most significant bit first, as sp80022suite expects."""
    return b"".join(_BITS[b] for b in data)


def source(name: str, seed: bytes = b"tcms-tsrg-battery-seed-000000000") -> Source:
    """A byte source by name: modern | modern-stage1 | modern-stage2 | paper |
    paper-stage1 | paper-stage2 | chacha20 | minstd."""
    seed = seed.ljust(32, b"\0")[:32]
    if name == "modern":
        return generator.TsrgRandom.seeded(seed).stream
    if name == "modern-stage1":
        rnd = generator.Randomizer(generator.hkdf(seed, b"", b"TSRG1/random"))
        return rnd.read
    if name == "modern-stage2":
        ctr = Cipher(algorithms.AES(generator.hkdf(seed, b"", b"TSRG1/stage2")),
                     modes.CTR(bytes(16))).encryptor()
        return lambda n: bytes(ctr.update(bytes(n)))
    if name == "paper":
        return paper.PaperGenerator(seed[:16], seed[16:24]).read
    if name == "paper-stage1":
        return paper.IdeaSpecialOfb(seed[:16], seed[16:24]).read
    if name in ("paper-stage2", "minstd"):
        state = {"x": int.from_bytes(seed[:4], "big") % paper.LEHMER_M or 1}

        def lehmer(n: int) -> bytes:
            words = paper.lehmer_words(state["x"], (n + 3) // 4)
            state["x"] = words[-1]
            return b"".join(w.to_bytes(4, "big") for w in words)[:n]

        return lehmer
    if name == "chacha20":
        enc = Cipher(algorithms.ChaCha20(seed, bytes(16)), None).encryptor()
        return lambda n: bytes(enc.update(bytes(n)))
    raise ValueError(f"unknown source {name}")


SOURCES = ("modern", "modern-stage1", "modern-stage2", "paper", "paper-stage1",
           "paper-stage2", "chacha20", "minstd")


# --- NIST SP 800-22 --------------------------------------------------------------------------

# (name, callable taking the bit string) with NIST's recommended parameters for 10**6 bits.
def _nist_tests() -> list[tuple[str, Callable[[bytes], float]]]:
    import sp80022suite as s  # type: ignore[import-not-found]

    return [
        ("frequency", s.frequency),
        ("block_frequency", lambda b: s.block_frequency(128, b)),
        ("runs", s.runs),
        ("longest_run", s.longest_run_of_ones),
        ("rank", s.rank),
        ("dft", s.discrete_fourier_transform),
        ("non_overlapping_template", lambda b: s.non_overlapping_template_matchings(9, b)),
        ("overlapping_template", lambda b: s.overlapping_template_matchings(9, b)),
        ("universal", s.universal),
        ("approximate_entropy", lambda b: s.approximate_entropy(10, b)),
        ("serial", lambda b: s.serial(16, b)),
        ("cumulative_sums", s.cumulative_sums),
        ("linear_complexity", lambda b: s.linear_complexity(500, b)),
    ]


# Tests that report the minimum of k p-values (sp80022suite): judged after Sidak's correction,
# p = 1 - (1 - min_p) ** k, so that each test keeps the level ALPHA.
SUBTESTS = {"non_overlapping_template": 148, "serial": 2, "cumulative_sums": 2}

QUICK = ("frequency", "block_frequency", "runs", "longest_run", "rank", "dft",
         "approximate_entropy", "serial", "cumulative_sums")


@dataclass
class NistResult:
    test: str
    sequences: int
    passed: int
    min_p: float

    @property
    def proportion(self) -> float:
        return self.passed / self.sequences if self.sequences else 0.0

    def acceptable(self) -> bool:
        """NIST's proportion criterion: within 3 sigma of 1 - ALPHA (for >= 10 sequences,
        or all passing for fewer).  A test that ran on no sequence is not acceptable."""
        n = self.sequences
        if n == 0:
            return False
        if n < 10:
            return self.passed == n
        p_hat = 1 - ALPHA
        return bool(self.proportion >= p_hat - 3 * (p_hat * (1 - p_hat) / n) ** 0.5)


def aperiodic_templates(m: int) -> list[tuple[int, ...]]:
    """The binary words of length m that overlap no shift of themselves, in lexicographic
    order: the contents of NIST's templates/template<m> (148 words for m = 9)."""
    return [bits for bits in itertools.product((0, 1), repeat=m)
            if all(bits[:k] != bits[m - k:] for k in range(1, m))]


@contextlib.contextmanager
def _templates_dir(m: int = 9) -> Iterator[None]:
    """sp80022suite reads ``templates/template<m>`` from the working directory (NIST's
    files are not in the package): write it to a temporary directory and work there."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "templates").mkdir()
        (Path(tmp) / "templates" / f"template{m}").write_text(
            "\n".join(" ".join(map(str, t)) for t in aperiodic_templates(m)) + "\n")
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


def nist(src: Source, sequences: int, bits: int = 1_000_000,
         tests: tuple[str, ...] | None = None,
         progress: Callable[[int], None] | None = None) -> list[NistResult]:
    chosen = [(n, f) for n, f in _nist_tests() if tests is None or n in tests]
    results = {n: NistResult(n, 0, 0, 1.0) for n, _ in chosen}
    with _templates_dir():
        _run_nist(src, sequences, bits, chosen, results, progress)
    return list(results.values())


def _run_nist(src: Source, sequences: int, bits: int,
              chosen: list[tuple[str, Callable[[bytes], float]]],
              results: dict[str, NistResult],
              progress: Callable[[int], None] | None) -> None:
    for i in range(sequences):
        seq = to_bits(src(bits // 8))
        for name, fn in chosen:
            try:
                p = 1 - (1 - float(fn(seq))) ** SUBTESTS.get(name, 1)
            except Exception:  # noqa: S112 - "insufficient cycles": the test does not apply
                continue
            r = results[name]
            r.sequences += 1
            r.passed += p >= ALPHA
            r.min_p = min(r.min_p, p)
        if progress:
            progress(i + 1)


# --- dieharder -------------------------------------------------------------------------------


@dataclass
class DieharderResult:
    test: str
    ntup: int
    p: float
    assessment: str  # PASSED | WEAK | FAILED


def dieharder_path() -> str:
    path = shutil.which("dieharder")
    if path is None:
        raise RuntimeError("dieharder is not installed (Debian: apt-get install dieharder)")
    return path


_ROW = re.compile(r"^\s*(\S+)\|\s*(\d+)\|\s*\d+\|\s*\d+\|([0-9.]+)\|\s*(PASSED|WEAK|FAILED)")


def dieharder(src: Source, test: int, *, psamples: int | None = None,
              tsamples: int | None = None, timeout: float = 1800) -> tuple[list[DieharderResult],
                                                                           int]:
    """Run one dieharder test on raw bytes from ``src`` streamed to its stdin.
    Returns the result rows and the number of bytes fed to it (dieharder reads what it
    needs; at most about one 1 MiB chunk per test goes unread)."""
    cmd = [dieharder_path(), "-g", "200", "-d", str(test)]
    if test == 201:
        cmd += ["-n", "2"]  # rgb_minimum_distance alone gives a false failure
    if psamples:
        cmd += ["-p", str(psamples)]
    if tsamples:
        cmd += ["-t", str(tsamples)]
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    sent = [0]

    def feed() -> None:
        assert proc.stdin is not None
        try:
            while True:
                chunk = src(1 << 20)
                proc.stdin.write(chunk)
                sent[0] += len(chunk)
        except (BrokenPipeError, ValueError, OSError):
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    assert proc.stdout is not None
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        out = proc.stdout.read()  # not communicate(): it would close our stdin feed
        proc.wait()
    finally:
        timer.cancel()
        if proc.stdin:
            with contextlib.suppress(OSError):
                proc.stdin.close()
    rows = []
    for line in out.decode(errors="replace").splitlines():
        m = _ROW.match(line)
        if m:
            rows.append(DieharderResult(m.group(1), int(m.group(2)), float(m.group(3)),
                                        m.group(4)))
    return rows, sent[0]


def msb_bias(data: bytes) -> list[float]:
    """For 32-bit big-endian words: the frequency of each of the top four bits (0.5 ideal)."""
    n = len(data) // 4
    counts = [0.0, 0.0, 0.0, 0.0]
    for i in range(0, n * 4, 4):
        b = data[i]
        for k in range(4):
            counts[k] += (b >> (7 - k)) & 1
    return [c / n for c in counts] if n else counts


