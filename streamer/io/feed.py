"""Exchange WebSocket feed: connect, subscribe, shuttle frames into the pure parser and aggregator.

One ``Feed`` per exchange owns one task per connection (streams are split by the exchange's
per-connection limit) plus a stale-feed watchdog. Each connection reconnects on its own with a
capped, jittered backoff that resets once a connection delivers data; new attempts across the
feed are spaced by the exchange's connection-rate limit; connections are rotated before the
exchange's own cut (Binance: 24 h). Every disconnect is reported as a gap so that the minutes it
overlaps come out incomplete and are backfilled over REST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI, PayloadTooBig
from websockets.frames import CloseCode

from streamer.core.backoff import Backoff
from streamer.core.bars import BarAggregator
from streamer.core.exchanges import ConnectionPlan, Exchange, FrameError
from streamer.core.types import MINUTE_MS, Bar, Trade, floor_minute
from streamer.io.metrics import FeedStats

log = logging.getLogger(__name__)

Clock = Callable[[], int]
SUBSCRIBE_SPACING_S = 0.25
# the end of an outage that is still going on: every minute from its start is suspect
OPEN_OUTAGE_END_MS = 2**62


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch of exchange time when a connection received nothing; its bars need backfill."""

    exchange: str
    symbols: tuple[str, ...]
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class FeedOptions:
    stale_after_s: float = 30.0
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0
    max_frame_bytes: int = 1 << 20
    rotate_margin_s: float = 900.0
    open_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    close_timeout_s: float = 2.0


class _Connection:
    """State of one live WebSocket connection, shared with the watchdog."""

    __slots__ = ("last_clock_ms", "last_message", "opened_at", "stale", "ws")

    def __init__(self, ws: ClientConnection, clock_ms: int) -> None:
        self.ws = ws
        self.opened_at = time.monotonic()
        self.last_message = self.opened_at
        self.last_clock_ms = clock_ms  # injected-clock time of the last frame: where a gap starts
        self.stale = False


class Feed:
    def __init__(
        self,
        exchange: Exchange,
        symbols: list[str],
        channels: list[str],
        ws_url: str,
        aggregator: BarAggregator,
        stats: FeedStats,
        clock: Clock,
        on_bars: Callable[[list[Bar]], None],
        on_gap: Callable[[Gap], None],
        on_kline: Callable[[Bar], None] | None = None,
        options: FeedOptions | None = None,
        gap_start_ms: int | None = None,
    ) -> None:
        self.exchange = exchange
        self.symbols = frozenset(symbols)
        self.plans = exchange.connections(ws_url, symbols, channels)
        self.aggregator = aggregator
        self.stats = stats
        self._clock = clock
        self._on_bars = on_bars
        self._on_gap = on_gap
        self._on_kline = on_kline
        self.options = options or FeedOptions()
        self._live: dict[int, _Connection] = {}
        self._next_connect_at = 0.0
        self._connect_lock = asyncio.Lock()
        self._logged_reasons: set[str] = set()
        self._stopping = asyncio.Event()
        # per plan: exchange time since which it has received nothing (None = not in a gap)
        self._gap_start: dict[int, int | None] = {i: gap_start_ms for i in range(len(self.plans))}
        # Watermark clock only (no clock reading; exchange time is known from trades alone):
        # plans reconnected but waiting for a trade to date their outage's end (the watermark
        # at the reconnect), and gaps held back until the aggregator has closed their minutes.
        self._closing: dict[int, int] = {}
        self._unreleased: list[Gap] = []

    def stop(self) -> None:
        """Ask every connection to close; ``run`` returns once they have."""
        self._stopping.set()
        for conn in self._live.values():
            _abort(conn.ws)

    @property
    def connected(self) -> bool:
        return len(self._live) == len(self.plans)

    async def run(self) -> None:
        # an outage known up front (the start-up minute) is open until a connection delivers:
        # minutes the clock closes before then must come out incomplete
        for index, start in self._gap_start.items():
            if start is not None:
                self.aggregator.mark_outage(start, OPEN_OUTAGE_END_MS, self.plans[index].symbols)
        async with asyncio.TaskGroup() as tg:
            for i, plan in enumerate(self.plans):
                tg.create_task(self._run_connection(i, plan), name=f"feed-{self.exchange.name}-{i}")
            tg.create_task(self._watchdog(), name=f"feed-{self.exchange.name}-watchdog")

    # ---- the hot path -------------------------------------------------------------------------

    def handle_frame(self, raw: bytes | str) -> None:
        """Parse one frame and feed its trades to the aggregator. Never raises on bad input."""
        try:
            events = self.exchange.parse(raw)
        except FrameError as exc:
            self._reject(exc.reason, exc.detail or str(raw)[:200])
            return
        symbols = self.symbols
        for event in events:
            if type(event) is Trade:
                if event.symbol not in symbols:
                    self.stats.dropped["unknown_symbol"] += 1
                    continue
                closed = self.aggregator.add(event)
                if closed:
                    self._emit(closed)
            elif isinstance(event, Bar) and self._on_kline is not None and event.symbol in symbols:
                self._on_kline(event)

    def _reject(self, reason: str, sample: str) -> None:
        self.stats.rejected[reason] += 1
        if reason not in self._logged_reasons:  # once per kind, with a sample
            self._logged_reasons.add(reason)
            log.warning(
                "frame rejected",
                extra={"exchange": self.exchange.name, "reason": reason, "sample": sample[:200]},
            )

    def _emit(self, bars: list[Bar]) -> None:
        for bar in bars:
            if bar.complete:
                self.stats.bars_complete += 1
            else:
                self.stats.bars_incomplete += 1
        self._on_bars(bars)

    def on_clock(self) -> None:
        """Close minutes by the injected clock (quiet markets) and refresh the hot-path counts."""
        now = self._clock()
        if now > 0:
            closed = self.aggregator.on_clock(now)
            if closed:
                self._emit(closed)
        agg = self.aggregator
        if now <= 0 and (self._closing or self._unreleased):
            self._watermark_gaps()
        suspects = agg.take_suspects()
        if suspects is not None:
            # closed minutes whose bars lack a late or future trade: re-fetch them over REST,
            # whose bars hold every trade, like the minutes of an outage
            first, last, symbols = suspects
            self._on_gap(Gap(self.exchange.name, tuple(sorted(symbols)), first, last))
        self.stats.trades = agg.accepted
        self.stats.dropped["late"] = agg.late
        self.stats.dropped["duplicate"] = agg.duplicates
        self.stats.dropped["future"] = agg.future
        self.stats.repairs_dropped = agg.suspects_dropped

    # ---- connections --------------------------------------------------------------------------

    async def _stopped_within(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless ``stop()`` comes first; True once stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def _wait_connect_slot(self) -> bool:
        """Space connection attempts across the whole feed by the exchange's rate limit.

        Returns False when the feed is stopping instead."""
        async with self._connect_lock:
            delay = self._next_connect_at - time.monotonic()
            if delay > 0 and await self._stopped_within(delay):
                return False
            self._next_connect_at = time.monotonic() + 1.0 / self.exchange.connect_attempts_per_s
        return not self._stopping.is_set()

    async def _run_connection(self, index: int, plan: ConnectionPlan) -> None:
        opts = self.options
        backoff = Backoff(opts.reconnect_initial_s, opts.reconnect_max_s)
        name = self.exchange.name
        while await self._wait_connect_slot():
            cause = "error"
            conn: _Connection | None = None
            try:
                async with connect(
                    plan.url,
                    max_size=opts.max_frame_bytes,
                    open_timeout=opts.open_timeout_s,
                    ping_interval=opts.ping_interval_s,
                    ping_timeout=opts.ping_interval_s,
                    close_timeout=opts.close_timeout_s,
                    compression=None,
                    max_queue=64,
                ) as ws:
                    conn = _Connection(ws, self._clock())
                    if self._stopping.is_set():  # stop() came while we were connecting
                        _abort(ws)
                        return
                    self._live[index] = conn
                    self.stats.connections_open += 1
                    try:
                        for n, message in enumerate(plan.subscribe):
                            if n:  # Binance takes at most 5 incoming messages/s per connection
                                await asyncio.sleep(SUBSCRIBE_SPACING_S)
                            await ws.send(message)
                        log.info("feed connected", extra={"exchange": name, "connection": index})
                        cause = await self._receive(index, conn, backoff)
                        if cause == "rotate":
                            await self._close_draining(conn)
                    finally:
                        self._live.pop(index, None)
                        self.stats.connections_open -= 1
            except PayloadTooBig:
                cause = "frame_too_large"
            except ConnectionClosed as exc:
                if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                    cause = "frame_too_large"  # websockets refused the frame and closed
                elif conn is not None and conn.stale:
                    cause = "stale"
                else:
                    cause = "closed"
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                cause = "connect_failed"
                log.warning(
                    "feed connect failed",
                    extra={"exchange": name, "connection": index, "error": repr(exc)[:200]},
                )
            if self._stopping.is_set():
                return
            if cause == "frame_too_large":
                self._reject("frame_too_large", f"> {opts.max_frame_bytes} bytes")
            if conn is not None:
                self._open_gap(index, conn)
            self.stats.reconnects[cause] += 1
            delay = 0.0 if cause == "rotate" else backoff.next_delay()
            log.warning(
                "feed disconnected",
                extra={"exchange": name, "connection": index, "cause": cause, "retry_in_s": delay},
            )
            if delay and await self._stopped_within(delay):
                return

    async def _receive(self, index: int, conn: _Connection, backoff: Backoff) -> str:
        """Pump frames until the connection ends; returns why it ended."""
        max_age = self.exchange.max_connection_age_s
        rotate_after = None if max_age is None else max(max_age - self.options.rotate_margin_s, 1.0)
        first = True
        handle = self.handle_frame
        clock = self._clock
        async for raw in conn.ws:
            now = time.monotonic()
            conn.last_message = now
            conn.last_clock_ms = clock()
            self.stats.last_message_monotonic = now
            if first:
                # The first reply comes after the exchange has taken our subscription (Binance:
                # its ack), so from here on trades flow and the outage ends now, even if a quiet
                # market sends nothing for a while. A connection that delivers is a success:
                # the backoff starts afresh.
                first = False
                backoff.reset()
                self._close_gap(index)
            handle(raw)
            if rotate_after is not None and now - conn.opened_at > rotate_after:
                return "rotate"
        return "stale" if conn.stale else "closed"

    async def _close_draining(self, conn: _Connection) -> None:
        """Close gracefully while still aggregating what was sent before our close frame.

        Reading on matters: once ``max_queue`` frames sit unread, websockets stops reading the
        socket, never sees the exchange's close frame and waits out the whole close timeout
        (under load, every rotation would stall the feed that long)."""
        ws = conn.ws
        async with asyncio.TaskGroup() as tg:
            tg.create_task(ws.close(), name=f"feed-{self.exchange.name}-close")
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    conn.last_clock_ms = self._clock()
                    self.handle_frame(raw)

    def _open_gap(self, index: int, conn: _Connection) -> None:
        """A connection ended: from its last frame on, this plan's symbols may miss trades.

        The gap starts ``grace_ms`` before the clock reading at the last frame: trades still in
        flight then (exchange time behind the clock by up to the grace, which is what the grace
        allows for) are lost, and the minutes they belong to must not come out complete. The
        outage stays open until a new connection delivers, so that minutes the clock closes
        meanwhile are incomplete too. On the watermark clock the newest trade seen stands in for
        the clock reading."""
        self._closing.pop(index, None)  # down again before a trade dated the last reconnect
        if self._gap_start[index] is not None:
            return  # already in a gap: nothing arrived since
        last = conn.last_clock_ms if conn.last_clock_ms > 0 else self.aggregator.watermark_ms
        if last is None or last <= 0:
            return  # no trade yet, nothing to date it by
        start = max(last - self.aggregator.grace_ms, 0)
        self._gap_start[index] = start
        self.aggregator.mark_outage(start, OPEN_OUTAGE_END_MS, self.plans[index].symbols)

    def _close_gap(self, index: int) -> None:
        start = self._gap_start[index]
        if start is None:
            return
        end = self._clock()
        if end <= 0:
            # watermark clock: "now" is the time of the first trade after this reconnect, which
            # _watermark_gaps finds; till then the outage stays open
            self._closing[index] = self.aggregator.watermark_ms or 0
            return
        self._gap_start[index] = None
        self._end_gap(index, start, end)

    def _end_gap(self, index: int, start: int, end: int) -> None:
        end = max(end, start)
        self.aggregator.mark_outage(start, end, self.plans[index].symbols)
        gap = Gap(self.exchange.name, self.plans[index].symbols, start, end)
        if self._clock() > 0:
            self._on_gap(gap)  # the app waits for its minutes to close by the clock
        else:
            self._unreleased.append(gap)

    def _watermark_gaps(self) -> None:
        """Watermark clock: end the outages of reconnected plans once a trade has come, and
        report gaps once the aggregator has closed their last minute, so that the REST bars of
        every minute of the gap exist when they are fetched (nothing waits on a clock)."""
        watermark = self.aggregator.watermark_ms
        if watermark is not None:
            for index, seen in list(self._closing.items()):
                start = self._gap_start[index]
                if watermark > seen and start is not None:
                    del self._closing[index]
                    self._gap_start[index] = None
                    self._end_gap(index, start, watermark)
        closed = self.aggregator.closed_before_ms
        if closed is None or not self._unreleased:
            return
        due = [g for g in self._unreleased if floor_minute(g.end_ms) + MINUTE_MS <= closed]
        if due:
            self._unreleased = [g for g in self._unreleased if g not in due]
            for gap in due:
                self._on_gap(gap)

    async def _watchdog(self) -> None:
        """Force a reconnect of any connection silent for longer than ``stale_after_s``."""
        interval = min(self.options.stale_after_s / 4, 1.0)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            now = time.monotonic()
            for conn in list(self._live.values()):
                if not conn.stale and now - conn.last_message > self.options.stale_after_s:
                    conn.stale = True
                    log.warning("feed stale, reconnecting", extra={"exchange": self.exchange.name})
                    _abort(conn.ws)


def _abort(ws: ClientConnection) -> None:
    """Drop the TCP connection at once: the receive loop ends with ``ConnectionClosedError``."""
    if ws.transport is not None:
        ws.transport.abort()
