"""Gateway benchmarks on the real mail stack (needs root, Postfix, Dovecot, PostgreSQL):

1. untagged relaying: the same Python SMTP client (4 sessions, STARTTLS, AUTH PLAIN)
   through Postfix's own submission service (SASL through Dovecot) and through the gateway,
   both relaying into one smtp-sink, in alternating rounds: messages/s, the ratio
   gateway / Postfix submission, and the p50/p99 latency each adds per mail over the same
   client straight into the sink (and smtp-source's rate as a reference);
2. the floor of the mail stack beneath (Postfix -> LMTP -> Dovecot deliveries/s and IMAP
   APPEND/s, 4 of each per exchange), then complete certified exchanges (submission,
   notice, accept, original, receipt) per second with two gateways on PostgreSQL, at an
   offered 10/s and at full speed, their ratio to the floor, and p50/p95 of submission ->
   notice and accept -> receipt as the users' clients see them;
3. peak memory (VmHWM) of both gateway processes around one 25 MB certified exchange.

    python bench/gateway_speed.py [--only relay] [--workers 2] [--exchanges 60]

Each part ends with a `RESULT` line: `relay_ratio=…` (relay), `exchanges_per_s=…
floor_per_s=… ratio=… p50_notice_s=… p50_receipt_s=…` (exchanges), `rss_ratio_sender=…
rss_ratio_recipient=… big_mail_s=… big_mail_time_ratio=…` (memory: each gateway's peak RSS
above idle over the mail's size; the exchange's time over the MTA's for the mail four times).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.policy
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent)]

from conftest import pg_database  # noqa: E402
from gateways import (  # noqa: E402
    USERS,
    WINDOWS,
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
    # its output (a counter with -c) goes nowhere: an unread pipe would fill and stop it
    proc = subprocess.Popen(["smtp-sink", "-u", "postfix", f"127.0.0.1:{port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("smtp-sink did not start")


def client_run(connect: object, n: int, sessions: int = 4) -> tuple[float, list[float]]:
    """Messages per second from ``sessions`` parallel clients, each sending n/sessions,
    and each mail's latency (the client's sendmail call, from MAIL to the final reply)."""
    per = n // sessions
    latencies: list[float] = []

    def worker(k: int) -> None:
        s = connect()  # type: ignore[operator]
        for i in range(per):
            t = time.perf_counter()
            s.sendmail("alice@a.test", ["bob@b.test"], plain_mail(k * per + i))
            latencies.append(time.perf_counter() - t)
        s.quit()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * sessions / (time.perf_counter() - t0), latencies


def relay_bench(orgs: Orgs, n: int, rounds: int, workers: int) -> None:
    """The same Python client (4 sessions, STARTTLS and AUTH PLAIN) through Postfix's own
    submission service and through the gateway, both relaying into one smtp-sink, in
    alternating rounds; and straight into the sink (no TLS, no AUTH) for the latency that
    each path adds."""
    sink_port = free_port()
    sink = start_sink(sink_port)
    stack = orgs.stack
    submission_port = free_port()
    stack.add_submission(submission_port, sink_port)
    stack_tls = ssl.create_default_context(cafile=str(stack.cert))

    def postfix() -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", submission_port, timeout=60)
        s.starttls(context=stack_tls)
        s.login("alice@a.test", USERS["alice@a.test"])
        return s

    try:
        t0 = time.perf_counter()
        res = subprocess.run(["smtp-source", "-c", "-s", "4", "-m", str(n), "-l",
                              str(len(BODY)), "-f", "alice@a.test", "-t", "bob@b.test",
                              f"127.0.0.1:{sink_port}"], capture_output=True, timeout=600)
        src = n / (time.perf_counter() - t0)
        assert res.returncode == 0, res.stderr
        relay = GatewayProc(orgs.workdir / "relay", "a.test", orgs.stack, orgs.services,
                            orgs.a.db_url, home=orgs.a.workdir)
        base_env = relay.env

        def env() -> dict[str, str]:
            e = base_env()
            e["TCMS_GATEWAY__UPSTREAM_SMTP"] = f"127.0.0.1:{sink_port}"  # into smtp-sink
            e["TCMS_GATEWAY__UPSTREAM_SMTP_TLS"] = "none"
            e["TCMS_GATEWAY__WORKERS"] = str(workers)
            return e

        relay.env = env  # type: ignore[method-assign]
        relay.start()
        deadline = time.time() + 120
        while relay.log_text().count("submission worker") < workers - 1 + (workers > 1):
            assert time.time() < deadline, "the gateway's workers did not start"
            time.sleep(0.2)
        rates: dict[str, list[float]] = {"direct": [], "postfix": [], "gateway": []}
        lat: dict[str, list[float]] = {"direct": [], "postfix": [], "gateway": []}
        paths = {"direct": lambda: smtplib.SMTP("127.0.0.1", sink_port, timeout=60),
                 "postfix": postfix, "gateway": lambda: relay.smtp("alice@a.test")}
        try:
            for name in paths:  # warm-up, not counted: sessions, pools, caches
                client_run(paths[name], 40)
            for r in range(rounds):
                order = ["postfix", "gateway", "direct"] if r % 2 == 0 \
                    else ["gateway", "postfix", "direct"]
                for name in order:
                    rate, latencies = client_run(paths[name], n)
                    rates[name].append(rate)
                    lat[name] += latencies
        finally:
            relay.stop()
    finally:
        sink.kill()
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    # each round's gateway run next to its Postfix run, which ran just before or after it:
    # the median of those ratios is the least moved by what else the machine is doing
    pairs = sorted(g / p for g, p in zip(rates["gateway"], rates["postfix"], strict=True))
    ratio = pairs[len(pairs) // 2] if len(pairs) % 2 else \
        (pairs[len(pairs) // 2 - 1] + pairs[len(pairs) // 2]) / 2
    print(f"\n== untagged relaying into smtp-sink: 4 sessions, {len(plain_mail(0))}-byte "
          f"messages, {n} messages a run, {rounds} rounds (mean), gateway workers {workers} ==")
    print(f"  smtp-source -> smtp-sink (reference)             {src:8.0f} msg/s")
    print(f"  Python client -> smtp-sink (no TLS, no AUTH)     {mean['direct']:8.0f} msg/s"
          f"   latency p50 {pct(lat['direct'], .5) * 1e3:6.2f} ms"
          f" p99 {pct(lat['direct'], .99) * 1e3:6.2f} ms")
    for name, label in (("postfix", "Postfix submission (STARTTLS, AUTH)"),
                        ("gateway", "TCMS gateway (STARTTLS, AUTH)     ")):
        added50 = (pct(lat[name], .5) - pct(lat["direct"], .5)) * 1e3
        added99 = (pct(lat[name], .99) - pct(lat["direct"], .99)) * 1e3
        print(f"  Python client -> {label} -> sink {mean[name]:6.0f} msg/s"
              f"   added latency p50 {added50:6.2f} ms p99 {added99:6.2f} ms"
              f"   (rounds: {', '.join(f'{x:.0f}' for x in rates[name])})")
    print(f"  ratio gateway / Postfix submission, median of rounds {ratio:6.2f}   (goal >= 0.9;"
          f" rounds: {', '.join(f'{x:.2f}' for x in pairs)}; of the means "
          f"{mean['gateway'] / mean['postfix']:.2f})")
    print(f"RESULT relay_ratio={ratio:.3f} gateway_msg_s={mean['gateway']:.0f} "
          f"postfix_submission_msg_s={mean['postfix']:.0f} direct_msg_s={mean['direct']:.0f} "
          f"gateway_p50_added_ms={(pct(lat['gateway'], .5) - pct(lat['direct'], .5)) * 1e3:.2f} "
          f"gateway_p99_added_ms={(pct(lat['gateway'], .99) - pct(lat['direct'], .99)) * 1e3:.2f} "
          f"postfix_p50_added_ms={(pct(lat['postfix'], .5) - pct(lat['direct'], .5)) * 1e3:.2f} "
          f"postfix_p99_added_ms={(pct(lat['postfix'], .99) - pct(lat['direct'], .99)) * 1e3:.2f}")


def in_threads(work: Callable[[int, int], None], per: int, threads: int = 4) -> None:
    """``work(k, per)`` in ``threads`` threads at once, k = 0 …; returns when all are done."""
    running = [threading.Thread(target=work, args=(k, per)) for k in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()


def mta_floor(orgs: Orgs, n: int) -> tuple[float, float, float]:
    """What the mail stack beneath the gateways carries: Postfix -> LMTP -> Dovecot
    deliveries/s (4 SMTP sessions, counted done when Dovecot has saved every one) and IMAP
    APPEND/s (4 sessions); an exchange needs about 4 of each, so the floor is
    1 / (4 / deliveries + 4 / appends) exchanges/s."""
    marker = f"floor-{time.time_ns()}"

    def deliver(k: int, per: int) -> None:
        with smtplib.SMTP("127.0.0.1", orgs.stack.smtp_port, timeout=60) as s:
            for i in range(per):
                s.sendmail("alice@a.test", ["carol@b.test"],
                           f"Subject: {marker} {k}-{i}\r\n\r\n".encode() + BODY)

    t0 = time.perf_counter()
    in_threads(deliver, n // 4)
    deadline = time.time() + 300
    while _saved_count(orgs, marker) < n // 4 * 4 and time.time() < deadline:
        time.sleep(0.05)
    deliveries = n // 4 * 4 / (time.perf_counter() - t0)

    def append(k: int, per: int) -> None:
        imap = orgs.direct.open("dave@b.test")
        for i in range(per):
            imap.append("INBOX", None, None,
                        f"Subject: {marker} append {k}-{i}\r\n\r\n".encode() + BODY)
        imap.logout()

    t0 = time.perf_counter()
    in_threads(append, n // 4)
    appends = n // 4 * 4 / (time.perf_counter() - t0)
    return deliveries, appends, 1 / (4 / deliveries + 4 / appends)


def _saved_count(orgs: Orgs, marker: str) -> int:
    with orgs.direct.open("carol@b.test") as imap:
        imap.select("INBOX")
        _, data = imap.search(None, "SUBJECT", f'"{marker}"')
        return len(data[0].split())


class Clients:
    """Bob's and alice's mail clients, through their gateways' IMAP proxies: bob moves
    each notice into Certified.Accept as soon as he sees it; alice watches for receipts.
    Every time is the moment a client saw or did something."""

    def __init__(self, orgs: Orgs, want: int) -> None:
        self.orgs, self.want = orgs, want
        self.notice_seen: dict[str, float] = {}
        self.accepted: dict[str, float] = {}
        self.receipt_seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._bob), threading.Thread(target=self._alice)]

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def wait(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while len(self.receipt_seen) < self.want and time.time() < deadline:
            time.sleep(0.05)

    def _subjects(self, imap: object, words: str) -> dict[bytes, str]:
        imap.select("INBOX")  # type: ignore[attr-defined]
        _, data = imap.uid("SEARCH", None, "SUBJECT", f'"{words}"')  # type: ignore[attr-defined]
        uids = data[0].split()
        if not uids:
            return {}
        _, got = imap.uid("FETCH", b",".join(uids),  # type: ignore[attr-defined]
                          "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out = {}
        for item in got:
            if isinstance(item, tuple):
                uid = re.search(rb"UID (\d+)", item[0])
                m = re.search(r"bench exchange \d{5}", str(parse(bytes(item[1]))["Subject"]))
                if uid and m:
                    out[uid.group(1)] = m.group(0)
        return out

    def _bob(self) -> None:
        with self.orgs.proxy.open("bob@b.test") as imap:
            while not self.stop.is_set() and len(self.accepted) < self.want:
                found = self._subjects(imap, "Certified mail from")
                now = time.time()
                for key in found.values():
                    self.notice_seen.setdefault(key, now)
                if found:
                    imap.uid("MOVE", b",".join(found), "Certified.Accept")  # type: ignore[arg-type]
                    now = time.time()
                    for key in found.values():
                        self.accepted.setdefault(key, now)
                time.sleep(0.02)

    def _alice(self) -> None:
        seen: set[bytes] = set()
        with self.orgs.proxy.open("alice@a.test") as imap:
            while not self.stop.is_set() and len(self.receipt_seen) < self.want:
                for uid, key in self._subjects(imap, "Receipt:").items():
                    if uid not in seen:
                        seen.add(uid)
                        self.receipt_seen.setdefault(key, time.time())
                time.sleep(0.02)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def exchange_run(orgs: Orgs, n: int, rate: float | None, first: int) -> dict[str, float]:
    """Send n certified mails (at ``rate`` per second, or all at once) and time them."""
    sent: dict[str, float] = {}
    with Clients(orgs, n) as clients:
        t0 = time.time()
        with orgs.a.smtp("alice@a.test") as s:
            for i in range(n):
                if rate:
                    time.sleep(max(0.0, t0 + i / rate - time.time()))
                key = f"bench exchange {first + i:05d}"
                sent[key] = time.time()
                s.sendmail("alice@a.test", ["bob@b.test"],
                           f"Subject: [certified] {key}\r\nFrom: alice@a.test\r\n"
                           f"To: bob@b.test\r\n\r\n".encode() + BODY)
        clients.wait(600)
    done = clients.receipt_seen
    total = max(done.values()) - t0 if done else float("inf")
    notice = [clients.notice_seen[k] - sent[k] for k in clients.notice_seen if k in sent]
    receipt = [done[k] - clients.accepted[k] for k in done if k in clients.accepted]
    return {"completed": len(done), "per_s": len(done) / total,
            "p50_notice": pct(notice, 0.5), "p95_notice": pct(notice, 0.95),
            "p50_receipt": pct(receipt, 0.5), "p95_receipt": pct(receipt, 0.95)}


def exchange_bench(orgs: Orgs, n: int, floor_n: int) -> None:
    deliveries, appends, floor = mta_floor(orgs, floor_n)
    print(f"\n== the mail stack beneath (Postfix -> LMTP -> Dovecot), {floor_n} mails ==")
    print(f"  deliveries {deliveries:8.1f} /s   APPEND {appends:8.1f} /s   "
          f"floor (4 of each per exchange) {floor:6.1f} exchanges/s")
    paced = exchange_run(orgs, max(20, n // 2), 10.0, 0)
    full = exchange_run(orgs, n, None, 50_000)
    ratio = full["per_s"] / floor
    print("\n== certified exchanges, both gateways on PostgreSQL ==")
    for name, r in (("offered 10/s", paced), ("full speed", full)):
        print(f"  {name:<13} {int(r['completed']):4d} done, {r['per_s']:6.2f} exchanges/s;  "
              f"submission->notice p50 {r['p50_notice']:.2f} s p95 {r['p95_notice']:.2f} s;  "
              f"accept->receipt p50 {r['p50_receipt']:.2f} s p95 {r['p95_receipt']:.2f} s")
    print(f"  ratio to the floor (full speed)  {ratio:.2f}   (goal >= 0.6)")
    print(f"RESULT exchanges_per_s={full['per_s']:.2f} floor_per_s={floor:.1f} "
          f"ratio={ratio:.3f} p50_notice_s={paced['p50_notice']:.3f} "
          f"p50_receipt_s={paced['p50_receipt']:.3f} p95_notice_s={paced['p95_notice']:.3f} "
          f"p95_receipt_s={paced['p95_receipt']:.3f}")


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def big_mail(payload: bytes, to: str, subject: str) -> bytes:
    """A mail from alice with ``payload`` attached (base64)."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@a.test", to, subject
    msg.set_content("big\n")
    msg.add_attachment(payload, maintype="application", subtype="octet-stream",
                       filename="big.bin")
    return msg.as_bytes(policy=email.policy.SMTP)


def mta_carries(orgs: Orgs, raw: bytes, times: int) -> float:
    """Seconds for the MTA to carry ``raw`` ``times`` times, one after the other: each
    submitted to Postfix and waited for until Dovecot has it (what a certified exchange
    asks of the mail stack: the submission, m3, the original, the receipt)."""
    t0 = time.time()
    for n in range(times):
        with smtplib.SMTP("127.0.0.1", orgs.stack.smtp_port, timeout=300) as s:
            s.sendmail("alice@a.test", ["carol@b.test"], raw)
        deadline = time.time() + 300
        while _saved_count(orgs, "MTA carry") <= n:
            if time.time() > deadline:
                raise SystemExit("the MTA did not deliver the big mail")
            time.sleep(0.05)
    return time.time() - t0


class RssTrace:
    """Both gateways' RSS sampled every 20 ms in a thread; ``report`` prints each log line
    of the exchange with the highest RSS of each process since the line before (what step
    the memory goes to)."""

    def __init__(self, orgs: Orgs) -> None:
        assert orgs.a.proc and orgs.b.proc
        self.gws = (orgs.a, orgs.b)
        self.marks = [len(gw.log_text()) for gw in self.gws]
        self.samples: list[tuple[float, int, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self, gw: GatewayProc) -> int:
        assert gw.proc is not None
        for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
        return 0

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            self.samples.append((time.time(), *map(self._rss, self.gws)))  # type: ignore[arg-type]

    def __enter__(self) -> RssTrace:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def report(self, t0: float) -> None:
        lines = []
        for n, (gw, mark) in enumerate(zip(self.gws, self.marks, strict=True)):
            for line in gw.log_text()[mark:].splitlines():
                try:
                    at = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                    lines.append((at + int(line[20:23]) / 1000, n, line[24:150]))
                except ValueError:
                    continue
        lines.sort()
        print("\n== RSS (MB) of each gateway, highest since the line before ==")
        prev = t0
        for at, n, text in lines:
            seen = [s for s in self.samples if prev <= s[0] <= at] or [(at, 0, 0)]
            print(f"  {at - t0:6.2f}s  a={max(s[1] for s in seen):4d} "
                  f"b={max(s[2] for s in seen):4d}  {'ab'[n]}: {text}")
            prev = at


def memory_bench(orgs: Orgs, trace: bool = False) -> None:
    # fresh processes, so the high-water mark is this exchange's
    for gw in (orgs.a, orgs.b):
        gw.stop()
        gw.start()
    assert orgs.a.proc and orgs.b.proc
    idle = vm_hwm(orgs.a.proc.pid), vm_hwm(orgs.b.proc.pid)
    payload = os.urandom(25 * 1024 * 1024 * 3 // 4)
    carried = mta_carries(orgs, big_mail(payload, "carol@b.test", "MTA carry"), 4)
    raw = big_mail(payload, "bob@b.test", "[certified] 25MB")
    tracer = RssTrace(orgs) if trace else None
    t0 = time.time()
    with tracer or contextlib.nullcontext():
        with orgs.a.smtp("alice@a.test") as s:
            s.sendmail("alice@a.test", ["bob@b.test"], raw)
        uid, _ = wait_mail(orgs.proxy, "bob@b.test",
                           subject_starts("Certified mail from", "25MB"), timeout=300)
        move(orgs.proxy, "bob@b.test", uid, "Certified.Accept")
        wait_mail(orgs.proxy, "alice@a.test", subject_starts("Receipt:", "25MB"), timeout=300)
        took = time.time() - t0
    if tracer:
        tracer.report(t0)
    peak = vm_hwm(orgs.a.proc.pid), vm_hwm(orgs.b.proc.pid)
    mb = len(raw) / 2**20
    ratio = [(p - i) / mb for p, i in zip(peak, idle, strict=True)]
    print(f"\n== one {len(raw) / 1e6:.1f} MB certified mail (attachment, base64) ==")
    print(f"  submission -> receipt {took:.1f} s; the MTA carries the same mail four times "
          f"(Postfix -> LMTP -> Dovecot, one after the other) in {carried:.1f} s: "
          f"x{took / carried:.2f} (goal <= 3)")
    print(f"  peak RSS sender's gateway   {peak[0]:5d} MB (idle {idle[0]} MB, "
          f"x{ratio[0]:.1f} the mail above idle; goal < 4)")
    print(f"  peak RSS recipient's gateway {peak[1]:4d} MB (idle {idle[1]} MB, "
          f"x{ratio[1]:.1f} the mail above idle; goal < 4)")
    print(f"RESULT rss_ratio_sender={ratio[0]:.2f} rss_ratio_recipient={ratio[1]:.2f} "
          f"big_mail_s={took:.1f} big_mail_time_ratio={took / carried:.2f} "
          f"mta_4_carries_s={carried:.1f} mail_mb={mb:.1f} peak_sender_mb={peak[0]} "
          f"peak_recipient_mb={peak[1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200, help="untagged messages per run")
    ap.add_argument("--rounds", type=int, default=5, help="relay rounds (alternating order)")
    ap.add_argument("--workers", type=int, default=2, help="the relaying gateway's workers")
    ap.add_argument("--exchanges", type=int, default=60, help="certified exchanges")
    ap.add_argument("--floor-mails", type=int, default=400,
                    help="mails (and APPENDs) to measure the mail stack's floor")
    ap.add_argument("--trace", action="store_true",
                    help="memory part: print each gateway log line with the RSS of both")
    ap.add_argument("--only", choices=["relay", "exchanges", "memory"], action="append",
                    help="run only these parts (default: all)")
    args = ap.parse_args()
    parts = args.only or ["relay", "exchanges", "memory"]
    # windows long enough that no exchange expires under load (the tests' are short)
    WINDOWS.update({"ACCEPT_WINDOW": "3600", "M5_WINDOW": "600", "M6_WINDOW": "600"})
    work = Path(tempfile.mkdtemp(prefix="tcms-bench-"))
    dbs = [pg_database() for _ in range(3)]
    urls = [asyncio.run(db.__aenter__()) for db in dbs]
    print(f"starting Postfix, Dovecot, the services and two gateways in {work} ...")
    orgs = start_orgs(work, *urls)
    try:
        if "relay" in parts:
            relay_bench(orgs, args.messages, args.rounds, args.workers)
        if "memory" in parts:
            memory_bench(orgs, args.trace)
        if "exchanges" in parts:
            exchange_bench(orgs, args.exchanges, args.floor_mails)
    finally:
        orgs.stop()
        for db in dbs:
            asyncio.run(db.__aexit__(None, None, None))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
