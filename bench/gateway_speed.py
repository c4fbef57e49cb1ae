"""Gateway benchmarks on the real mail stack (needs root, Postfix, Dovecot, PostgreSQL):

1. untagged relaying: Postfix's smtp-source into smtp-sink directly, then the same
   messages from one Python SMTP client straight into smtp-sink and through the gateway
   (STARTTLS, AUTH) into smtp-sink: messages/s and the gateway/direct ratio;
2. complete certified exchanges (submission, notice, accept, original, receipt) per
   second with two gateways on PostgreSQL, and p50/p95 time from submission to receipt;
3. peak memory (VmHWM) of both gateway processes around one 25 MB certified exchange.

    python bench/gateway_speed.py [--messages 400] [--exchanges 30]
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import os
import re
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent)]

from conftest import pg_database  # noqa: E402
from gateways import (  # noqa: E402
    GatewayProc,
    Orgs,
    move,
    parse,
    start_orgs,
    subject_starts,
    wait_mail,
)
from mailstack import free_port  # noqa: E402

BODY = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * 60).encode()


def plain_mail(i: int) -> bytes:
    return (f"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: bench {i}\r\n"
            f"Message-ID: <bench-{i}@a.test>\r\n\r\n").encode() + BODY


def start_sink(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["smtp-sink", "-u", "postfix", "-c", f"127.0.0.1:{port}", "256"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("smtp-sink did not start")


def client_rate(connect: object, n: int, sessions: int = 4) -> float:
    """Messages per second from ``sessions`` parallel clients, each sending n/sessions."""
    per = n // sessions

    def worker(k: int) -> None:
        s = connect()  # type: ignore[operator]
        for i in range(per):
            s.sendmail("alice@a.test", ["bob@b.test"], plain_mail(k * per + i))
        s.quit()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * sessions / (time.perf_counter() - t0)


def relay_bench(orgs: Orgs, n: int) -> None:
    sink_port = free_port()
    sink = start_sink(sink_port)
    try:
        t0 = time.perf_counter()
        res = subprocess.run(["smtp-source", "-c", "-s", "4", "-m", str(n), "-l",
                              str(len(BODY)), "-f", "alice@a.test", "-t", "bob@b.test",
                              f"127.0.0.1:{sink_port}"], capture_output=True, timeout=600)
        src = n / (time.perf_counter() - t0)
        assert res.returncode == 0, res.stderr
        direct = client_rate(lambda: smtplib.SMTP("127.0.0.1", sink_port, timeout=60), n)
        relay = GatewayProc(orgs.workdir / "relay", "a.test", orgs.stack, orgs.services,
                            orgs.a.db_url, home=orgs.a.workdir)
        env_sink = f"127.0.0.1:{sink_port}"
        base_env = relay.env

        def env() -> dict[str, str]:
            e = base_env()
            e["TCMS_GATEWAY__UPSTREAM_SMTP"] = env_sink  # relay into smtp-sink
            e["TCMS_GATEWAY__UPSTREAM_SMTP_TLS"] = "none"
            return e

        relay.env = env  # type: ignore[method-assign]
        relay.start()
        try:
            via = client_rate(lambda: relay.smtp("alice@a.test"), n)
        finally:
            relay.stop()
    finally:
        sink.kill()
    print("\n== untagged relaying, 4 sessions, "
          f"{len(plain_mail(0))}-byte messages, {n} messages ==")
    print(f"  smtp-source -> smtp-sink (reference)        {src:8.0f} msg/s")
    print(f"  Python client -> smtp-sink                  {direct:8.0f} msg/s")
    print(f"  Python client -> gateway (TLS, AUTH) -> sink {via:7.0f} msg/s")
    print(f"  ratio gateway / direct (same client)        {via / direct:8.2f}")


def accept_all(orgs: Orgs, want: int, stop: threading.Event) -> None:
    """Bob's client: one IMAP session through his gateway, moving each new notice into
    Certified.Accept as soon as a search finds it."""
    with orgs.proxy.open("bob@b.test") as imap:
        done = 0
        while done < want and not stop.is_set():
            imap.select("INBOX")
            _, data = imap.uid("SEARCH", None, "SUBJECT", '"Certified mail from"')  # type: ignore[arg-type]
            uids = data[0].split()  # type: ignore[union-attr]
            if uids:
                imap.uid("MOVE", b",".join(uids), "Certified.Accept")  # type: ignore[arg-type]
                done += len(uids)
            time.sleep(0.05)


def watch_receipts(orgs: Orgs, want: int, got: dict[str, float]) -> None:
    """Alice's client: the time each receipt is first seen, by its subject."""
    deadline = time.time() + 600
    with orgs.proxy.open("alice@a.test") as imap:
        seen: set[bytes] = set()
        while len(got) < want and time.time() < deadline:
            imap.select("INBOX")
            _, data = imap.uid("SEARCH", None, "SUBJECT", '"bench exchange"')  # type: ignore[arg-type]
            for uid in data[0].split():  # type: ignore[union-attr]
                if uid in seen:
                    continue
                _, head = imap.uid("FETCH", uid, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")  # type: ignore[arg-type]
                subject = str(parse(bytes(head[0][1]))["Subject"])  # type: ignore[index]
                seen.add(uid)
                m = re.search(r"bench exchange \d{4}", subject)
                if subject.startswith("Receipt:") and m:
                    got[m.group(0)] = time.time()
            time.sleep(0.05)


def exchange_bench(orgs: Orgs, n: int) -> None:
    stop = threading.Event()
    accepter = threading.Thread(target=accept_all, args=(orgs, n, stop))
    accepter.start()
    sent: dict[str, float] = {}
    t0 = time.time()
    with orgs.a.smtp("alice@a.test") as s:
        for i in range(n):
            subject = f"bench exchange {i:04d}"
            sent[subject] = time.time()
            s.sendmail("alice@a.test", ["bob@b.test"],
                       f"Subject: [certified] {subject}\r\nFrom: alice@a.test\r\n"
                       f"To: bob@b.test\r\n\r\n".encode() + BODY)
    got: dict[str, float] = {}
    watch_receipts(orgs, n, got)
    stop.set()
    accepter.join()
    total = max(got.values()) - t0
    lat = sorted(got[k] - sent[k] for k in got)
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
    print(f"\n== certified exchanges, both gateways on PostgreSQL, {n} sent at once ==")
    print(f"  completed {len(got)}/{n} in {total:.1f} s: {len(got) / total:.2f} exchanges/s")
    print(f"  submission -> receipt: p50 {statistics.median(lat):.2f} s, p95 {p95:.2f} s")
    print("  (includes the recipient's client noticing and accepting; gateways poll every "
          "0.5 s)")


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def memory_bench(orgs: Orgs) -> None:
    # fresh processes, so the high-water mark is this exchange's
    for gw in (orgs.a, orgs.b):
        gw.stop()
        gw.start()
    assert orgs.a.proc and orgs.b.proc
    idle = vm_hwm(orgs.a.proc.pid), vm_hwm(orgs.b.proc.pid)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@a.test", "bob@b.test", "[certified] 25MB"
    msg.set_content("big\n")
    msg.add_attachment(os.urandom(25 * 1024 * 1024 * 3 // 4), maintype="application",
                       subtype="octet-stream", filename="big.bin")
    raw = msg.as_bytes(policy=email.policy.SMTP)
    t0 = time.time()
    with orgs.a.smtp("alice@a.test") as s:
        s.sendmail("alice@a.test", ["bob@b.test"], raw)
    uid, _ = wait_mail(orgs.proxy, "bob@b.test", subject_starts("Certified mail from", "25MB"),
                       timeout=300)
    move(orgs.proxy, "bob@b.test", uid, "Certified.Accept")
    wait_mail(orgs.proxy, "alice@a.test", subject_starts("Receipt:", "25MB"), timeout=300)
    took = time.time() - t0
    peak = vm_hwm(orgs.a.proc.pid), vm_hwm(orgs.b.proc.pid)
    print(f"\n== one {len(raw) / 1e6:.1f} MB certified mail (attachment, base64) ==")
    print(f"  submission -> receipt {took:.1f} s")
    print(f"  peak RSS sender's gateway   {peak[0]:5d} MB (idle {idle[0]} MB, "
          f"x{peak[0] / max(1, len(raw) / 2**20):.1f} the mail)")
    print(f"  peak RSS recipient's gateway {peak[1]:4d} MB (idle {idle[1]} MB, "
          f"x{peak[1] / max(1, len(raw) / 2**20):.1f} the mail)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=400, help="untagged messages per path")
    ap.add_argument("--exchanges", type=int, default=30, help="certified exchanges")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tcms-bench-"))
    dbs = [pg_database() for _ in range(3)]
    urls = [asyncio.run(db.__aenter__()) for db in dbs]
    print(f"starting Postfix, Dovecot, the services and two gateways in {work} ...")
    orgs = start_orgs(work, *urls)
    try:
        relay_bench(orgs, args.messages)
        exchange_bench(orgs, args.exchanges)
        memory_bench(orgs)
    finally:
        orgs.stop()
        for db in dbs:
            asyncio.run(db.__aexit__(None, None, None))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
