"""Prometheus metrics (tcms/metrics.py and each package's metrics module): the endpoint is
off unless configured and on loopback unless said otherwise; the SQL gauges count work
and exchanges on SQLite and PostgreSQL; the services' requests are counted by route."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
from conftest import TSA
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics as gateway_metrics
from gateway.queue import Queues
from tcms import metrics
from tcms.config_ops import MetricsConfig
from tcms.store import OutMessage, RunRecord, Store
from tss import metrics as tss_metrics
from tss.api import create_app as tss_app

T0 = 1_800_000_000


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_endpoint_is_off_by_default_and_on_loopback_unless_public() -> None:
    assert metrics.listener(MetricsConfig()) is None
    assert metrics.listener(MetricsConfig(listen="127.0.0.1:9464")) is not None
    assert MetricsConfig(listen="[::1]:9464").host == "::1"
    with pytest.raises(ValueError, match="not a loopback address"):
        MetricsConfig(listen="0.0.0.0:9464")
    assert MetricsConfig(listen="0.0.0.0:9464", public=True).port == 9464
    with pytest.raises(ValueError, match="HOST:PORT"):
        MetricsConfig(listen="9464")


async def test_gateway_gauges_are_read_from_sql_at_scrape_time(store: Store) -> None:
    q = Queues(store, lease=60, max_attempts=1)
    for i in range(3):
        await q.add_inbound(mail_from="x@y.test", rcpt=["tcms-gateway@b.test"],
                            peer="127.0.0.1", raw=b"m%d" % i, now=T0)
    (item,) = await q.claim_inbound(T0, limit=1)
    await q.fail("inbound", item.id, item.attempts, T0, "boom")  # quarantined at once
    await store.save_run(RunRecord(b"\1" * 32, "sender", "ab" * 16, "alice@a.test",
                                   "bob@b.test", "s", "await-m4", False, T0 - 1, b"state"),
                         now=T0, outbox=[OutMessage("peer", "m3", b"m3", "alice@a.test",
                                                    "bob@b.test")])
    await store.save_run(RunRecord(b"\2" * 32, "sender", "cd" * 16, "alice@a.test",
                                   "bob@b.test", "s", "done", True, None, b"state"), now=T0)
    gauges = metrics.SqlGauges("test-gateway", lambda: gateway_metrics.read(store, T0),
                                       registry=None)
    app = metrics.create_app([gauges.refresh])
    # the endpoint serves the default registry; this collector is read directly
    await gauges.refresh()
    got = {(f.name, tuple(s.labels.values())): s.value
           for f in gauges.collect() for s in f.samples}
    assert got[("tcms_gateway_queue_depth", ("inbound",))] == 2
    assert got[("tcms_gateway_queue_quarantined", ("inbound",))] == 1
    assert got[("tcms_gateway_queue_depth", ("outbox",))] == 1
    assert got[("tcms_gateway_queue_depth", ("deadline",))] == 1  # due at T0 - 1
    assert got[("tcms_gateway_exchanges", ("sender", "await-m4", "active"))] == 1
    assert got[("tcms_gateway_exchanges", ("sender", "done", "ended"))] == 1
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://m") as client:
        r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert ("tcms_metrics_sql_up", (("source", "test-gateway"),)) in samples(r.text)


async def test_a_failed_sql_read_keeps_the_last_values(tmp_path: object) -> None:
    calls: list[int] = []

    async def read() -> metrics.Families:
        calls.append(1)
        if len(calls) > 1:
            raise OSError("database down")
        return [metrics.gauge("tcms_test_value", "a test", [], [((), 7.0)])]

    g = metrics.SqlGauges("test-failing", read, registry=None)
    await g.refresh()
    await g.refresh()
    assert [s.value for f in g.collect() for s in f.samples] == [7.0]
    assert REGISTRY.get_sample_value("tcms_metrics_sql_up", {"source": "test-failing"}) == 0
    assert REGISTRY.get_sample_value("tcms_metrics_sql_errors_total",
                                     {"source": "test-failing"}) == 1


async def test_concurrent_scrapes_share_one_sql_read() -> None:
    """Scrapes that come while the SQL gauges are being read wait for that read instead of
    starting their own: a flood of scrapes costs one read (one connection) at a time."""
    calls: list[int] = []
    release = asyncio.Event()

    async def read() -> metrics.Families:
        calls.append(1)
        await release.wait()
        return [metrics.gauge("tcms_test_shared", "a test", [], [((), float(len(calls)))])]

    g = metrics.SqlGauges("test-shared", read, registry=None)
    app = metrics.create_app([g.refresh], registry=CollectorRegistry())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://m") as client:
        first = asyncio.create_task(client.get("/metrics"))
        while not calls:  # the first scrape is reading
            await asyncio.sleep(0)
        others = [asyncio.create_task(client.get("/metrics")) for _ in range(20)]
        for _ in range(10):  # loop steps, not time: each scrape has begun its refresh
            await asyncio.sleep(0)
        release.set()
        answers = await asyncio.gather(first, *others)
    assert all(r.status_code == 200 for r in answers)
    assert len(calls) == 1
    assert [s.value for f in g.collect() for s in f.samples] == [1.0]
    # once it is done, the next scrape reads again
    await g.refresh()
    assert len(calls) == 2


async def test_the_tss_counts_tokens_and_requests_by_route(tmp_path: object) -> None:
    from pathlib import Path

    from tcms.timestamp import make_request

    store = Store(f"sqlite:///{Path(str(tmp_path)) / 'tss.db'}")
    await store.upgrade()
    app = tss_app(store, TSA, clock=lambda: dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp())
    labels = {"service": "tss", "route": "/health", "status": "200"}
    before_tokens = REGISTRY.get_sample_value("tcms_tss_tokens_issued_total",
                                              {"via": "tsa"}) or 0
    before = REGISTRY.get_sample_value("tcms_http_requests_total", labels) or 0
    tsq, _ = make_request(b"\x01" * 32)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://tss") as client:
        r = await client.post("/tsa", content=tsq,
                              headers={"Content-Type": "application/timestamp-query"})
        assert r.status_code == 200
        assert (await client.get("/health")).status_code == 200
        missing = await client.get("/no/such/route")
        assert missing.status_code == 404
    assert REGISTRY.get_sample_value("tcms_tss_tokens_issued_total", {"via": "tsa"}) == \
        before_tokens + 1
    assert REGISTRY.get_sample_value("tcms_http_requests_total", labels) == before + 1
    assert (REGISTRY.get_sample_value("tcms_http_requests_total", {
        "service": "tss", "route": "unmatched", "status": "404"}) or 0) >= 1
    fams = await tss_metrics.read(store)
    assert [s.value for f in fams for s in f.samples] == [1.0]
    await store.close()
