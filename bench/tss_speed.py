#!/usr/bin/env python3
"""Time stamps per second: the TSS over HTTP next to `openssl ts -reply`, in one run.

Starts a real `tcms serve tss` (SQLite in a temporary directory; with --pg also one on
PostgreSQL), sends RFC 3161 queries over keep-alive HTTP/1.1 connections (one client, then
16 concurrent ones) and prints the rates next to: the raw ECDSA P-256 signing rate of the
same TSA key, whole-token issuance in process (no HTTP, no SQL), and `openssl ts -reply`
issuing tokens with the same key and certificate, one process a token as that command
works (its serial file is its log).  Every reply is checked to be a granted
TimeStampResp; a sample of tokens is verified in full.

The HTTP client is a small asyncio protocol (keep-alive, one request at a time per
connection) so that the client, which shares the machine's cores with the server, costs
little next to it.  Numbers on a shared machine are noisy: compare rows of one run.
Usage: python bench/tss_speed.py [--seconds 5] [--pg postgresql://.../DEDICATED_DB]
(--pg creates the TSS tables in that database: give it one of its own.)
Ends with `RESULT tss_http_16=... [tss_http_16_pg=...] openssl_ts=... ratio=...`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tcms.timestamp import make_request, token_from_reply, verify_token
from tss import credentials
from tss.authority import POLICY_OID, TimeStampAuthority

PASS = "bench-passphrase-0"
GRANTED = b"\x30\x03\x02\x01\x00"  # PKIStatusInfo { granted } right after the outer header
LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


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


class Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a request, then its whole reply."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        m = LENGTH.search(self.buf, 0, end + 2)
        assert m and self.buf.startswith(b"HTTP/1.1 200"), bytes(self.buf[:200])
        size = int(m.group(1))
        if len(self.buf) >= end + 4 + size:
            body = bytes(self.buf[end + 4:end + 4 + size])
            del self.buf[:end + 4 + size]
            self.waiter.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))


async def clients(port: int, queries: list[bytes], seconds: float, n: int,
                  sample: list[tuple[bytes, bytes]]) -> float:
    loop = asyncio.get_running_loop()
    heads = [(f"POST /tsa HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
              f"Content-Type: application/timestamp-query\r\nContent-Length: {len(q)}\r\n\r\n"
              ).encode() + q for q in queries]
    done = 0
    stop = time.perf_counter() + seconds

    async def one(i: int) -> None:
        nonlocal done
        transport, proto = await loop.create_connection(Client, "127.0.0.1", port)
        k = i
        while time.perf_counter() < stop:
            proto.waiter = loop.create_future()
            transport.write(heads[k % len(heads)])
            body = await proto.waiter
            assert body[2:7] == GRANTED or body[3:8] == GRANTED or body[4:9] == GRANTED
            if len(sample) < 20:
                sample.append((queries[k % len(queries)], body))
            done += 1
            k += n
        transport.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return done / (time.perf_counter() - t0)


def openssl_rate(work: Path, query: Path, seconds: float) -> float:
    """`openssl ts -reply` with the TSA's key and certificate, one process a token."""
    keys = work / "keys"
    (work / "serial").write_text("01\n")
    (work / "openssl.cnf").write_text(f"""[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
serial = {work / 'serial'}
crypto_device = builtin
signer_digest = sha256
default_policy = {POLICY_OID}
digests = sha256, sha384, sha512
accuracy = secs:0, millisecs:500
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
""")
    cmd = ["openssl", "ts", "-reply", "-config", str(work / "openssl.cnf"), "-queryfile",
           str(query), "-signer", str(keys / credentials.FILES["cert"]), "-inkey",
           str(keys / credentials.FILES["key"]), "-passin", f"pass:{PASS}", "-out",
           str(work / "openssl.tsr")]

    def one() -> None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    one()
    token_from_reply((work / "openssl.tsr").read_bytes())
    return rate(one, seconds)


def serve(work: Path, db: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TCMS_")},
           "TCMS_KEYS__DIR": str(work / "keys"), "TCMS_KEYS__PASSPHRASE": PASS,
           "TCMS_DATABASE__URL": db, "TCMS_TSS__LISTEN": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "tcms.cli", "serve", "tss"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("tcms serve tss did not start")


def http_rates(work: Path, db: str, queries: list[bytes], seconds: float,
               tsa: TimeStampAuthority) -> tuple[float, float]:
    proc, port = serve(work, db)
    sample: list[tuple[bytes, bytes]] = []
    try:
        one = asyncio.run(clients(port, queries, seconds, 1, sample))
        many = asyncio.run(clients(port, queries, seconds, 16, sample))
    finally:
        proc.terminate()
        proc.wait()
    for query, reply in sample:  # the replies are real tokens over the queries' imprints
        from asn1crypto import tsp
        imprint = tsp.TimeStampReq.load(query)["message_imprint"]["hashed_message"].native
        verify_token(token_from_reply(reply), imprint, tsa.creds.ca_cert)
    return one, many


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--pg", default=None, help="PostgreSQL URL for a second TSS log")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tss-bench-"))
    creds = credentials.init(work / "keys", "Bench TSA", PASS.encode(),
                             now=dt.datetime.now(dt.UTC))
    tsa = TimeStampAuthority(creds)
    queries = [make_request(hashlib.sha256(os.urandom(8)).digest())[0] for _ in range(64)]
    (work / "query.tsq").write_bytes(queries[0])

    digest = hashlib.sha256(b"x").digest()
    sign_rate = rate(lambda: creds.tsa_key.sign(digest, ec.ECDSA(hashes.SHA256())), a.seconds)
    req = tsa.parse_request(queries[0])
    now = dt.datetime.now(dt.UTC)
    issue_rate = rate(lambda: tsa.issue(req, now=now, serial=1), a.seconds)
    openssl = openssl_rate(work, work / "query.tsq", a.seconds)
    rows = {"SQLite": http_rates(work, f"sqlite:///{work / 'tss.db'}", queries, a.seconds,
                                 tsa)}
    if a.pg:
        rows["PostgreSQL"] = http_rates(work, a.pg, queries, a.seconds, tsa)

    print(f"TSS on this machine ({os.cpu_count()} cores, shared), ECDSA P-256 TSA key")
    print(f"  raw signing, in process          {sign_rate:9.0f} signatures/s")
    print(f"  whole token, in process          {issue_rate:9.0f} tokens/s")
    print(f"  openssl ts -reply (a process each){openssl:8.0f} tokens/s")
    for store, (one, many) in rows.items():
        print(f"  HTTP, {store:10s} 1 client       {one:9.0f} tokens/s "
              f"({one / openssl:.1f}x openssl ts)")
        print(f"  HTTP, {store:10s} 16 clients     {many:9.0f} tokens/s "
              f"({many / openssl:.1f}x openssl ts)")
    result = f"RESULT tss_http_16={rows['SQLite'][1]:.0f}"
    if "PostgreSQL" in rows:
        result += f" tss_http_16_pg={rows['PostgreSQL'][1]:.0f}"
    worst = min(many for _, many in rows.values())
    print(f"{result} tss_http_1={rows['SQLite'][0]:.0f} openssl_ts={openssl:.0f} "
          f"ratio={worst / openssl:.1f}")


if __name__ == "__main__":
    main()
