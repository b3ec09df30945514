"""Prometheus metrics and the small operations HTTP server (/metrics, /healthz, /readyz).

Hot-path counts (trades, drops, rejects) are plain ints owned by the feeds and read at scrape
time by a collector: a prometheus ``Counter.inc()`` takes a lock and costs more per trade than
the aggregation itself. Everything else uses ordinary prometheus-client metrics. Each
``Metrics`` has its own registry so several streamers can run in one process (tests, the demo).
"""

from __future__ import annotations

import logging
import time
from collections import Counter as TallyCounter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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


class _StatsCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        feeds = self._metrics.feeds
        trades = CounterMetricFamily(
            "tickcast_trades", "Trades accepted into bars", labels=["exchange"]
        )
        rejected = CounterMetricFamily(
            "tickcast_frames_rejected",
            "Frames rejected by the parser",
            labels=["exchange", "reason"],
        )
        dropped = CounterMetricFamily(
            "tickcast_trades_dropped",
            "Parsed trades dropped (late, duplicate, future, unknown_symbol)",
            labels=["exchange", "reason"],
        )
        reconnects = CounterMetricFamily(
            "tickcast_feed_reconnects",
            "WebSocket reconnects by cause",
            labels=["exchange", "cause"],
        )
        bars = CounterMetricFamily(
            "tickcast_bars_closed", "Bars closed by the aggregator", labels=["exchange", "complete"]
        )
        repairs_dropped = CounterMetricFamily(
            "tickcast_repairs_dropped",
            "Minutes lacking a late or future trade not re-fetched (repair list full)",
            labels=["exchange"],
        )
        connections = GaugeMetricFamily(
            "tickcast_feed_connections", "Open WebSocket connections", labels=["exchange"]
        )
        age = GaugeMetricFamily(
            "tickcast_feed_last_message_age_seconds",
            "Seconds since the feed's last WebSocket message",
            labels=["exchange"],
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
        yield from (trades, rejected, dropped, reconnects, bars, repairs_dropped, connections, age)

        writer = self._metrics.writer
        if writer is not None:
            yield GaugeMetricFamily(
                "tickcast_redis_buffered_bars",
                "Closed bars waiting to be written to Redis",
                value=writer.buffered,
            )
            yield CounterMetricFamily(
                "tickcast_redis_dropped_bars",
                "Bars dropped because the Redis buffer overflowed",
                value=writer.dropped_total,
            )
            yield CounterMetricFamily(
                "tickcast_redis_write_errors",
                "Failed Redis write rounds",
                value=writer.write_errors_total,
            )
            yield GaugeMetricFamily(
                "tickcast_redis_up",
                "1 when the last Redis round succeeded",
                value=int(writer.connected),
            )


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
        self.backfill_requests = Counter(
            "tickcast_backfill_requests_total",
            "REST backfill requests by outcome (ok, rate_limited, error)",
            ["exchange", "outcome"],
            registry=r,
        )
        self.gaps_dropped = Counter(
            "tickcast_gaps_dropped_total",
            "Feed gaps not queued for REST repair (the gap queue was full)",
            ["exchange"],
            registry=r,
        )
        self.backfill_bars = Counter(
            "tickcast_backfill_bars_total",
            "Bars fetched over REST backfill",
            ["exchange"],
            registry=r,
        )
        self.redis_write_seconds = Histogram(
            "tickcast_redis_write_seconds",
            "Latency of one Redis write round (all symbols closing together)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.kline_crosscheck = Counter(
            "tickcast_kline_crosscheck_total",
            "Aggregated bars compared with the exchange's own kline (match, mismatch)",
            ["exchange", "result"],
            registry=r,
        )
        self.info = Gauge("tickcast_build_info", "Streamer version", ["version"], registry=r)
        self.inference_seconds = Histogram(
            "tickcast_inference_seconds",
            "One batched onnxruntime call at a minute close",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.close_to_publish_seconds = Histogram(
            "tickcast_close_to_publish_seconds",
            "From a bar's close to its forecast acknowledged by the broker (or printed)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
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
