"""What every package's Prometheus metrics share (docs/operations.md lists the names).

- ``instrument(app, service)``: every HTTP request a service (TSS, TTP, DC) answers,
  counted by route template and status, with its latency;
- ``SqlGauges``: gauges read from SQL at scrape time (queue depths, exchanges by phase,
  decisions...), so that several instances sharing one PostgreSQL report the same values
  and nothing is kept up to date per mail;
- ``listener(config, refreshers)``: the endpoint itself (``GET /metrics``), a small HTTP
  server of its own on the ``[metrics] listen`` address, off by default.

Counters and histograms live in the default registry of ``prometheus_client``, one per
process; an increment costs well under a microsecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tcms.config_ops import MetricsConfig
from tcms.web import Listener

log = logging.getLogger("tcms.metrics")
REFRESH_TIMEOUT = 10.0  # seconds a scrape waits for the SQL gauges
# latencies of network round trips (seconds) and of steps a person takes (up to days)
ROUND_TRIP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HUMAN_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 3 * 86400, 7 * 86400)

HTTP_REQUESTS = Counter("tcms_http_requests", "HTTP requests a service answered",
                        ["service", "route", "status"])
HTTP_SECONDS = Histogram("tcms_http_request_seconds", "Time to answer an HTTP request",
                         ["service", "route"], buckets=ROUND_TRIP_BUCKETS)
SCRAPE_ERRORS = Counter("tcms_metrics_sql_errors", "Scrapes whose SQL gauges could not be "
                        "read (the values of the previous scrape were served)", ["source"])
SQL_UP = Gauge("tcms_metrics_sql_up", "1 if the last scrape read the SQL gauges", ["source"])


def route_of(scope: dict[str, Any]) -> str:
    """The route template that answered (``/keys/{address}``), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class _HttpMetrics:
    """Pure ASGI middleware: one counter increment and one observation per request."""

    def __init__(self, app: Any, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def sending(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                status[0] = int(message.get("status", 500))
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            route = route_of(scope)
            HTTP_REQUESTS.labels(self.service, route, str(status[0])).inc()
            HTTP_SECONDS.labels(self.service, route).observe(time.perf_counter() - start)


def instrument(app: FastAPI, service: str) -> FastAPI:
    """Count and time every request ``app`` answers, under ``service``."""
    app.add_middleware(_HttpMetrics, service=service)
    return app


Families = list[Metric]
Reader = Callable[[], Awaitable[Families]]


class SqlGauges(Collector):
    """Gauges whose values a scrape reads from SQL first (``refresh``), then serves.  A
    failed read keeps the previous values and sets ``tcms_metrics_sql_up{source}`` to 0.
    Concurrent scrapes share one read."""

    def __init__(self, source: str, read: Reader,
                 registry: CollectorRegistry | None = REGISTRY) -> None:
        self.source = source
        self.read = read
        self._families: Families = []
        self._reading: asyncio.Future[None] | None = None
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return []  # values are known only after a refresh: never collected at registration

    def collect(self) -> Iterable[Metric]:
        return list(self._families)

    async def refresh(self) -> None:
        """Read the gauges; a scrape that comes during a read waits for that one (however
        many scrapes come at once, one read and one connection at a time)."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._refresh())
        await asyncio.shield(self._reading)

    async def _refresh(self) -> None:
        try:
            self._families = await asyncio.wait_for(self.read(), REFRESH_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            SCRAPE_ERRORS.labels(self.source).inc()
            SQL_UP.labels(self.source).set(0)
            log.warning("metrics: cannot read the %s gauges: %r", self.source, exc)
            return
        SQL_UP.labels(self.source).set(1)

    def close(self, registry: CollectorRegistry = REGISTRY) -> None:
        with contextlib.suppress(KeyError):
            registry.unregister(self)


def gauge(name: str, doc: str, labels: Sequence[str],
          rows: Iterable[tuple[Sequence[str], float]]) -> GaugeMetricFamily:
    """One gauge family from (label values, value) rows."""
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in rows:
        family.add_metric([str(v) for v in values], float(value))
    return family


def create_app(refreshers: Sequence[Callable[[], Awaitable[None]]] = (),
               registry: CollectorRegistry = REGISTRY) -> FastAPI:
    """``GET /metrics`` in the Prometheus text format; the SQL gauges are read first."""
    app = FastAPI(title="TCMS metrics", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    async def metrics() -> Response:
        await asyncio.gather(*(r() for r in refreshers))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def listener(config: MetricsConfig,
             refreshers: Sequence[Callable[[], Awaitable[None]]] = ()) -> Listener | None:
    """The metrics endpoint of this process, or None when ``[metrics] listen`` is unset."""
    if not config.listen:
        return None
    return Listener(create_app(refreshers), config.host, config.port)
