"""Operations end to end (docs/operations.md), with the real stack of tests/gateways.py:
metrics scraped before and after an exchange; `tcms tx purge` on a moved clock."""

from __future__ import annotations

import httpx
import pytest
from gateways import Orgs, move, settled, subject_starts, wait_mail
from prometheus_client.parser import text_string_to_metric_families
from test_gateway_e2e import certified, notice_for, send

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
