"""Composition root: settings in, named tasks in one TaskGroup, ordered shutdown.

``Streamer.run()`` is ``startup()`` (ops server, the model already in the registry, windows
restored from the store and brought up to date over REST, the feeds built), ``main_loop()``
(every task running in one TaskGroup until a stop is requested) and ``shutdown()`` (feeds,
partial bars, MQTT, Redis, in that order, each with a timeout).

Data path: feeds -> aggregators -> closed bars -> in-memory windows + buffered Redis writer.
Gaps (disconnects, start-up) are repaired from the exchange's REST API once their minutes close.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from streamer import __version__
from streamer.core.bars import BarAggregator
from streamer.core.clock import Clock, ClockMode, wall_clock_ms
from streamer.core.exchanges import get_exchange
from streamer.core.gaps import Gap
from streamer.core.paging import quiet_lead_in
from streamer.core.repair import RepairItem, RepairQueue
from streamer.core.retry import Permanent, Transient
from streamer.core.startup import backfill_range, feed_outage_start, resume_point, seed_bar
from streamer.core.types import Bar
from streamer.core.windows import Windows
from streamer.io.backfill import BackfillError, RestBackfill
from streamer.io.feed import Feed, FeedOptions
from streamer.io.forecaster import ForecastSink
from streamer.io.metrics import Metrics, OpsServer
from streamer.io.publisher import MqttOptions, MqttPublisher
from streamer.io.serving import Serving
from streamer.io.sinks import DiscardSink, FanOutSink, MqttSink
from streamer.io.store import BarStore, BufferedBarWriter, MemoryBarStore, RedisBarStore
from streamer.io.systemd import SystemdNotifier
from streamer.io.waits import wait_event
from streamer.settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0
# the trade channel of each exchange (Binance's are configurable)
TRADE_CHANNELS = {
    "binance": ("trade",),
    "coinbase": ("matches",),
    "kraken": ("trade",),
    "okx": ("trades",),
    "bybit": ("publicTrade",),
    "bitstamp": ("live_trades",),
}


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
        clock: Callable[[], int] | None = None,
        store: BarStore | None = None,
        sink: ForecastSink | None = None,
    ) -> None:
        """``clock``: a clock reading in epoch ms to use instead of the wall clock (tests run
        the streamer on the replay exchange's clock)."""
        self.settings = settings
        self.clock = clock_of(settings.clock, clock)
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
        self.repairs = RepairQueue()
        self._repair_wake = asyncio.Event()
        self._set_aside_logged: set[tuple[str, str]] = set()
        self._stop = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self.backfills: dict[str, RestBackfill] = {}
        # watermark clock: per exchange, where each stored window stops (the restart's outage)
        self._resume_points: dict[str, list[int | None]] = {}
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

    @property
    def gaps_repaired(self) -> int:
        """Gaps whose every symbol was refilled over REST or, failing for good, set aside."""
        stats = self.repairs.stats
        return stats.gaps_repaired + stats.gaps_partly_repaired

    def _feeds_connected(self) -> bool:
        return bool(self.feeds) and all(f.connected for f in self.feeds.values())

    # ---- lifecycle --------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """``startup()``, then ``main_loop()`` until a stop is requested, then ``shutdown()``."""
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            try:
                await self.startup()
                async with asyncio.TaskGroup() as tg:
                    tasks = self._start_tasks(tg)
                    await self.main_loop()
                    await self.shutdown(tasks)
                log.info("streamer stopped")
            finally:
                await self.ops.stop()
                await self.store.close()

    async def startup(self) -> None:
        """Serve /metrics, load the model already in the registry (it serves from the first
        minute close on), restore the windows and bring them up to date, build the feeds."""
        await self.ops.start()
        if self.serving.watcher is not None:
            await self.serving.watcher.check_once()
        await self._restore()
        self._build_feeds()

    def _start_tasks(self, tg: asyncio.TaskGroup) -> _Tasks:
        tasks = _Tasks(
            writer=tg.create_task(self.writer.run(), name="redis-writer"),
            feeds=[
                tg.create_task(feed.run(), name=f"feed-{name}") for name, feed in self.feeds.items()
            ],
            background=[
                tg.create_task(self._tick(), name="bar-clock"),
                tg.create_task(self._repair_gaps(), name="gap-repair"),
                tg.create_task(self.serving.forecaster.run(), name="forecaster"),
                tg.create_task(self.systemd.watchdog(), name="systemd-watchdog"),
            ],
        )
        if self.serving.watcher is not None:
            tasks.background.append(tg.create_task(self.serving.watcher.run(), name="model-watch"))
        if self.publisher is not None:
            tasks.publisher = tg.create_task(self.publisher.run(), name="mqtt-publisher")
        return tasks

    async def main_loop(self) -> None:
        """Announce readiness, then run until a stop is requested."""
        # What start-up built (modules, restored windows) lives as long as the process:
        # out of the collector's generations, it is not rescanned at every full collection
        # (a full pass over it took up to 100 ms of a minute close with 1,000 symbols).
        gc.freeze()
        self.started.set()
        self.systemd.notify("READY=1")
        log.info("streamer started", extra={"feeds": list(self.feeds)})
        await self._stop.wait()

    async def shutdown(self, tasks: _Tasks) -> None:
        """1. stop the feeds, 2. close and store the partial bars, 3. drain the publish queue
        and disconnect MQTT (status: offline), 4. drain the Redis writer."""
        log.info("streamer stopping")
        self.systemd.notify("STOPPING=1")
        for feed in self.feeds.values():
            feed.stop()
        await asyncio.wait(tasks.feeds, timeout=SHUTDOWN_TIMEOUT_S)
        for task in tasks.background:
            task.cancel()
        partial: list[Bar] = []
        for agg in self.aggregators.values():
            partial.extend(agg.flush())
        if partial:
            self.windows.apply(partial)
            self.writer.submit(partial)
        if self.publisher is not None:
            await self.publisher.close(SHUTDOWN_TIMEOUT_S)
            if tasks.publisher is not None:
                tasks.publisher.cancel()
        await self.writer.flush(SHUTDOWN_TIMEOUT_S)
        tasks.writer.cancel()
        for task in tasks.feeds:
            task.cancel()
        await self.serving.close()

    # ---- start-up ---------------------------------------------------------------------------

    async def _restore(self) -> None:
        """Windows from the store, then the gap to now from REST, then seed the aggregators
        (the plan: ``streamer.core.startup``)."""
        now = self.clock.now()
        for exchange_name, symbols in self.settings.feeds().items():
            exchange = get_exchange(exchange_name)
            assert self._session is not None
            backfill = RestBackfill(
                exchange,
                self.settings.rest_url(exchange_name),
                self._session,
                self.metrics,
                clock=self.clock.read if self.clock.has_reading else wall_clock_ms,
            )
            self.backfills[exchange_name] = backfill
            agg = BarAggregator(
                exchange_name,
                grace_ms=self.settings.grace_ms,
                future_tolerance_ms=self.settings.future_tolerance_ms,
                clock=self.clock.read if self.clock.has_reading else None,
            )
            self.aggregators[exchange_name] = agg
            resume_points = self._resume_points.setdefault(exchange_name, [])
            for symbol in symbols:
                stored = await self._load_window(exchange_name, symbol)
                self.windows.apply(stored)
                if now is None:
                    resume_points.append(resume_point(stored))
                else:
                    span = backfill_range(stored, now, self.settings.backfill_max_minutes)
                    if span is not None:
                        await self._startup_backfill(backfill, symbol, *span)
                seed = seed_bar(self.windows.tail((exchange_name, symbol), 2), now)
                if seed is not None:
                    agg.seed(seed)

    async def _load_window(self, exchange: str, symbol: str) -> list[Bar]:
        try:
            return await self.store.load(exchange, symbol, self.settings.window_memory_bars)
        except Exception as exc:  # a down Redis must not stop start-up
            log.warning("cannot restore window", extra={"symbol": symbol, "error": repr(exc)[:200]})
            return []

    async def _startup_backfill(
        self, backfill: RestBackfill, symbol: str, start_ms: int, end_ms: int
    ) -> None:
        try:
            bars = await backfill.fetch(symbol, start_ms, end_ms)
        except BackfillError as exc:
            log.warning("start-up backfill failed", extra={"symbol": symbol, "error": str(exc)})
            if not exc.permanent:  # the repair queue tries again later
                self._on_gap(Gap(backfill.exchange.name, (symbol,), start_ms, end_ms - 1))
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
        now = self.clock.now()
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
                gap_start_ms=feed_outage_start(now, self._resume_points.get(exchange_name, [])),
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
        if self.repairs.add(gap):
            self._repair_wake.set()
            return
        self.metrics.gaps_dropped.labels(gap.exchange).inc()
        log.error("gap queue full, gap not repaired", extra={"gap": repr(gap)})

    async def _repair_gaps(self) -> None:
        """Backfill each gap's symbols once its minutes have closed (``streamer.core.repair``:
        a failing symbol waits for its retry, or is set aside for good, and blocks nothing)."""
        repairs = self.repairs
        grace = self.settings.grace_ms
        while True:
            item = repairs.next_due(self.clock.now(), time.monotonic(), grace)
            if item is None:
                self._repair_wake.clear()
                wait = repairs.wake_in(self.clock.now(), time.monotonic(), grace)
                if len(repairs) and self.clock.has_reading:
                    # the clock has no event to wait on: read it again at the tick interval
                    wait = min(wait or self.settings.tick_interval_s, self.settings.tick_interval_s)
                await wait_event(self._repair_wake, wait)
                continue
            await self._repair(item)

    async def _repair(self, item: RepairItem) -> None:
        backfill = self.backfills[item.exchange]
        try:
            bars = await backfill.fetch(item.symbol, item.start_ms, item.end_ms)
        except (BackfillError, OSError) as exc:
            failure: BaseException = exc
            if isinstance(exc, BackfillError):
                failure = (
                    Permanent(str(exc))
                    if exc.permanent
                    else Transient(str(exc), retry_after_s=exc.retry_after_s)
                )
            decision = self.repairs.failed(item, failure, time.monotonic())
            detail = {"symbol": item.symbol, "error": str(exc)[:200]}
            if decision.retry:
                log.warning(
                    "gap repair failed, retrying",
                    extra=detail | {"retry_in_s": round(decision.delay_s, 1)},
                )
                return
            self.metrics.repairs_given_up.labels(item.exchange).inc()
            if (item.exchange, item.symbol) not in self._set_aside_logged:  # once per symbol
                self._set_aside_logged.add((item.exchange, item.symbol))
                log.error(
                    "gap repair given up; its minutes stay incomplete (logged once per symbol)",
                    extra=detail | {"reason": decision.reason},
                )
            return
        before = self.windows.before((item.exchange, item.symbol), item.start_ms)
        bars = quiet_lead_in(backfill.exchange, bars, item.start_ms, item.end_ms, before)
        self._apply_repair(bars)
        gap = self.repairs.succeeded(item)
        if gap is not None:
            log.info(
                "gap repaired",
                extra={"exchange": gap.exchange, "start_ms": gap.start_ms, "end_ms": gap.end_ms},
            )

    def _apply_repair(self, bars: list[Bar]) -> None:
        """Backfilled bars replace the window's (incomplete) ones, and the flat bars after them
        carry the repaired close on; Redis gets them in order."""
        if not bars:
            return
        bars = [*bars, *self.windows.apply_repair(bars)]
        self.writer.submit_repair(bars)
        for listener in self.bar_listeners:
            listener(bars)
        for bar in bars:  # the flat bars still to close carry the repaired close on
            aggregator = self.aggregators.get(bar.exchange)
            if aggregator is not None:
                aggregator.repaired(bar)


@dataclass(slots=True)
class _Tasks:
    """The tasks of ``main_loop``, by the order in which ``shutdown`` stops them."""

    writer: asyncio.Task[None]
    feeds: list[asyncio.Task[None]]
    background: list[asyncio.Task[None]]
    publisher: asyncio.Task[None] | None = None


def clock_of(mode: str, reading: Callable[[], int] | None) -> Clock:
    """The daemon's clock: an injected reading, else the wall clock or none (watermark)."""
    if reading is not None:
        return Clock(ClockMode.WALL, reading)
    return Clock.wall() if ClockMode(mode) is ClockMode.WALL else Clock.watermark()
