"""Prometheus metrics and the small operations HTTP server (/metrics, /healthz, /readyz).

Hot-path counts (trades, drops, rejects) are plain ints owned by the feeds and read at scrape
time by a collector: a prometheus ``Counter.inc()`` takes a lock and costs more per trade than
the aggregation itself. Everything else uses ordinary prometheus-client metrics. Each
``Metrics`` has its own registry so several streamers can run in one process (tests, the demo).
Every metric and family takes its name, help, labels and kind from the catalogue
(``streamer.core.contracts.metrics``) through ``counter``/``gauge``/``histogram``/``family``.
"""

from __future__ import annotations

import itertools
import logging
import time
from bisect import bisect_left
from collections import Counter as TallyCounter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from streamer.core.contracts import metrics as catalogue
from streamer.core.contracts.metrics import Kind

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# exchange-to-receipt lag buckets, seconds: a healthy feed sits in the first few
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(slots=True)
class FeedStats:
    """Counts one exchange feed keeps on the hot path; read by the collector at scrape time."""

    exchange: str
    trades: int = 0
    rejected: TallyCounter[str] = field(default_factory=TallyCounter)
    dropped: TallyCounter[str] = field(default_factory=TallyCounter)
    reconnects: TallyCounter[str] = field(default_factory=TallyCounter)
    connections_open: int = 0
    last_message_monotonic: float | None = None
    bars_complete: int = 0
    bars_incomplete: int = 0
    # minutes lacking a late/future trade that could not be queued for a REST repair
    repairs_dropped: int = 0
    # exchange-to-receipt lag of each frame's newest trade: counts per LAG_BUCKETS bound (the
    # last one: above every bound), and their sum in seconds
    lag_counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    lag_sum_s: float = 0.0

    def observe_lag(self, seconds: float) -> None:
        self.lag_counts[bisect_left(LAG_BUCKETS, seconds)] += 1
        self.lag_sum_s += seconds

    def lag_family(self, metric: HistogramMetricFamily) -> None:
        """Add this feed's lag histogram, in Prometheus' cumulative form, to ``metric``."""
        cumulative = list(itertools.accumulate(self.lag_counts))
        buckets = [(str(b), n) for b, n in zip(LAG_BUCKETS, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        metric.add_metric([self.exchange], buckets, self.lag_sum_s)


class WriterStats(Protocol):
    """What the buffered Redis writer exposes (streamer.io.store.BufferedBarWriter)."""

    @property
    def buffered(self) -> int: ...
    @property
    def dropped_total(self) -> int: ...
    @property
    def write_errors_total(self) -> int: ...
    @property
    def connected(self) -> bool: ...


Family = CounterMetricFamily | GaugeMetricFamily


def family(metric: catalogue.Metric, value: float | None = None) -> Family:
    """A scrape-time family named, documented and labelled by its catalogue entry; ``value``
    for an unlabelled one that has a single sample."""
    labels = list(metric.labels) if metric.labels else None
    if metric.kind is Kind.COUNTER:
        return CounterMetricFamily(metric.name, metric.help, value=value, labels=labels)
    if metric.kind is Kind.GAUGE:
        return GaugeMetricFamily(metric.name, metric.help, value=value, labels=labels)
    raise ValueError(f"{metric.name}: no scrape-time family for a {metric.kind}")


def _expect(metric: catalogue.Metric, kind: Kind) -> None:
    """Built as another kind, a metric would be exposed with a type its definition does not say."""
    if metric.kind is not kind:
        raise ValueError(f"{metric.name} is a {metric.kind} in the catalogue, not a {kind}")


def counter(metric: catalogue.Metric, registry: CollectorRegistry) -> Counter:
    _expect(metric, Kind.COUNTER)
    return Counter(metric.name, metric.help, metric.labels, registry=registry)


def gauge(metric: catalogue.Metric, registry: CollectorRegistry) -> Gauge:
    _expect(metric, Kind.GAUGE)
    return Gauge(metric.name, metric.help, metric.labels, registry=registry)


def histogram(
    metric: catalogue.Metric,
    registry: CollectorRegistry,
    buckets: tuple[float, ...] = LATENCY_BUCKETS,
) -> Histogram:
    _expect(metric, Kind.HISTOGRAM)
    return Histogram(metric.name, metric.help, metric.labels, buckets=buckets, registry=registry)


class _StatsCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        feeds = self._metrics.feeds
        trades = family(catalogue.TRADES)
        rejected = family(catalogue.FRAMES_REJECTED)
        dropped = family(catalogue.TRADES_DROPPED)
        reconnects = family(catalogue.FEED_RECONNECTS)
        bars = family(catalogue.BARS_CLOSED)
        repairs_dropped = family(catalogue.REPAIRS_DROPPED)
        connections = family(catalogue.FEED_CONNECTIONS)
        age = family(catalogue.FEED_LAST_MESSAGE_AGE)
        lag = HistogramMetricFamily(
            catalogue.FEED_LAG.name, catalogue.FEED_LAG.help, labels=list(catalogue.FEED_LAG.labels)
        )
        now = time.monotonic()
        for s in feeds:
            trades.add_metric([s.exchange], s.trades)
            for reason, n in sorted(s.rejected.items()):
                rejected.add_metric([s.exchange, reason], n)
            for reason, n in sorted(s.dropped.items()):
                dropped.add_metric([s.exchange, reason], n)
            for cause, n in sorted(s.reconnects.items()):
                reconnects.add_metric([s.exchange, cause], n)
            bars.add_metric([s.exchange, "true"], s.bars_complete)
            bars.add_metric([s.exchange, "false"], s.bars_incomplete)
            repairs_dropped.add_metric([s.exchange], s.repairs_dropped)
            connections.add_metric([s.exchange], s.connections_open)
            if s.last_message_monotonic is not None:
                age.add_metric([s.exchange], now - s.last_message_monotonic)
            s.lag_family(lag)
        yield from (trades, rejected, dropped, reconnects, bars, repairs_dropped, connections, age)
        yield lag

        writer = self._metrics.writer
        if writer is not None:
            yield family(catalogue.REDIS_BUFFERED_BARS, writer.buffered)
            yield family(catalogue.REDIS_DROPPED_BARS, writer.dropped_total)
            yield family(catalogue.REDIS_WRITE_ERRORS, writer.write_errors_total)
            yield family(catalogue.REDIS_UP, int(writer.connected))


class _ServingCollector(Collector):
    """Model, forecasts, MQTT and online evaluation, read from their owners at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        serving = self._metrics.serving
        if serving is None:
            return
        yield from serving.metric_families()


class ServingStats(Protocol):
    """What the app's serving side exposes to the metrics collector (see streamer.app)."""

    def metric_families(self) -> Iterable[Metric]: ...


class Metrics:
    """All of the streamer's metrics, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.feeds: list[FeedStats] = []
        self.writer: WriterStats | None = None
        r = self.registry
        self.backfill_requests = counter(catalogue.BACKFILL_REQUESTS, r)
        self.gaps_dropped = counter(catalogue.GAPS_DROPPED, r)
        self.repairs_given_up = counter(catalogue.REPAIRS_GIVEN_UP, r)
        self.backfill_bars = counter(catalogue.BACKFILL_BARS, r)
        self.rest_banned_until = gauge(catalogue.REST_BANNED_UNTIL, r)
        self.rest_used_weight = gauge(catalogue.REST_USED_WEIGHT, r)
        self.redis_write_seconds = histogram(catalogue.REDIS_WRITE_SECONDS, r)
        self.kline_crosscheck = counter(catalogue.KLINE_CROSSCHECK, r)
        self.info = gauge(catalogue.BUILD_INFO, r)
        self.inference_seconds = histogram(catalogue.INFERENCE_SECONDS, r)
        self.close_to_publish_seconds = histogram(catalogue.CLOSE_TO_PUBLISH_SECONDS, r)
        self.serving: ServingStats | None = None
        r.register(_ServingCollector(self))
        r.register(_StatsCollector(self))

    def add_feed(self, exchange: str) -> FeedStats:
        stats = FeedStats(exchange)
        self.feeds.append(stats)
        return stats

    def render(self) -> bytes:
        return generate_latest(self.registry)


Check = Callable[[], bool]


class OpsServer:
    """/metrics, /healthz (the event loop answers) and /readyz (every named check passes)."""

    def __init__(
        self, metrics: Metrics, host: str, port: int, ready_checks: dict[str, Check]
    ) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._checks = ready_checks
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def readiness(self) -> dict[str, bool]:
        return {name: bool(check()) for name, check in self._checks.items()}

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        log.info("ops server listening", extra={"host": self._host, "port": self.port})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics_handler(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), content_type="text/plain", charset="utf-8")

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks = self.readiness()
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)
