#!/usr/bin/env python3
"""TSRG throughput next to AES-256-GCM from the same library, on this machine.

Prints, side by side: encryption and decryption MB/s of TSRG (off-line format) and of
AES-256-GCM (``cryptography``'s AESGCM) for 1 KB, 1 MB and 10 MB, the ratio TSRG/GCM, and
keystream MB/s of the modern generator and of the paper profile.

Large buffers are dominated by how the C allocator hands out memory: by default glibc maps
fresh pages for every buffer above its threshold, and the page faults cost more than the
cipher.  The script therefore runs twice, in child processes: with glibc's defaults, and
with a warmed heap (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ raised, as a long-running
gateway ends up).  Usage: python bench/tsrg_speed.py [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

SIZES = [(1024, "1 KB"), (1 << 20, "1 MB"), (10 << 20, "10 MB")]
WARM = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def _time(fn: object, nbytes: int, budget: float) -> float:
    """Best-of-3 MB/s over batches of about ``budget`` seconds."""
    fn()  # type: ignore[operator]
    reps = 1
    while True:
        t = time.perf_counter()
        for _ in range(reps):
            fn()  # type: ignore[operator]
        if time.perf_counter() - t > budget / 10 or reps > 1 << 16:
            break
        reps *= 2
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            fn()  # type: ignore[operator]
        best = max(best, nbytes * reps / (time.perf_counter() - t) / 1e6)
    return best


def child(budget: float) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from tsrg import TsrgCipher, TsrgRandom
    from tsrg.paper import PaperGenerator

    key, aad = os.urandom(32), b"associated data"
    tsrg = TsrgCipher()
    gcm = AESGCM(key)
    print(f"{'size':>6} | {'TSRG enc':>9} {'GCM enc':>9} {'ratio':>6} | "
          f"{'TSRG dec':>9} {'GCM dec':>9} {'ratio':>6}   (MB/s)")
    for size, label in SIZES:
        data = os.urandom(size)
        blob = tsrg.encrypt(key, data, aad)
        sealed = gcm.encrypt(b"\0" * 12, data, aad)
        assert tsrg.decrypt(key, blob, aad) == data
        te = _time(lambda d=data: tsrg.encrypt(key, d, aad), size, budget)
        ge = _time(lambda d=data: gcm.encrypt(b"\0" * 12, d, aad), size, budget)
        td = _time(lambda b=blob: tsrg.decrypt(key, b, aad), size, budget)
        gd = _time(lambda s=sealed: gcm.decrypt(b"\0" * 12, s, aad), size, budget)
        print(f"{label:>6} | {te:9.0f} {ge:9.0f} {te / ge:6.2f} | "
              f"{td:9.0f} {gd:9.0f} {td / gd:6.2f}")
    rnd = TsrgRandom()
    ks = _time(lambda: rnd.stream(10 << 20), 10 << 20, budget)
    small = _time(lambda: rnd.read(32), 32, budget)
    paper = PaperGenerator(os.urandom(16))
    pks = _time(lambda: paper.read(1 << 20), 1 << 20, budget)
    print(f"keystream: modern {ks:.0f} MB/s (10 MB requests), {small * 1e6 / 32:.0f} "
          f"requests/s of 32 bytes; paper (IDEA + Lehmer, unsafe) {pks:.1f} MB/s")


def main() -> None:
    if "--child" in sys.argv:
        child(float(sys.argv[sys.argv.index("--child") + 1]))
        return
    budget = 0.3 if "--quick" in sys.argv else 1.5
    print(f"TSRG vs AES-256-GCM on {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    for title, extra in (("glibc default allocator", {}), ("warmed heap", WARM)):
        print(f"\n== {title} ==", flush=True)
        env = {**os.environ, **extra}
        subprocess.run([sys.executable, __file__, "--child", str(budget)], env=env,
                       check=True)


if __name__ == "__main__":
    main()
