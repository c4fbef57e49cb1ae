"""`[gateway] workers`: more processes on the submission port (SO_REUSEPORT), each keeping
every guarantee of the first: untagged mail relayed byte for byte after the upstream's
250, certified mail stored and carried through the protocol."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from gateways import GatewayProc, Orgs, subject_starts, wait_mail
from mailstack import PATIENCE
from test_gateway_submission import raw_mail
from test_mailstack import wait_for
from test_ops_e2e import scrape, value

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_workers(orgs: Orgs) -> Iterator[GatewayProc]:
    gw = orgs.a.replica("workers")
    base_env = gw.env

    def env() -> dict[str, str]:
        return {**base_env(), "TCMS_GATEWAY__WORKERS": "2"}

    gw.env = env  # type: ignore[method-assign]
    gw.start()
    gw.wait_log("more submission worker process")
    yield gw
    gw.stop()


def lines(gw: GatewayProc, *needles: str) -> list[str]:
    return [line for line in gw.log_text().splitlines() if all(n in line for n in needles)]


def test_both_processes_relay_byte_for_byte(two_workers: GatewayProc, orgs: Orgs) -> None:
    gw, sent = two_workers, {}
    # new sessions until each process has relayed at least one (the kernel picks)
    for _ in range(200):
        marker = f"workers-{uuid.uuid4().hex[:12]}"
        sent[marker] = raw_mail("Through the workers", marker)
        with gw.smtp("alice@a.test") as s:
            s.sendmail("alice@a.test", ["bob@b.test"], sent[marker])
        by_worker = lines(gw, "[worker", "relayed untagged mail")
        if by_worker and len(lines(gw, "relayed untagged mail")) > len(by_worker):
            break
    else:
        pytest.fail("no mail went through the second process")
    for marker, raw in sent.items():
        got = wait_for(orgs.stack.imap_port, "bob@b.test", "bob-password", marker.encode())
        assert got.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").endswith(raw)


def test_certified_mail_taken_by_a_worker_goes_through(two_workers: GatewayProc,
                                                       orgs: Orgs) -> None:
    gw = two_workers
    for i in range(200):
        before = len(lines(gw, "[worker", "certified submission #"))
        subject = f"[certified] via a worker {uuid.uuid4().hex[:8]} {i}"
        with gw.smtp("alice@a.test") as s:
            s.sendmail("alice@a.test", ["bob@b.test"], raw_mail(subject, f"cw-{i}"))
        if len(lines(gw, "[worker", "certified submission #")) > before:
            break
    else:
        pytest.fail("no certified mail went through the second process")
    # the first process's metrics count what the worker took too (told through its pipe)
    stored = len(lines(gw, "certified submission #"))
    deadline = time.monotonic() + PATIENCE
    while value(scrape(gw.metrics), "tcms_gateway_mails_in_total", kind="submission") < stored:
        assert time.monotonic() < deadline, "the worker's submissions were never counted"
        time.sleep(0.1)
    assert value(scrape(gw.metrics), "tcms_gateway_mails_in_total", kind="submission") == stored
    wait_mail(orgs.proxy, "bob@b.test", subject_starts("Certified mail from",
                                                       subject.split("] ", 1)[1]))
