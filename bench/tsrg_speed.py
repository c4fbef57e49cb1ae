#!/usr/bin/env python3
"""TSRG throughput next to AES-256-GCM from the same library, on this machine.

Prints, side by side: encryption and decryption MB/s of TSRG (off-line format) and of
AES-256-GCM (``cryptography``'s AESGCM, one key reused: its fastest case) for 1 KB, 1 MB
and 10 MB, and the ratio TSRG/GCM, for both TSRG entry points: ``encrypt``/``decrypt``,
which return ``bytes`` (what the protocol stores; one copy of the result), and
``encrypt_buffer``/``decrypt_buffer``, which hand over the buffer they wrote (no copy, as
AESGCM itself).  A third row per size compares ``encrypt``/``decrypt`` with the protocol's
other E_k, ``aes256gcm`` (a fresh key per message, a random nonce, ``bytes`` out).  A
"floor" row times the least any E_k with a per-message derived key must do (one HKDF, one
AESGCM under the derived key): the ceiling of the ratio for small messages.  Then
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

    from tcms.cipher import AesGcmCipher
    from tsrg import TsrgCipher, TsrgRandom
    from tsrg.paper import PaperGenerator

    key, aad, nonce = os.urandom(32), b"associated data", b"\0" * 12
    tsrg = TsrgCipher()
    gcm = AESGCM(key)
    plain_gcm = AesGcmCipher()
    print(f"{'size':>6} {'':>6} | {'TSRG enc':>9} {'GCM enc':>9} {'ratio':>6} | "
          f"{'TSRG dec':>9} {'GCM dec':>9} {'ratio':>6}   (MB/s)")
    for size, label in SIZES:
        data = os.urandom(size)
        blob = tsrg.encrypt(key, data, aad)
        sealed = gcm.encrypt(nonce, data, aad)
        assert tsrg.decrypt(key, blob, aad) == data
        assert tsrg.decrypt_buffer(key, tsrg.encrypt_buffer(key, data, aad), aad) == data
        ge = _time(lambda d=data: gcm.encrypt(nonce, d, aad), size, budget)
        gd = _time(lambda s=sealed: gcm.decrypt(nonce, s, aad), size, budget)
        for api, enc, dec in (("bytes", tsrg.encrypt, tsrg.decrypt),
                              ("buffer", tsrg.encrypt_buffer, tsrg.decrypt_buffer)):
            te = _time(lambda d=data, f=enc: f(key, d, aad), size, budget)
            td = _time(lambda b=blob, f=dec: f(key, b, aad), size, budget)
            print(f"{label:>6} {api:>6} | {te:9.0f} {ge:9.0f} {te / ge:6.2f} | "
                  f"{td:9.0f} {gd:9.0f} {td / gd:6.2f}", flush=True)
        # the protocol's other E_k: AES-256-GCM with a random nonce, bytes out
        ab = plain_gcm.encrypt(key, data, aad)
        pe = _time(lambda d=data: plain_gcm.encrypt(key, d, aad), size, budget)
        pd = _time(lambda b=ab: plain_gcm.decrypt(key, b, aad), size, budget)
        te = _time(lambda d=data: tsrg.encrypt(key, d, aad), size, budget)
        td = _time(lambda b=blob: tsrg.decrypt(key, b, aad), size, budget)
        print(f"{label:>6} {'E_k':>6} | {te:9.0f} {pe:9.0f} {te / pe:6.2f} | "
              f"{td:9.0f} {pd:9.0f} {td / pd:6.2f}   (vs the aes256gcm E_k)", flush=True)
        # the least any E_k with a per-message derived key must do: one KDF call and one
        # AES-GCM call under the derived key (no layout, no padding, no second stage)
        fe = _time(lambda d=data: _floor(key, d, aad), size, budget)
        print(f"{label:>6} {'floor':>6} | {fe:9.0f} {ge:9.0f} {fe / ge:6.2f} |"
              f"{'':>28}   (HKDF + AESGCM under the derived key)", flush=True)
    rnd = TsrgRandom()
    buf = bytearray(10 << 20)
    ks = _time(lambda: rnd.read_into(buf), len(buf), budget)
    small = _time(lambda: rnd.read(32), 32, budget)
    paper = PaperGenerator(os.urandom(16))
    pks = _time(lambda: paper.read(1 << 20), 1 << 20, budget)
    print(f"keystream: modern {ks:.0f} MB/s (10 MB requests into a buffer), "
          f"{small * 1e6 / 32:.0f} requests/s of 32 bytes; "
          f"paper (IDEA + Lehmer, unsafe) {pks:.1f} MB/s")


def _floor(key: bytes, data: bytes, aad: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from tsrg.generator import hkdf

    nonce = os.urandom(16)
    return AESGCM(hkdf(key, nonce, b"floor")).encrypt(nonce[:12], data, aad)


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
