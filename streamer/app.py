"""Composition root: settings in, named tasks in one TaskGroup, ordered shutdown.

Data path: feeds -> aggregators -> closed bars -> in-memory windows + buffered Redis writer.
Gaps (disconnects, start-up) are repaired from the exchange's REST API once their minutes close.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

import aiohttp

from streamer import __version__
from streamer.core.bars import BarAggregator
from streamer.core.exchanges import get_exchange
from streamer.core.types import MINUTE_MS, Bar, floor_minute
from streamer.core.windows import Windows
from streamer.io.backfill import BackfillError, RestBackfill
from streamer.io.feed import Feed, FeedOptions, Gap
from streamer.io.forecaster import ForecastSink
from streamer.io.metrics import Metrics, OpsServer
from streamer.io.publisher import MqttOptions, MqttPublisher
from streamer.io.serving import Serving
from streamer.io.sinks import DiscardSink, FanOutSink, MqttSink
from streamer.io.store import BarStore, BufferedBarWriter, MemoryBarStore, RedisBarStore
from streamer.io.systemd import SystemdNotifier
from streamer.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], int]
SHUTDOWN_TIMEOUT_S = 10.0
GAP_QUEUE_MAX = 1000
REPAIR_RETRY_S = 5.0
# the trade channel of each exchange (Binance's are configurable)
TRADE_CHANNELS = {"binance": ("trade",), "coinbase": ("matches",), "kraken": ("trade",)}


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def mqtt_options(settings: Settings) -> MqttOptions:
    assert settings.mqtt_url is not None
    return MqttOptions(
        url=settings.mqtt_url,
        username=settings.mqtt_username,
        password=settings.mqtt_password_value(),
        client_id=settings.mqtt_client_id,
        tls_ca_file=str(settings.mqtt_tls_ca_file) if settings.mqtt_tls_ca_file else None,
        tls_cert_file=str(settings.mqtt_tls_cert_file) if settings.mqtt_tls_cert_file else None,
        tls_key_file=str(settings.mqtt_tls_key_file) if settings.mqtt_tls_key_file else None,
        qos=settings.mqtt_qos,
        prefix=settings.mqtt_prefix,
        instance=settings.instance,
        queue_max=settings.mqtt_queue_max,
    )


class Streamer:
    """The streamer daemon. ``run()`` until ``request_stop()``; then it stops in order."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        store: BarStore | None = None,
        sink: ForecastSink | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.metrics.info.labels(__version__).set(1)
        self.windows = Windows(settings.window_memory_bars)
        if store is None:
            store = (
                RedisBarStore.from_url(
                    settings.redis_url,
                    cap=settings.window_cap,
                    password=settings.redis_password_value(),
                )
                if settings.redis_url
                else MemoryBarStore(cap=settings.window_cap)
            )
        self.store = store
        self.writer = BufferedBarWriter(store, max_bars=settings.redis_buffer_max_bars)
        self.writer.on_write_latency = self.metrics.redis_write_seconds.observe
        self.metrics.writer = self.writer
        self.aggregators: dict[str, BarAggregator] = {}
        self.feeds: dict[str, Feed] = {}
        self._clock_source = clock
        self._gaps: asyncio.Queue[Gap] = asyncio.Queue(GAP_QUEUE_MAX)
        self.gaps_repaired = 0
        self._stop = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self.backfills: dict[str, RestBackfill] = {}
        # watermark clock: per exchange, where the stored bars end (the restart's outage start)
        self._resume_ms: dict[str, int | None] = {}
        self.ops = OpsServer(
            self.metrics,
            settings.metrics_host,
            settings.metrics_port,
            {"feeds": self._feeds_connected, "store": lambda: self.writer.connected},
        )
        self.started = asyncio.Event()
        self.bar_listeners: list[Callable[[list[Bar]], None]] = []
        self.publisher: MqttPublisher | None = None
        if settings.mqtt_url:
            self.publisher = MqttPublisher(mqtt_options(settings))
            mqtt_sink = MqttSink(
                self.publisher,
                settings.eval_window_s,
                wall_clock_ms,
                self.metrics.close_to_publish_seconds.observe,
            )
            # an injected sink (the demo's console view) gets the forecasts as well
            sink = mqtt_sink if sink is None else FanOutSink(sink, mqtt_sink)
            self.ops.add_check(
                "mqtt", lambda: self.publisher is not None and self.publisher.connected
            )
        if sink is None:
            log.warning("no TICKCAST_MQTT_URL: forecasts are made and scored but not published")
            sink = DiscardSink()
        self.serving = Serving(
            settings,
            self.windows,
            sink,
            publisher=self.publisher,
            wall_clock_ms=wall_clock_ms,
            on_round=lambda inference_s, _close_s, _n: self.metrics.inference_seconds.observe(
                inference_s
            ),
        )
        self.metrics.serving = self.serving
        self.bar_listeners.append(self.serving.on_bars)
        self.ops.add_check("model", lambda: self.serving.ready)
        self.systemd = SystemdNotifier()

    # ---- clock ------------------------------------------------------------------------------

    def clock(self) -> int:
        """Exchange-time "now" that closes quiet minutes; 0 means unknown (watermark mode)."""
        if self._clock_source is not None:
            return self._clock_source()
        if self.settings.clock == "wall":
            return wall_clock_ms()
        return 0

    def _feeds_connected(self) -> bool:
        return bool(self.feeds) and all(f.connected for f in self.feeds.values())

    # ---- lifecycle --------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            await self.ops.start()
            try:
                if self.serving.watcher is not None:
                    # a model already in the registry serves from the first minute close on
                    await self.serving.watcher.check_once()
                await self._restore()
                self._build_feeds()
                await self._serve()
            finally:
                await self.ops.stop()
                await self.store.close()

    async def _serve(self) -> None:
        async with asyncio.TaskGroup() as tg:
            writer_task = tg.create_task(self.writer.run(), name="redis-writer")
            feed_tasks = [
                tg.create_task(feed.run(), name=f"feed-{name}") for name, feed in self.feeds.items()
            ]
            background = [
                tg.create_task(self._tick(), name="bar-clock"),
                tg.create_task(self._repair_gaps(), name="gap-repair"),
                tg.create_task(self.serving.forecaster.run(), name="forecaster"),
                tg.create_task(self.systemd.watchdog(), name="systemd-watchdog"),
            ]
            if self.serving.watcher is not None:
                background.append(tg.create_task(self.serving.watcher.run(), name="model-watch"))
            publisher_task = None
            if self.publisher is not None:
                publisher_task = tg.create_task(self.publisher.run(), name="mqtt-publisher")
            # What start-up built (modules, restored windows) lives as long as the process:
            # out of the collector's generations, it is not rescanned at every full collection
            # (a full pass over it took up to 100 ms of a minute close with 1,000 symbols).
            gc.freeze()
            self.started.set()
            self.systemd.notify("READY=1")
            log.info("streamer started", extra={"feeds": list(self.feeds)})
            await self._stop.wait()
            log.info("streamer stopping")
            self.systemd.notify("STOPPING=1")
            # 1. stop the feeds, 2. close and store the partial bars, 3. drain the publish
            # queue and disconnect MQTT (status: offline), 4. drain the Redis writer
            for feed in self.feeds.values():
                feed.stop()
            await asyncio.wait(feed_tasks, timeout=SHUTDOWN_TIMEOUT_S)
            for task in background:
                task.cancel()
            partial: list[Bar] = []
            for agg in self.aggregators.values():
                partial.extend(agg.flush())
            if partial:
                self.windows.apply(partial)
                self.writer.submit(partial)
            if self.publisher is not None:
                await self.publisher.close(SHUTDOWN_TIMEOUT_S)
                if publisher_task is not None:
                    publisher_task.cancel()
            await self.writer.flush(SHUTDOWN_TIMEOUT_S)
            writer_task.cancel()
            for task in feed_tasks:
                task.cancel()
            await self.serving.close()
        log.info("streamer stopped")

    # ---- start-up ---------------------------------------------------------------------------

    async def _restore(self) -> None:
        """Windows from the store, then the gap to now from REST, then seed the aggregators."""
        now = self.clock()
        for exchange_name, symbols in self.settings.feeds().items():
            exchange = get_exchange(exchange_name)
            assert self._session is not None
            backfill = RestBackfill(
                exchange, self.settings.rest_url(exchange_name), self._session, self.metrics
            )
            self.backfills[exchange_name] = backfill
            agg = BarAggregator(
                exchange_name,
                grace_ms=self.settings.grace_ms,
                future_tolerance_ms=self.settings.future_tolerance_ms,
                clock=self.clock if self.clock() > 0 else None,
            )
            self.aggregators[exchange_name] = agg
            resume: int | None = None
            for symbol in symbols:
                try:
                    stored = await self.store.load(
                        exchange_name, symbol, self.settings.window_memory_bars
                    )
                except Exception as exc:  # a down Redis must not stop start-up
                    log.warning(
                        "cannot restore window", extra={"symbol": symbol, "error": repr(exc)[:200]}
                    )
                    stored = []
                self.windows.apply(stored)
                if now > 0:
                    await self._startup_backfill(backfill, symbol, stored, now)
                elif stored:
                    # watermark clock: no "now" to backfill up to. The outage runs from the
                    # first unfinished stored minute until the first trade; the feed dates its
                    # end by that trade and reports it once its minutes have closed.
                    incomplete = [b.open_time_ms for b in stored if not b.complete]
                    point = min(incomplete) if incomplete else stored[-1].close_time_ms
                    resume = point if resume is None else min(resume, point)
                seed = self._seed_bar((exchange_name, symbol), now)
                if seed is not None:
                    agg.seed(seed)
            self._resume_ms[exchange_name] = resume

    def _seed_bar(self, key: tuple[str, str], now: int) -> Bar | None:
        """The newest stored bar of a closed minute: the aggregator continues after it.

        A partial bar stored at shutdown for the minute still running now is skipped: this run
        aggregates that minute again (as an outage, so backfill repairs it once it closes).
        """
        current = floor_minute(now) if now > 0 else None
        for bar in reversed(self.windows.tail(key, 2)):
            if current is None and not bar.complete:
                continue  # watermark clock: the stop's partial bar is aggregated again
            if current is None or bar.open_time_ms < current:
                return bar
        return None

    async def _startup_backfill(
        self, backfill: RestBackfill, symbol: str, stored: list[Bar], now: int
    ) -> None:
        end = floor_minute(now)  # every closed minute; the current one is the feed's
        earliest = end - self.settings.backfill_max_minutes * MINUTE_MS
        incomplete = [b.open_time_ms for b in stored if not b.complete]
        if incomplete:
            start = min(incomplete)
        elif stored:
            start = stored[-1].close_time_ms
        else:
            start = earliest
        start = max(start, earliest)
        if start >= end:
            return
        try:
            bars = await backfill.fetch(symbol, start, end)
        except BackfillError as exc:
            log.warning("start-up backfill failed", extra={"symbol": symbol, "error": str(exc)})
            return
        self._apply_repair(bars)

    def _build_feeds(self) -> None:
        s = self.settings
        options = FeedOptions(
            stale_after_s=s.stale_feed_s,
            reconnect_initial_s=s.reconnect_initial_s,
            reconnect_max_s=s.reconnect_max_s,
            max_frame_bytes=s.max_frame_bytes,
            rotate_margin_s=s.rotate_margin_s,
        )
        now = self.clock()
        for exchange_name, symbols in s.feeds().items():
            channels: list[str] = [*s.binance_channels] if exchange_name == "binance" else []
            channels = channels or [*TRADE_CHANNELS[exchange_name]]
            self.feeds[exchange_name] = Feed(
                get_exchange(exchange_name),
                symbols,
                channels,
                s.ws_url(exchange_name),
                self.aggregators[exchange_name],
                self.metrics.add_feed(exchange_name),
                self.clock,
                on_bars=self._on_bars,
                on_gap=self._on_gap,
                on_kline=self._on_kline_bar(exchange_name, channels),
                options=options,
                # the current minute began before we connected: it is a gap until backfilled
                gap_start_ms=floor_minute(now) if now > 0 else self._resume_ms.get(exchange_name),
            )

    # ---- bars -------------------------------------------------------------------------------

    def _on_bars(self, bars: list[Bar]) -> None:
        self.windows.apply(bars)
        # Listeners first: the forecaster's task then wakes before the Redis writer's, and the
        # writer's round runs while the first inference chunk computes on the worker thread.
        for listener in self.bar_listeners:
            listener(bars)
        self.writer.submit(bars)

    def _on_kline_bar(
        self, exchange_name: str, channels: list[str]
    ) -> Callable[[Bar], None] | None:
        """With only kline_1m subscribed, exchange klines are the bars; with trades, a check."""
        if "kline_1m" not in channels:
            return None
        if channels == ["kline_1m"]:
            return lambda bar: self._on_bars([bar])

        def crosscheck(bar: Bar) -> None:
            ours = self.windows.last(bar.key)
            if ours is None or ours.open_time_ms != bar.open_time_ms or not ours.complete:
                return
            same = (ours.open, ours.high, ours.low, ours.close, ours.trades) == (
                bar.open,
                bar.high,
                bar.low,
                bar.close,
                bar.trades,
            ) and abs(ours.volume - bar.volume) <= 1e-9 * max(1.0, bar.volume)
            result = "match" if same else "mismatch"
            self.metrics.kline_crosscheck.labels(exchange_name, result).inc()

        return crosscheck

    async def _tick(self) -> None:
        """Close minutes by the clock, so that quiet markets still close bars."""
        while True:
            for feed in self.feeds.values():
                feed.on_clock()
            await asyncio.sleep(self.settings.tick_interval_s)

    # ---- gaps -------------------------------------------------------------------------------

    def _on_gap(self, gap: Gap) -> None:
        try:
            self._gaps.put_nowait(gap)
        except asyncio.QueueFull:
            self.metrics.gaps_dropped.labels(gap.exchange).inc()
            log.error("gap queue full, gap not repaired", extra={"gap": repr(gap)})

    async def _repair_gaps(self) -> None:
        """Backfill each gap once its last minute has closed; retry while REST fails."""
        while True:
            gap = await self._gaps.get()
            end = floor_minute(gap.end_ms) + MINUTE_MS  # the gap's last minute, exclusive
            # the injected clock has no event to wait on: poll it at the tick interval
            while self.clock() and self.clock() < end + self.settings.grace_ms:  # noqa: ASYNC110
                await asyncio.sleep(self.settings.tick_interval_s)
            backfill = self.backfills[gap.exchange]
            for symbol in gap.symbols:
                while True:
                    try:
                        bars = await backfill.fetch(symbol, floor_minute(gap.start_ms), end)
                        self._apply_repair(bars)
                        break
                    except (BackfillError, OSError, ConnectionError) as exc:
                        log.warning(
                            "gap repair failed, retrying",
                            extra={"symbol": symbol, "error": str(exc)[:200]},
                        )
                        await asyncio.sleep(REPAIR_RETRY_S)
            self.gaps_repaired += 1
            log.info(
                "gap repaired",
                extra={"exchange": gap.exchange, "start_ms": gap.start_ms, "end_ms": gap.end_ms},
            )

    def _apply_repair(self, bars: list[Bar]) -> None:
        """Backfilled bars replace the window's (incomplete) ones; Redis gets them in order."""
        if not bars:
            return
        self.windows.apply(bars)
        self.writer.submit_repair(bars)
        for listener in self.bar_listeners:
            listener(bars)
