#!/usr/bin/env python3
"""Time stamps per second: the TSS over HTTP (keep-alive) next to the raw in-process rate.

Starts a real `tcms serve tss` (SQLite in a temporary directory, or PostgreSQL with
--pg URL), sends RFC 3161 queries over keep-alive connections (one client, then 16
concurrent ones), and prints the rate next to (a) the raw ECDSA P-256 signing rate of
the same TSA key and (b) whole-token issuance in process (no HTTP, no SQL).
Usage: python bench/tss_speed.py [--seconds 5] [--pg postgresql://.../DEDICATED_DB]
(--pg creates the TSS tables in that database: give it one of its own.)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tcms.timestamp import make_request, token_from_reply
from tss import credentials
from tss.authority import TimeStampAuthority

PASS = "bench-passphrase-0"
QUERY = {"Content-Type": "application/timestamp-query"}


def rate(fn: object, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()  # type: ignore[operator]
        n += 1
    return n / (time.perf_counter() - t0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def concurrent(url: str, queries: list[bytes], seconds: float, workers: int) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=workers)) as c:
        async def worker(i: int) -> None:
            nonlocal done
            while time.perf_counter() < stop:
                r = await c.post(url, content=queries[(done + i) % len(queries)], headers=QUERY)
                assert r.status_code == 200
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(workers)))
        return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--pg", default=None, help="PostgreSQL URL for the TSS log")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tss-bench-"))
    creds = credentials.init(work / "keys", "Bench TSA", PASS.encode(),
                             now=dt.datetime.now(dt.UTC))
    tsa = TimeStampAuthority(creds)
    queries = [make_request(hashlib.sha256(os.urandom(8)).digest())[0] for _ in range(64)]

    digest = hashlib.sha256(b"x").digest()
    sign_rate = rate(lambda: creds.tsa_key.sign(digest, ec.ECDSA(hashes.SHA256())), a.seconds)
    req = tsa.parse_request(queries[0])
    now = dt.datetime.now(dt.UTC)
    issue_rate = rate(lambda: tsa.issue(req, now=now, serial=1), a.seconds)

    port = free_port()
    db = a.pg or f"sqlite:///{work / 'tss.db'}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TCMS_")},
           "TCMS_KEYS__DIR": str(work / "keys"), "TCMS_KEYS__PASSPHRASE": PASS,
           "TCMS_DATABASE__URL": db, "TCMS_TSS__LISTEN": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "tcms.cli", "serve", "tss"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/tsa"
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        with httpx.Client() as client:  # one keep-alive connection
            def one() -> None:
                r = client.post(url, content=queries[0], headers=QUERY)
                token_from_reply(r.content)
            one()
            http1 = rate(one, a.seconds)
        http16 = asyncio.run(concurrent(url, queries, a.seconds, 16))
    finally:
        proc.terminate()
        proc.wait()
    store = "PostgreSQL" if a.pg else "SQLite"
    print(f"TSS on this machine ({os.cpu_count()} cores), ECDSA P-256 TSA key, log in {store}")
    print(f"  raw signing, in process        {sign_rate:9.0f} signatures/s")
    print(f"  whole token, in process        {issue_rate:9.0f} tokens/s "
          f"({issue_rate / sign_rate:.3f} of raw signing)")
    print(f"  HTTP keep-alive, 1 client      {http1:9.0f} tokens/s "
          f"({http1 / sign_rate:.4f} of raw signing)")
    print(f"  HTTP keep-alive, 16 clients    {http16:9.0f} tokens/s "
          f"({http16 / sign_rate:.4f} of raw signing)")


if __name__ == "__main__":
    main()
