"""Operations end to end (docs/operations.md), with the real stack of tests/gateways.py:
metrics scraped before and after an exchange; `tcms doctor` on a working configuration
and on broken ones; `tcms tx purge` on a moved clock."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gateways import GatewayProc, Orgs, move, query, settled, subject_starts, wait_mail
from mailstack import free_port
from prometheus_client.parser import text_string_to_metric_families
from services import PASSPHRASE
from test_gateway_e2e import certified, notice_for, send

from tcms.config_ops import MONTH
from tcms.keystore import Keystore

pytestmark = pytest.mark.slow
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def accepted_exchange(orgs: Orgs, subject: str, marker: str) -> str:
    """alice sends bob a certified mail, bob accepts; returns the exchange id once both
    gateways are done with it."""
    send(orgs, certified(f"[certified] {subject}", marker), ["bob@b.test"])
    uid, note = notice_for(orgs, "bob@b.test", subject)
    tx = str(note["TCMS-Notice"])
    move(orgs.proxy, "bob@b.test", uid, "Certified.Accept")
    wait_mail(orgs.proxy, "alice@a.test", subject_starts("Receipt:", subject))
    settled(tx, orgs.a, orgs.b)
    return tx


def test_metrics_change_as_an_exchange_runs(orgs: Orgs) -> None:
    a0, b0 = scrape(orgs.a.metrics), scrape(orgs.b.metrics)
    s0 = scrape(orgs.services.metrics_port)
    accepted_exchange(orgs, "Metered contract", "metrics-1")
    a1, b1 = scrape(orgs.a.metrics), scrape(orgs.b.metrics)
    s1 = scrape(orgs.services.metrics_port)

    def grew(before: Samples, after: Samples, name: str, by: float = 1, **labels: str) -> None:
        got = total(after, name, **labels) - total(before, name, **labels)
        assert got >= by, f"{name}{labels} grew by {got}, not {by}"

    # the sender's gateway: the submission in, m3 and m5 out, the receipt in alice's box
    grew(a0, a1, "tcms_gateway_mails_in_total", kind="submission")
    grew(a0, a1, "tcms_gateway_mails_out_total", to="peer", kind="m3")
    grew(a0, a1, "tcms_gateway_mails_out_total", to="mailbox", kind="receipt")
    grew(a0, a1, "tcms_gateway_round_trip_seconds_count", service="tss", kind="m1")
    grew(a0, a1, "tcms_gateway_accept_to_receipt_seconds_count")
    grew(a0, a1, "tcms_gateway_exchanges", role="sender", phase="done", state="ended")
    grew(a0, a1, "tcms_gateway_exchanges_ended_total", role="sender", outcome="done")
    # the recipient's gateway: protocol mail in, the notice and the original for bob
    grew(b0, b1, "tcms_gateway_mails_in_total", by=2, kind="protocol")  # m3 and m5
    grew(b0, b1, "tcms_gateway_mails_out_total", to="mailbox", kind="notice")
    grew(b0, b1, "tcms_gateway_mails_out_total", to="mailbox", kind="deliver")
    grew(b0, b1, "tcms_gateway_submission_to_notice_seconds_count")
    grew(b0, b1, "tcms_gateway_exchanges", role="receiver", state="ended")
    # nothing left waiting for this exchange; the SQL gauges were read
    for samples in (a1, b1):
        assert value(samples, "tcms_metrics_sql_up", source="gateway") == 1
        assert total(samples, "tcms_gateway_queue_quarantined") == 0
    # the services: the TSS signed m1's token, the DC answered lookups
    grew(s0, s1, "tcms_tss_tokens_issued_total", via="m1")
    grew(s0, s1, "tcms_http_requests_total", service="tss", route="/m1", status="200")
    assert total(s1, "tcms_dc_gateways") >= 2
    # a metrics endpoint is its own listener: the services' public ports serve none
    assert httpx.get(orgs.services.ttp + "/metrics", timeout=10).status_code == 404


# --- tcms doctor ------------------------------------------------------------------------------


def doctor(gw: GatewayProc, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`tcms doctor` on ``gw``'s configuration, with ``env`` changed (a broken setting)."""
    return subprocess.run([sys.executable, "-m", "tcms.cli", "doctor", *args],
                          env={**gw.env(), **env}, cwd=gw.workdir, capture_output=True,
                          text=True, timeout=300)


def failures(res: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in res.stdout.splitlines() if line.startswith("FAIL")]


def test_doctor_passes_on_a_working_configuration(orgs: Orgs) -> None:
    for gw in (orgs.a, orgs.b):  # PostgreSQL and SQLite
        res = doctor(gw)
        assert res.returncode == 0, res.stdout + res.stderr
        out = res.stdout
        # (the tests' certificates are valid for two days: a warning, not a failure)
        assert "warn  tls gateway: the certificate" in out and "expires on" in out
        assert "  mail signing: " in out and "FAIL  mail signing" not in out
        for line in ("ok  keys: the passphrase opens all",
                     "ok  database:", f"ok  upstream SMTP 127.0.0.1:{orgs.stack.smtp_port}",
                     "ok  master login", f"ok  dc registration {gw.domain}",
                     "ok  dc user keys", "ok  ttp:", "ok  tss:",
                     f"ok  mta route tcms-gateway@{gw.domain}: the MTA routes it"):
            assert line in out, f"{line!r} not in:\n{out}"
        assert "0 failed" in out
    # the probe left nothing behind: no work, no protocol state
    assert not query(orgs.a.db_url, "SELECT id FROM inbound WHERE status = 'probe'")


def expired_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now - dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (directory / "old.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "old.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return directory / "old.crt", directory / "old.key"


def test_doctor_names_the_fault_of_a_broken_configuration(orgs: Orgs, tmp_path: Path) -> None:
    gw = orgs.a
    # a key directory whose gateway key is not the one registered at the DC
    other = tmp_path / "other-keys"
    shutil.copytree(gw.workdir / "keys", other)
    Keystore(other, PASSPHRASE.encode()).create(gw.identity, "gateway", overwrite=True)
    cert, key = expired_certificate(tmp_path)
    broken = {
        "wrong passphrase": ({"TCMS_KEYS__PASSPHRASE": "not the passphrase"},
                             "FAIL  keys: the passphrase does not open"),
        "expired certificate": ({"TCMS_GATEWAY__TLS_CERT": str(cert),
                                 "TCMS_GATEWAY__TLS_KEY": str(key)},
                                "FAIL  tls gateway: the certificate"),
        "master login refused": ({"TCMS_GATEWAY__MASTER_PASSWORD": "wrong"},
                                 "FAIL  master login (gateway): the IMAP server refused"),
        "TTP down": ({"TCMS_TTP__URL": f"http://127.0.0.1:{free_port()}"},
                     "FAIL  ttp: the TTP at"),
        "DC key mismatch": ({"TCMS_KEYS__DIR": str(other)},
                            "FAIL  dc registration a.test: the DC has the key"),
        "TSS down": ({"TCMS_TSS__URL": f"http://127.0.0.1:{free_port()}"},
                     "FAIL  tss: the TSS at"),
    }
    for name, (env, fault) in broken.items():
        res = doctor(gw, **env)
        assert res.returncode == 1, f"{name}: {res.stdout}{res.stderr}"
        assert any(line.startswith(fault) for line in failures(res)), \
            f"{name}: {fault!r} not among {failures(res)}\n{res.stdout}"
        assert "fix: " in res.stdout
    assert "expired on" in doctor(gw, TCMS_GATEWAY__TLS_CERT=str(cert),
                                  TCMS_GATEWAY__TLS_KEY=str(key)).stdout


def test_doctor_finds_the_mta_route_missing(orgs: Orgs) -> None:
    gw = orgs.a
    port = orgs.stack.unroute(gw.protocol_address)
    try:
        res = doctor(gw, "--probe-wait", "10")
    finally:
        orgs.stack.route(gw.protocol_address, port)
    assert res.returncode == 1
    assert failures(res) == [f"FAIL  mta route {gw.protocol_address}: the probe did not "
                             f"reach the intake 127.0.0.1:{gw.intake} within 10s: the MTA "
                             f"does not route {gw.protocol_address} to the gateway"], \
        res.stdout
    assert "transport_maps" in res.stdout
    # once routed again, the probe comes round
    assert doctor(gw).returncode == 0


# --- retention ------------------------------------------------------------------------------


def tcms_cli(gw: GatewayProc, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tcms.cli", *args],
                          env={**gw.env(), **env}, cwd=gw.workdir, capture_output=True,
                          text=True, timeout=120)


def test_retention_purges_on_a_moved_clock_and_keeps_final_evidence(orgs: Orgs) -> None:
    gw = orgs.a
    tx = accepted_exchange(orgs, "Kept for thirty months", "retention-1")
    ((cid, sid),) = query(gw.db_url, "SELECT cid, submission_id FROM runs WHERE tx = ?", tx)
    exported = tcms_cli(gw, "tx", "export", tx)
    assert exported.returncode == 0, exported.stderr
    now = int(time.time())
    policy = {"TCMS_RETENTION__CIPHERTEXT": "30d"}

    def purge_at(seconds: int) -> str:
        res = tcms_cli(gw, "tx", "purge", "--now", str(now + seconds), **policy)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def same_evidence() -> None:
        again = tcms_cli(gw, "tx", "export", tx)
        assert again.returncode == 0 and again.stdout == exported.stdout, again.stderr
        res = orgs.verify(again.stdout.encode(), "retention-1.json")
        assert res.returncode == 0 and "VALID evidence" in res.stdout, res.stdout

    # the next day: the mail as submitted is gone (its pieces), the evidence is whole
    mail = "SELECT count(*) FROM pieces WHERE owner = ?", f"submission/{sid}"
    assert query(gw.db_url, *mail) != [(0,)]
    purge_at(86400)
    assert query(gw.db_url, *mail) == [(0,)]
    assert query(gw.db_url, "SELECT count(*) FROM messages WHERE cid = ?", cid) != [(0,)]
    same_evidence()
    # after a month: the protocol messages too; the evidence is still whole
    purge_at(31 * 86400)
    assert query(gw.db_url, "SELECT count(*) FROM messages WHERE cid = ?", cid) == [(0,)]
    same_evidence()
    # after 30 months: the exchange itself, and its c (its pieces)
    assert isinstance(cid, bytes)
    c_of = "SELECT count(*) FROM pieces WHERE owner LIKE ?", f"c/{cid.hex()}/%"
    assert query(gw.db_url, *c_of) != [(0,)]
    purge_at(30 * MONTH + 86400)
    assert query(gw.db_url, "SELECT count(*) FROM runs WHERE tx = ?", tx) == [(0,)]
    assert query(gw.db_url, *c_of) == [(0,)]
    gone = tcms_cli(gw, "tx", "export", tx)
    assert gone.returncode != 0 and "no exchange" in gone.stderr
