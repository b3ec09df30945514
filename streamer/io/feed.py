"""Exchange WebSocket feed: connect, subscribe, shuttle frames into the pure parser, aggregator
and outage tracker.

One ``Feed`` per exchange owns one task per connection (streams are split by the exchange's
per-connection limit) plus a stale-feed watchdog. The shell only moves frames and time: what a
lost connection means for the bars (an outage marked on the aggregator, a gap for REST repair)
is decided by the pure ``OutageTracker`` (``streamer.core.gaps``), which the shell tells when a
connection is lost, when a new one delivers its first frame and when the bar clock ticks.

Each connection reconnects on its own. Every failure is transient to a feed (exchanges come
back; the URL was checked at start-up), so it never gives up: delays come from a
``RetryPolicy`` with no attempt limit (capped, jittered, reset once a connection delivers).
New attempts across the feed are spaced by the exchange's connection-rate limit; connections
are rotated before the exchange's own cut (Binance: 24 h), reconnecting without a delay.
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

from streamer.core.bars import BarAggregator
from streamer.core.clock import Clock
from streamer.core.exchanges import ConnectionPlan, Exchange, FrameError
from streamer.core.exchanges.base import TradeIdMark
from streamer.core.gaps import Gap, OutageTracker, TradeIdContinuity
from streamer.core.retry import Backoff, RetryPolicy, Transient
from streamer.core.types import Bar, Trade
from streamer.io.feed_websocket import abort
from streamer.io.metrics import FeedStats
from streamer.io.waits import wait_event

log = logging.getLogger(__name__)

# spacing of a connection's subscribe messages where the venue states no message limit
SUBSCRIBE_SPACING_S = 0.25
# every message a client sends counts against a venue's message limit (Binance: 5 a second,
# pings and pongs included, else it closes with 1008): room is left in every second for one
# keepalive ping and one pong to the venue's ping
KEEPALIVE_MESSAGES_PER_S = 2


def subscribe_spacing_s(exchange: Exchange) -> float:
    """The pause between two subscribe messages on one connection."""
    limit = exchange.rules.max_client_messages_per_s
    if limit is None:
        return SUBSCRIBE_SPACING_S
    return 1.0 / max(limit - KEEPALIVE_MESSAGES_PER_S, 1)


# causes of a planned replacement (make-before-break): the next connection opens at once
PLANNED_CAUSES = frozenset({"rotate", "server_shutdown"})
# what ends a connection or fails an attempt, and is retried: see ``disconnect_cause``
CONNECTION_ERRORS = (
    PayloadTooBig,
    ConnectionClosed,
    OSError,
    TimeoutError,
    InvalidHandshake,
    InvalidURI,
)


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


def disconnect_cause(exc: BaseException, stale: bool) -> str:
    """Why a connection ended or an attempt failed (one of ``CONNECTION_ERRORS``), as the
    ``reconnects`` label. ``stale``: the watchdog aborted the connection."""
    if isinstance(exc, PayloadTooBig):
        return "frame_too_large"
    if isinstance(exc, ConnectionClosed):
        if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
            return "frame_too_large"  # websockets refused the frame and closed
        return "stale" if stale else "closed"
    return "connect_failed"


class _Connection:
    """State of one live WebSocket connection, shared with the watchdog and its successor."""

    __slots__ = (
        "delivered",
        "last_clock_ms",
        "last_message",
        "opened_at",
        "plan",
        "released",
        "stale",
        "successor_reason",
        "successor_wanted",
        "ws",
    )

    def __init__(
        self,
        ws: ClientConnection,
        plan: int,
        clock_ms: int | None,
        successor_wanted: asyncio.Event,
    ) -> None:
        self.ws = ws
        self.plan = plan
        self.opened_at = time.monotonic()
        self.last_message = self.opened_at
        # the clock reading at the last frame (None: watermark clock): where a gap starts
        self.last_clock_ms = clock_ms
        self.stale = False
        self.delivered = False  # its first frame came: the exchange took the subscription
        # make-before-break: set when this connection should be replaced (rotation, the
        # exchange's shutdown notice); ``released`` once the successor delivers
        self.successor_wanted = successor_wanted
        self.successor_reason = ""
        self.released = asyncio.Event()

    def want_successor(self, reason: str) -> None:
        if not self.successor_wanted.is_set():
            self.successor_reason = reason
            self.successor_wanted.set()


class _Attempt:
    """One connection attempt of a plan, as its supervisor sees it: the connection once open,
    and the event its connection sets when it wants a successor."""

    __slots__ = ("conn", "successor_wanted")

    def __init__(self) -> None:
        self.conn: _Connection | None = None
        self.successor_wanted = asyncio.Event()


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
        """``gap_start_ms``: every connection is in a gap from there until it delivers (the
        start-up minute began before we connected)."""
        self.exchange = exchange
        self.symbols = frozenset(symbols)
        self.plans = exchange.connections(ws_url, symbols, channels)
        self.aggregator = aggregator
        self.stats = stats
        self._clock = clock
        # the clock's reading per frame, for the lag histogram (None: the watermark clock)
        self._read_clock = clock.read if clock.has_reading else None
        self._on_bars = on_bars
        self._on_gap = on_gap
        self._on_kline = on_kline
        self.options = options or FeedOptions()
        # no max_attempts: a feed never gives up
        self._retry = RetryPolicy(self.options.reconnect_initial_s, self.options.reconnect_max_s)
        self._tracker = OutageTracker(
            exchange.name,
            [plan.symbols for plan in self.plans],
            clock.mode,
            aggregator.grace_ms,
            gap_start_ms,
        )
        self._live: set[_Connection] = set()
        self._continuity = TradeIdContinuity() if exchange.rules.sequential_trade_ids else None
        self._next_connect_at = 0.0
        self._connect_lock = asyncio.Lock()
        self._logged_reasons: set[str] = set()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask every connection to close; ``run`` returns once they have."""
        self._stopping.set()
        for conn in self._live:
            abort(conn.ws)

    @property
    def connected(self) -> bool:
        return len({conn.plan for conn in self._live}) == len(self.plans)

    async def run(self) -> None:
        # an outage known up front (the start-up minute) is open until a connection delivers:
        # minutes the clock closes before then must come out incomplete
        self._carry_out()
        async with asyncio.TaskGroup() as tg:
            for i, plan in enumerate(self.plans):
                tg.create_task(self._run_connection(i, plan), name=f"feed-{self.exchange.name}-{i}")
            tg.create_task(self._watchdog(), name=f"feed-{self.exchange.name}-watchdog")

    # ---- the hot path -------------------------------------------------------------------------

    def handle_frame(self, raw: bytes | str) -> bool:
        """Parse one frame and feed its trades to the aggregator. Never raises on bad input.
        True when the exchange asks for a new connection (a ``Reconnect`` notice)."""
        try:
            events = self.exchange.parse(raw)
        except FrameError as exc:
            self._reject(exc.reason, exc.detail or str(raw)[:200])
            return False
        symbols = self.symbols
        continuity = self._continuity
        reconnect = False
        newest_ms = 0
        for event in events:
            if type(event) is Trade:
                if event.symbol not in symbols:
                    self.stats.dropped["unknown_symbol"] += 1
                    continue
                if event.ts_ms > newest_ms:
                    newest_ms = event.ts_ms
                if continuity is not None:
                    missed = continuity.trade(event.symbol, event.trade_id, event.ts_ms)
                    if missed is not None:
                        self._missed(event.symbol, missed)
                closed = self.aggregator.add(event)
                if closed:
                    self._emit(closed)
            elif isinstance(event, Bar):
                if self._on_kline is not None and event.symbol in symbols:
                    self._on_kline(event)
            elif type(event) is TradeIdMark:
                if continuity is not None and event.symbol in symbols:
                    missed = continuity.mark(event.symbol, event.last_trade_id, event.ts_ms)
                    if missed is not None:
                        self._missed(event.symbol, missed)
            else:
                reconnect = True  # a Reconnect notice
        if newest_ms and self._read_clock is not None:
            self.stats.observe_lag((self._read_clock() - newest_ms) / 1000)
        return reconnect

    def _missed(self, symbol: str, stretch: tuple[int, int]) -> None:
        """Trades of ``symbol`` never arrived in ``stretch`` (a trade-id jump): repair it."""
        self._tracker.missed(symbol, *stretch)
        self._carry_out()

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
        """Close minutes by the clock (quiet markets), hand the tracker the tick and the
        aggregator's suspects, and refresh the hot-path counts."""
        agg = self.aggregator
        now = self._clock.now()
        if now is not None:
            closed = agg.on_clock(now)
            if closed:
                self._emit(closed)
        tracker = self._tracker
        tracker.tick(agg.watermark_ms, agg.closed_before_ms)
        suspects = agg.take_suspects()
        if suspects is not None:
            tracker.suspects(*suspects)
        self._carry_out()
        self.stats.trades = agg.accepted
        self.stats.dropped["late"] = agg.late
        self.stats.dropped["duplicate"] = agg.duplicates
        self.stats.dropped["future"] = agg.future
        self.stats.repairs_dropped = agg.suspects_dropped

    def _carry_out(self) -> None:
        """Do what the tracker decided: mark its outages, then hand out its gaps."""
        for outage in self._tracker.take_outages():
            self.aggregator.mark_outage(outage.start_ms, outage.end_ms, outage.symbols)
        for gap in self._tracker.take_gaps():
            self._on_gap(gap)

    # ---- connections --------------------------------------------------------------------------

    async def _stopped_within(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless ``stop()`` comes first; True once stopping."""
        return await wait_event(self._stopping, seconds)

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
        """Keep one connection of ``plan`` delivering, reconnecting with the retry policy's
        delays. A connection due for rotation or told by the exchange that it will go
        (``serverShutdown``) is replaced make-before-break: the next one opens while it still
        delivers, and it closes once the next one delivers, so nothing is missed and no gap
        opens (trades that both deliver are dropped as duplicates by trade id)."""
        backoff = self._retry.backoff()
        predecessor: _Connection | None = None
        async with asyncio.TaskGroup() as sessions:
            while await self._wait_connect_slot():
                if predecessor is not None and predecessor not in self._live:
                    predecessor = None  # it ended before a successor delivered
                attempt = _Attempt()
                session = sessions.create_task(
                    self._session(index, plan, backoff, attempt, predecessor),
                    name=f"feed-{self.exchange.name}-{index}",
                )
                if await self._until_ended_or_successor_wanted(session, attempt.successor_wanted):
                    predecessor = attempt.conn  # it keeps delivering while the next one opens
                    continue
                cause = session.result()
                if self._stopping.is_set():
                    return
                delay = self._reconnect_delay(cause, backoff)
                if delay and await self._stopped_within(delay):
                    return

    @staticmethod
    async def _until_ended_or_successor_wanted(
        session: asyncio.Task[str], successor_wanted: asyncio.Event
    ) -> bool:
        """Wait for ``session`` to end; True as soon as its connection wants a successor."""
        wanted = asyncio.ensure_future(successor_wanted.wait())
        try:
            await asyncio.wait((session, wanted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            wanted.cancel()
        return successor_wanted.is_set() and not session.done()

    async def _session(
        self,
        index: int,
        plan: ConnectionPlan,
        backoff: Backoff,
        attempt: _Attempt,
        predecessor: _Connection | None,
    ) -> str:
        """One connection's life: connect, subscribe, pump frames until it ends; returns the
        cause, which ``reconnects`` counts. Once it delivers, ``predecessor`` is released."""
        opts = self.options
        name = self.exchange.name
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
                conn = _Connection(ws, index, self._clock.now(), attempt.successor_wanted)
                attempt.conn = conn
                if self._stopping.is_set():  # stop() came while we were connecting
                    abort(ws)
                    return "stopped"
                self._live.add(conn)
                self.stats.connections_open += 1
                closer = asyncio.create_task(self._close_once_released(conn))
                keepalive = asyncio.create_task(self._keepalive(conn))
                # subscribed while receiving: the paced messages of a large plan take seconds,
                # and frames unread meanwhile would reach the aggregator late
                subscriber = asyncio.create_task(self._subscribe(conn, plan))
                try:
                    log.info("feed connected", extra={"exchange": name, "connection": index})
                    cause = await self._receive(conn, backoff, predecessor, subscriber)
                finally:
                    subscriber.cancel()
                    closer.cancel()
                    keepalive.cancel()
                    self._live.discard(conn)
                    self.stats.connections_open -= 1
        except CONNECTION_ERRORS as exc:
            cause = disconnect_cause(exc, conn is not None and conn.stale)
            if cause == "connect_failed":
                log.warning(
                    "feed connect failed",
                    extra={"exchange": name, "connection": index, "error": repr(exc)[:200]},
                )
        if conn is not None and conn.released.is_set():
            cause = conn.successor_reason  # replaced by a delivering successor: no gap
        if self._stopping.is_set():
            return "stopped"
        if cause == "frame_too_large":
            self._reject("frame_too_large", f"> {opts.max_frame_bytes} bytes")
        if conn is not None and not conn.released.is_set() and not self._plan_delivering(index):
            self._tracker.connection_lost(index, conn.last_clock_ms, self.aggregator.watermark_ms)
            self._carry_out()
            if self._continuity is not None:
                self._continuity.forget(plan.symbols)
        self.stats.reconnects[cause] += 1
        log.warning(
            "feed disconnected",
            extra={"exchange": name, "connection": index, "cause": cause},
        )
        return cause

    def _plan_delivering(self, index: int) -> bool:
        """Another connection of plan ``index`` is live and delivering."""
        return any(c.plan == index and c.delivered for c in self._live)

    def _reconnect_delay(self, cause: str, backoff: Backoff) -> float:
        """No delay after a planned replacement (nothing failed), else the retry policy's.
        Every cause is transient and the policy has no attempt limit: the feed never gives up."""
        if cause in PLANNED_CAUSES:
            return 0.0
        return self._retry.decide(Transient(cause), backoff).delay_s

    async def _receive(
        self,
        conn: _Connection,
        backoff: Backoff,
        predecessor: _Connection | None,
        subscriber: asyncio.Task[None],
    ) -> str:
        """Pump frames until the connection ends; returns why it ended. The connection
        delivers from the first frame after its last subscribe message went out."""
        max_age = self.exchange.max_connection_age_s
        rotate_after = None if max_age is None else max(max_age - self.options.rotate_margin_s, 1.0)
        handle = self.handle_frame
        read = self._clock.read if self._clock.has_reading else None
        async for raw in conn.ws:
            now = time.monotonic()
            conn.last_message = now
            if read is not None:
                conn.last_clock_ms = read()
            self.stats.last_message_monotonic = now
            if not conn.delivered and subscriber.done():
                # The first reply comes after the exchange has taken our subscription (Binance:
                # its ack), so from here on trades flow and the outage ends now, even if a quiet
                # market sends nothing for a while. A connection that delivers is a success:
                # the backoff starts afresh, and the connection it replaces may go.
                conn.delivered = True
                backoff.reset()
                self._tracker.first_frame(
                    conn.plan, conn.last_clock_ms, self.aggregator.watermark_ms
                )
                self._carry_out()
                if predecessor is not None:
                    predecessor.released.set()
            if handle(raw):
                conn.want_successor("server_shutdown")
            if rotate_after is not None and now - conn.opened_at > rotate_after:
                conn.want_successor("rotate")
        return "stale" if conn.stale else "closed"

    async def _subscribe(self, conn: _Connection, plan: ConnectionPlan) -> None:
        """Send the plan's subscribe messages, paced within the venue's message limit."""
        spacing = subscribe_spacing_s(self.exchange)
        with contextlib.suppress(ConnectionClosed):  # the receive loop sees the end too
            for n, message in enumerate(plan.subscribe):
                if n:
                    await asyncio.sleep(spacing)
                await conn.ws.send(message)

    async def _keepalive(self, conn: _Connection) -> None:
        """Send the venue's application-level ping (OKX ``ping``, Bybit ``{"op":"ping"}``) at
        its interval: those venues drop a connection that stays quiet, whatever WebSocket
        pings it gets."""
        message = self.exchange.rules.keepalive_message
        if message is None:
            return
        interval = self.exchange.rules.keepalive_interval_s
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(interval)
                await conn.ws.send(message)

    async def _close_once_released(self, conn: _Connection) -> None:
        """Close ``conn`` gracefully once its successor delivers. Its receive loop reads on
        meanwhile, aggregating what was sent before our close frame: once ``max_queue`` frames
        sit unread, websockets stops reading the socket, never sees the exchange's close frame
        and waits out the whole close timeout (under load, every rotation would stall)."""
        await conn.released.wait()
        await conn.ws.close()

    async def _watchdog(self) -> None:
        """Force a reconnect of any connection silent for longer than ``stale_after_s``."""
        interval = min(self.options.stale_after_s / 4, 1.0)
        while not await self._stopped_within(interval):
            now = time.monotonic()
            for conn in list(self._live):
                if not conn.stale and now - conn.last_message > self.options.stale_after_s:
                    conn.stale = True
                    log.warning("feed stale, reconnecting", extra={"exchange": self.exchange.name})
                    abort(conn.ws)
