"""The TSS and TTP as real network services (`tcms serve`), driven by standard clients."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import (
    ALICE,
    BOB,
    CAROL,
    DEADLINES,
    T0,
    TRUST,
    TTP,
    known,
    one,
    pg_database,
    receive,
    start_run,
)
from mailstack import PATIENCE
from services import PASSPHRASE, Services, prepare_keys

from tcms import evidence
from tcms.crypto import sign, verify
from tcms.identity import Identity
from tcms.keystore import Keystore
from tcms.protocol.events import Accept, Tick, TimestampReply
from tcms.protocol.messages import M1, Description
from tcms.protocol.receiver import Receiver
from tcms.protocol.sender import Sender
from tcms.protocol.ttpmessages import decode_ttp_answer
from tcms.store import Store
from tcms.timestamp import TimestampError, token_from_reply, verify_token
from ttp import filing
from ttp import store as ttp_store

CBOR = {"Content-Type": "application/cbor"}
# exchanges racing at once in the race test: each posts two requests, each request may hold
# a database connection in its TTP process; a few keep the machine's PostgreSQL (shared by
# every test run on it) far from its connection limit
IN_FLIGHT = 8
RACES = int(os.environ.get("TCMS_RACES", "100"))  # `make soak`: 1000


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    prepare_keys(tmp_path / "keys")
    return tmp_path


@pytest.fixture
def services(workdir: Path) -> Iterator[Services]:
    # the rate limit of disputes has its own test: here every test may file several
    svc = Services(workdir, f"sqlite:///{workdir / 'tcms.db'}",
                   extra_env={"TCMS_TTP__DISPUTE_BURST": "100"}).start()
    yield svc
    svc.stop()


def sh(cmd: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True,
                          timeout=PATIENCE)


# --- TSS ----------------------------------------------------------------------------------------


def test_openssl_and_curl_against_the_tss(services: Services, workdir: Path) -> None:
    (workdir / "data.txt").write_text("certified mail\n")
    chain = httpx.get(services.tss + "/certs").text
    ca, tsa = ("-----BEGIN" + part for part in chain.split("-----BEGIN")[1:])
    (workdir / "ca.pem").write_text(ca)
    (workdir / "tsa.pem").write_text(tsa)
    res = sh("openssl ts -query -data data.txt -sha256 -cert -out req.tsq", workdir)
    assert res.returncode == 0, res.stderr
    res = sh(f"curl -sS -H 'Content-Type: application/timestamp-query' --data-binary @req.tsq "
             f"{services.tss}/tsa -o resp.tsr", workdir)
    assert res.returncode == 0, res.stderr
    res = sh("openssl ts -verify -queryfile req.tsq -in resp.tsr -CAfile ca.pem "
             "-untrusted tsa.pem", workdir)
    assert "Verification: OK" in res.stdout, res.stdout + res.stderr


def test_tss_rejections_and_bad_input(services: Services) -> None:
    r = httpx.post(services.tss + "/tsa", content=b"not DER",
                   headers={"Content-Type": "application/timestamp-query"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/timestamp-reply"
    with pytest.raises(Exception, match="bad_data_format"):
        token_from_reply(r.content)
    r = httpx.post(services.tss + "/tsa", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"] == "request"
    r = httpx.post(services.tss + "/tsa", content=b"x" * 20000,
                   headers={"Content-Type": "application/timestamp-query"})
    assert r.status_code == 413
    r = httpx.post(services.tss + "/m1", content=b"\x00", headers=CBOR)
    assert r.status_code == 400 and r.json()["error"] == "format"


# issue 11, item 8: certReq written 21 01 ff (a constructed BOOLEAN) after the nonce
CERTREQ_CONSTRUCTED = bytes.fromhex("303c0201013031300d060960864801650304020105000420"
                                    + "11" * 32 + "0201012101ff")


def test_a_malformed_cert_req_gets_an_rfc3161_rejection(services: Services,
                                                        workdir: Path) -> None:
    """It passed the TSA's checks and failed while the token was written: a 500."""
    r = httpx.post(services.tss + "/tsa", content=CERTREQ_CONSTRUCTED,
                   headers={"Content-Type": "application/timestamp-query"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/timestamp-reply"
    with pytest.raises(TimestampError, match="refused: rejection bad_data_format"):
        token_from_reply(r.content)
    (workdir / "rejected.tsr").write_bytes(r.content)
    res = sh("openssl ts -reply -in rejected.tsr -text", workdir)
    assert "Status: Rejected." in res.stdout and "has the wrong format" in res.stdout, \
        res.stdout + res.stderr
    # the same query inside a signed m1 whose cid is its imprint
    cid = b"\x11" * 32
    m1 = M1(ALICE.party, cid, CERTREQ_CONSTRUCTED, b"")
    m1 = M1(ALICE.party, cid, CERTREQ_CONSTRUCTED,
            sign(ALICE.sig_key, "M1", *m1.signed_fields()))
    r = httpx.post(services.tss + "/m1", content=m1.encode(), headers=CBOR)
    assert r.status_code == 200
    with pytest.raises(TimestampError, match="bad_data_format"):
        token_from_reply(r.content)
    assert httpx.get(services.tss + "/health").status_code == 200


def _m1(at: int = T0) -> tuple[Sender, bytes]:
    s, acts = Sender.start(ALICE, TRUST, BOB.party, b"m0", Description("t", 2, "<x>"),
                           DEADLINES)
    return s, one(acts, "m1")


def test_m1_over_http_and_serials_survive_a_restart(services: Services) -> None:
    sender, m1 = _m1()
    r = httpx.post(services.tss + "/m1", content=m1, headers=CBOR)
    assert r.status_code == 200
    token = token_from_reply(r.content)
    first = verify_token(token, sender.cid, TRUST.tsa_ca).serial
    assert sender.handle(TimestampReply(r.content), T0)  # the sender accepts it: m3 goes out
    assert sender.phase == "await-m4"
    # a forged signature is refused, by name
    msg = M1.decode(m1)
    forged = M1(msg.sender, msg.cid, msg.tsq, bytes(64)).encode()
    r = httpx.post(services.tss + "/m1", content=forged, headers=CBOR)
    assert r.status_code == 400 and r.json()["error"] == "m1.sig"
    services.stop()
    services.start()
    _, m1b = _m1()
    r = httpx.post(services.tss + "/m1", content=m1b, headers=CBOR)
    later = verify_token(token_from_reply(r.content), M1.decode(m1b).cid, TRUST.tsa_ca).serial
    assert later > first


# --- TTP ----------------------------------------------------------------------------------------


def accepted_run() -> tuple[Sender, Receiver]:
    run = start_run(b"Subject: ttp\r\n\r\nbody")
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, T0 + 1, known)
    one(r.handle(Accept(), T0 + 2), "m4")
    return run.sender, r


def test_r1r_and_r1s_through_the_ttp_service(services: Services) -> None:
    sender, receiver = accepted_run()
    cid = sender.cid.hex()
    assert httpx.get(f"{services.ttp}/status/{cid}").json()["state"] == "none"
    assert httpx.get(f"{services.ttp}/release/{cid}").status_code == 404
    req = one(receiver.handle(Tick(), DEADLINES.m5_by + 1), "resolve")
    answer = httpx.post(services.ttp + "/resolve", content=req, headers=CBOR).content
    assert receive(receiver, answer, DEADLINES.m5_by + 1)
    assert receiver.phase == "done"
    status = httpx.get(f"{services.ttp}/status/{cid}").json()
    assert status["state"] == "resolved" and status["requested_by"] == "R"
    assert httpx.get(f"{services.ttp}/release/{cid}").content == answer
    # the sender's late abort gets the very same signed resolution, after a restart too
    services.stop()
    services.start()
    abort = one(sender.handle(Tick(), DEADLINES.accept_by + 1), "abort")
    again = httpx.post(services.ttp + "/abort", content=abort, headers=CBOR).content
    assert again == answer
    receive(sender, again, DEADLINES.accept_by + 1)
    assert sender.phase == "done" and sender.has_receipt
    res = subprocess.run([sys.executable, "-m", "tcms.cli", "ttp", "audit"],
                         env=services.env(), capture_output=True, text=True,
                         cwd=services.workdir, timeout=PATIENCE)
    assert res.returncode == 0 and "audit log intact" in res.stdout, res.stdout + res.stderr


def test_ttp_refuses_forged_and_foreign_requests(services: Services) -> None:
    sender, receiver = accepted_run()
    req = bytearray(one(receiver.handle(Tick(), DEADLINES.m5_by + 1), "resolve"))
    req[-5] ^= 1
    r = httpx.post(services.ttp + "/resolve", content=bytes(req), headers=CBOR)
    assert r.status_code == 400 and r.json()["error"] == "resolve.sig"
    assert httpx.get(f"{services.ttp}/status/{sender.cid.hex()}").json()["state"] == "none"
    for path in ("/abort", "/resolve"):
        assert httpx.post(services.ttp + path, content=b"", headers=CBOR).status_code == 400
        r = httpx.post(services.ttp + path, content=b"\xa0", headers=CBOR)
        assert r.status_code == 400
        r = httpx.post(services.ttp + path, content=b"x", headers={"Content-Type": "text/x"})
        assert r.status_code == 415
    for bad in ("zz", "00" * 31, "00" * 33):
        assert httpx.get(f"{services.ttp}/status/{bad}").status_code == 400
        assert httpx.get(f"{services.ttp}/release/{bad}").status_code == 400


def completed_bundle() -> dict[str, str]:
    sender, receiver = accepted_run()
    m5 = one(receive(sender, receiver.state.m4 or b"", T0 + 3), "m5")
    m6 = one(receive(receiver, m5, T0 + 4), "m6")
    receive(sender, m6, T0 + 5)
    return evidence.from_sender(sender)


def file(url: str, body: bytes, filer: Identity, *, cid: bytes | None = None,
         at: int | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """POST /dispute as ``filer`` would (its signature over this body), or with ``headers``."""
    if headers is None:
        core = filing.core_of(json.loads(body))
        headers = filing.filing_headers(filer, cid or core.cid, body,
                                        int(time.time()) if at is None else at)
    return httpx.post(url + "/dispute", content=body, timeout=PATIENCE,
                      headers={"Content-Type": "application/json", **headers})


def test_dispute_gives_a_signed_verdict(services: Services, workdir: Path) -> None:
    bundle = completed_bundle()
    path = workdir / "bundle.json"
    path.write_text(json.dumps(bundle))
    Keystore(workdir / "keys", PASSPHRASE.encode()).save(ALICE)  # the sender files it
    res = subprocess.run([sys.executable, "-m", "tcms.cli", "ttp", "dispute", str(path)],
                         env=services.env(), capture_output=True, text=True, timeout=PATIENCE)
    assert res.returncode == 0, res.stderr
    verdict = json.loads(res.stdout)
    assert verdict["valid"] and verdict["verdict"] == "received"
    sig = base64.b64decode(verdict.pop("signature"))
    canonical = json.dumps(verdict, sort_keys=True, separators=(",", ":")).encode()
    verify(TTP.party.sig_pk, sig, "VERDICT", canonical)  # raises if forged
    # the recipient's key is not in this keystore: it cannot file
    res = subprocess.run([sys.executable, "-m", "tcms.cli", "ttp", "dispute", str(path),
                          "--as", BOB.name], env=services.env(), capture_output=True,
                         text=True, timeout=PATIENCE)
    assert res.returncode == 1 and f"cannot file as {BOB.name}" in res.stderr, res.stderr
    bundle["m6"] = base64.b64encode(bytes(64)).decode()
    r = file(services.ttp, json.dumps(bundle).encode(), BOB)
    assert r.status_code == 200 and r.json()["valid"] is False
    assert r.json()["check"] == "format"
    trust = httpx.get(services.ttp + "/identity").json()
    assert evidence.trust_from_json(trust).ttp == TTP.party


# --- disputes: who may file, how much, how fast (issue 11, item 7) ---------------------


async def test_only_a_party_of_the_exchange_may_file(services: Services) -> None:
    body = json.dumps(completed_bundle()).encode()
    cid = filing.core_of(json.loads(body)).cid
    r = httpx.post(services.ttp + "/dispute", content=body,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and r.json()["error"] == "dispute.filer"
    r = file(services.ttp, body, CAROL)  # signs well, but is no party of the exchange
    assert r.status_code == 403 and r.json()["error"] == "dispute.filer"
    forged = filing.filing_headers(CAROL, cid, body, int(time.time()))
    forged[filing.FILER] = ALICE.name  # carol's signature, alice's name
    r = file(services.ttp, body, ALICE, headers=forged)
    assert r.status_code == 403 and r.json()["error"] == "dispute.sig"
    r = file(services.ttp, body, ALICE, at=int(time.time()) - 3600)
    assert r.status_code == 403 and r.json()["error"] == "dispute.time"
    other = json.dumps({**json.loads(body), "holder": "receiver"}).encode()
    signed_other = filing.filing_headers(ALICE, cid, other, int(time.time()))
    r = file(services.ttp, body, ALICE, headers=signed_other)  # signed another body
    assert r.status_code == 403 and r.json()["error"] == "dispute.sig"
    r = file(services.ttp, body, BOB)  # the recipient may
    assert r.status_code == 200 and r.json()["verdict"] == "received"
    r = file(services.ttp, body, ALICE)  # and so may the sender
    assert r.status_code == 200 and r.json()["verdict"] == "received"
    store = Store(services.db_url)
    try:
        audited = [json.loads(e.detail) for e in await store.audit_entries()
                   if e.event == "ttp.dispute"]
    finally:
        await store.close()
    # only the two authenticated filings were verified and written to the audit log
    assert [(a["filer"], a["role"]) for a in audited] == [(BOB.name, "recipient"),
                                                          (ALICE.name, "sender")]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_dispute_bodies_are_bounded_before_parsing(services: Services) -> None:
    """``[`` x 100,000 was a 500 (RecursionError); a 30 MB body grew the process that also
    serves the TSS and the DC by 850 MB.  Now: a named 400 or 413, the process unmoved."""
    assert services.proc is not None
    bundle = completed_bundle()
    filed = filing.filing_headers(ALICE, filing.core_of(bundle).cid, b"x", int(time.time()))
    r = file(services.ttp, b"[" * 100_000, ALICE, headers={})
    assert r.status_code == 401 and r.json()["error"] == "dispute.filer"
    r = file(services.ttp, b"[" * 100_000, ALICE, headers=filed)
    assert r.status_code == 400 and r.json()["error"] == "json.depth", r.text
    before = _rss(services.proc.pid)
    r = file(services.ttp, b"[" + b"{}," * 10_000_000 + b"{}]", ALICE, headers=filed)
    assert r.status_code == 413 and r.json()["error"] == "body.size", r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused as it arrives
        yield b"["
        for _ in range(1000):
            yield b"{}," * 10_000

    r = httpx.post(services.ttp + "/dispute", content=chunks(), timeout=PATIENCE,
                   headers={"Content-Type": "application/json", **filed})
    assert r.status_code == 413 and r.json()["error"] == "body.size", r.text
    # within the size limit, but a million items: refused before json.loads builds them
    r = file(services.ttp, b"[" + b"{}," * 2_000_000 + b"{}]", ALICE, headers=filed)
    assert r.status_code == 400 and r.json()["error"] == "json.size", r.text
    r = file(services.ttp, b'{"core": 1, "core": 2}', ALICE, headers=filed)
    assert r.status_code == 400 and r.json()["error"] == "json.duplicate", r.text
    assert _rss(services.proc.pid) - before < 64 * 1024 * 1024
    assert httpx.get(services.tss + "/health").status_code == 200


def test_disputes_are_rate_limited_per_address(workdir: Path) -> None:
    svc = Services(workdir, f"sqlite:///{workdir / 'rate.db'}", which="ttp", extra_env={
        "TCMS_TTP__DISPUTE_BURST": "2", "TCMS_TTP__DISPUTE_PER_MINUTE": "0.01",
        "TCMS_TTP__DISPUTE_CONCURRENCY": "1"}).start()
    try:
        body = json.dumps(completed_bundle()).encode()
        filed = filing.filing_headers(ALICE, filing.core_of(json.loads(body)).cid, body,
                                      int(time.time()))
        # a filing whose body is slow to come holds the only dispute slot: the server says
        # "100 Continue" once the handler reads the body
        with socket.create_connection(("127.0.0.1", svc.ttp_port), timeout=30) as slow:
            head = "".join(f"{k}: {v}\r\n" for k, v in filed.items())
            slow.sendall(f"POST /dispute HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         f"application/json\r\nContent-Length: {len(body)}\r\n"
                         f"Expect: 100-continue\r\n{head}\r\n".encode())
            assert slow.recv(100).startswith(b"HTTP/1.1 100 Continue")
            r = file(svc.ttp, body, ALICE)
            assert r.status_code == 503 and r.json()["error"] == "dispute.busy"
            slow.sendall(body)
            assert b" 200 OK" in slow.recv(100)
        r = file(svc.ttp, body, ALICE)  # the third within the burst of 2
        assert r.status_code == 429 and r.json()["error"] == "dispute.rate"
        assert int(r.headers["Retry-After"]) > 60
        assert httpx.get(svc.ttp + "/health").status_code == 200
    finally:
        svc.stop()


# --- RACES exchanges, each raced by an abort and a resolve, on two TTP processes, one PostgreSQL


@pytest.mark.postgres
@pytest.mark.slow
async def test_abort_resolve_races_across_two_ttp_processes(workdir: Path) -> None:
    """Each exchange's abort and resolve are posted at once, one to each TTP process: each
    exchange ends with exactly one decision, which both racers get.  Not a speed test:
    at most IN_FLIGHT exchanges race at a time, a request waits as long as it must, and one
    the loaded machine lost on the way (a connection refused, reset or timed out) is posted
    again: the TTP answers a request it already decided with the stored decision, so a
    second post cannot make a second decision, and the checks below would see one."""
    pairs = []
    for _ in range(RACES):
        sender, receiver = accepted_run()
        abort = one(sender.handle(Tick(), DEADLINES.accept_by + 1), "abort")
        resolve = one(receiver.handle(Tick(), DEADLINES.m5_by + 1), "resolve")
        pairs.append((sender.cid, abort, resolve))
    async with pg_database() as url:
        a = Services(workdir, url, which="ttp").start()
        b = Services(workdir, url, which="ttp").start()
        try:
            in_flight = asyncio.Semaphore(IN_FLIGHT)
            # no request waits for a connection in the client's pool
            limits = httpx.Limits(max_connections=2 * IN_FLIGHT)
            timeout = httpx.Timeout(300, pool=None)
            async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
                async def post(base: str, path: str, data: bytes) -> bytes:
                    for attempt in range(5):
                        try:
                            r = await client.post(base + path, content=data, headers=CBOR)
                            break
                        except httpx.TransportError:
                            if attempt == 4:
                                raise
                    assert r.status_code == 200, r.text
                    return r.content

                async def race(i: int, abort: bytes, resolve: bytes) -> tuple[bytes, bytes]:
                    first, second = (a, b) if i % 2 else (b, a)
                    async with in_flight:
                        return await asyncio.gather(post(first.ttp, "/abort", abort),
                                                    post(second.ttp, "/resolve", resolve))

                raced = await asyncio.gather(*(race(i, abort, resolve)
                                               for i, (_, abort, resolve) in enumerate(pairs)))
                answers = [answer for pair in raced for answer in pair]
        finally:
            a.stop()
            b.stop()
        store = Store(url)
        try:
            outcomes = {"aborted": 0, "resolved": 0}
            for i, (cid, _, _) in enumerate(pairs):
                d = await ttp_store.get_decision(store, cid)
                assert d is not None
                outcomes[d.state] += 1
                # both racers got the one stored answer, byte for byte
                assert answers[2 * i] == answers[2 * i + 1] == d.answer
                assert decode_ttp_answer(d.answer).cid == cid
            assert sum(outcomes.values()) == RACES
            assert sum((await ttp_store.count_decisions(store)).values()) == RACES
            assert (await store.verify_audit_chain()) == (RACES, None)
            print(f"{RACES} abort/resolve races on two TTP processes: {outcomes}, one "
                  "decision each, both racers answered alike")
        finally:
            await store.close()


# --- TLS ----------------------------------------------------------------------------------------


def test_services_speak_tls_when_given_a_certificate(workdir: Path) -> None:
    res = sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-keyout tls.key -out tls.crt -days 2 -subj /CN=127.0.0.1 "
             "-addext subjectAltName=IP:127.0.0.1", workdir)
    assert res.returncode == 0, res.stderr
    svc = Services(workdir, f"sqlite:///{workdir / 'tls.db'}",
                   tls=(workdir / "tls.crt", workdir / "tls.key")).start()
    try:
        res = sh(f"curl -sS --cacert tls.crt {svc.ttp}/health", workdir)
        assert res.returncode == 0 and '"status":"ok"' in res.stdout, res.stderr
        res = sh(f"curl -sS {svc.tss}/health", workdir)  # an untrusted certificate is refused
        assert res.returncode != 0
    finally:
        svc.stop()
