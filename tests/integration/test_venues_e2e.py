"""End to end per venue: replay exchange (that venue's dialect) -> streamer -> real Redis.

For Binance, Coinbase, Kraken, OKX, Bybit and Bitstamp alike: real recorded trades through the
venue's WebSocket protocol give in Redis exactly the bars the pure aggregator computes from the
same trades, the minutes before streaming starts coming from the venue's REST; and a connection
dropped in the middle of a minute is repaired over that venue's REST, the minute complete with
the REST bar.

What is replayed: Binance and Coinbase, the tardis.dev Binance BTCUSDT recording (about 80
trades a minute; for Coinbase re-rendered in Coinbase's wire format as ``BTC-USDT``: no Coinbase
trades are bundled), and likewise OKX (``BTC-USDT``), Bybit and Bitstamp (``BTCUSDT``); Kraken,
real Kraken BTC/USDT trades (a thin market with quiet minutes, which Kraken serves as flat
rows); and those Kraken trades through Coinbase too (``coinbase-quiet``), whose candles leave
quiet minutes out, and through OKX, Bybit and Bitstamp (``*-quiet``), which serve them flat.
Only Binance's and Kraken's REST bars carry a trade count, so a bar that came from another
venue's REST has ``trades == 0``; every other value must match exactly. Streaming starts at
minute 21: the minute before it traded in every recording, so a start-up backfill that misses it
(Kraken's last OHLC row is the running minute) shows.

OKX closes a connection whose client has sent nothing for 30 s: the feed's keepalive keeps a
quiet connection open past that (both shortened here), and without it the server closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Set
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
import websockets
from support.servers import ServerProcess
from support.streamer import (
    REPLAY_GRACE_MS,
    REPLAY_SPEED,
    expected_bars,
    running,
    stored_bars,
)
from support.waits import wait_until

from streamer.app import Streamer
from streamer.core.bars import BarAggregator
from streamer.core.clock import Clock
from streamer.core.exchanges.okx import OKX, OkxSpot
from streamer.core.types import MINUTE_MS, Bar
from streamer.io.feed import Feed, FeedOptions
from streamer.io.metrics import Metrics
from streamer.replay.cli import WS_PATHS
from streamer.replay.data import Source, bundled_trade_paths, load_source
from streamer.replay.dialect import ControlOutcome
from streamer.replay.okx import OkxDialect
from streamer.replay.server import Faults, ReplayServer
from streamer.settings import Settings, load_settings

pytestmark = pytest.mark.integration

MINUTES = 40  # of data replayed (at most)
STREAM_FROM = 21  # the minute streaming starts at; REST serves the ones before


@dataclass(frozen=True)
class Venue:
    name: str
    symbol: str
    recording: str  # what it replays: a part of the bundled trade file's name
    ws_path: str  # what the venue's WebSocket URL adds to the server's
    rest_paths: tuple[str, ...]  # the paths its REST bars may come from
    rest_trade_counts: bool  # its REST bars carry the trade count

    def source(self, first: int = 0) -> Source:
        """``MINUTES`` minutes of its recording from minute ``first``."""
        path = next(p for p in bundled_trade_paths() if self.recording in p.name)
        full = load_source(path, self.symbol)
        klines = full.klines[first : first + MINUTES]
        starts = full.trade_start[first : first + MINUTES + 1]
        return dataclasses.replace(full, klines=klines, trade_start=starts)


CANDLES = ("/products/BTC-USDT/candles",)
VENUES = {
    "binance": Venue("binance", "BTCUSDT", "tardis", "", ("/api/v3/klines",), True),
    "coinbase": Venue("coinbase", "BTC-USDT", "tardis", "", CANDLES, False),
    "kraken": Venue(
        "kraken", "BTC-USDT", "kraken", "/v2", ("/0/public/OHLC", "/0/public/Trades"), True
    ),
    # a quiet market through Coinbase, whose candles leave its quiet minutes out
    "coinbase-quiet": Venue("coinbase", "BTC-USDT", "kraken", "", CANDLES, False),
    "okx": Venue(
        "okx", "BTC-USDT", "tardis", "/ws/v5/public", ("/api/v5/market/history-candles",), False
    ),
    "bybit": Venue("bybit", "BTCUSDT", "tardis", "/v5/public/spot", ("/v5/market/kline",), False),
    "bitstamp": Venue("bitstamp", "BTCUSDT", "tardis", "", ("/api/v2/ohlc/btcusdt/",), False),
}
HEARTBEATING = {"coinbase", "kraken"}  # the venues whose servers send heartbeats


def ohlcv(bars: list[Bar]) -> list[tuple[object, ...]]:
    return [(b.open_time_ms, b.open, b.high, b.low, b.close, b.volume) for b in bars]


def comparable(venue: Venue, stored: list[Bar], expected: list[Bar]) -> list[tuple[object, ...]]:
    """``stored`` as comparable with ``expected``: every value; off a venue whose REST has no
    trade count, a count of 0 (a bar that came from REST) stands for the expected one."""
    counts = {b.open_time_ms: b.trades for b in expected}
    return [
        (*values, counts.get(b.open_time_ms) if not venue.rest_trade_counts and not b.trades
         else b.trades)
        for values, b in zip(ohlcv(stored), stored, strict=True)
    ]  # fmt: skip


def expected_values(bars: list[Bar]) -> list[tuple[object, ...]]:
    return [(*values, b.trades) for values, b in zip(ohlcv(bars), bars, strict=True)]


def venue_settings(server: ReplayServer, venue: Venue, redis_url: str) -> Settings:
    """``support.streamer.settings_for``'s quick settings, for ``venue``'s feed."""
    return load_settings(
        grace_ms=REPLAY_GRACE_MS,
        symbols=[f"{venue.name}:{venue.symbol}"],
        ws_urls={venue.name: server.ws_url + venue.ws_path},
        rest_urls={venue.name: server.rest_url},
        redis_url=redis_url,
        metrics_port=0,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.5,
        tick_interval_s=0.05,
        stale_feed_s=5.0,
    )


@dataclass
class Run:
    streamer: Streamer
    server: ReplayServer
    closed: list[Bar]  # the expected bars of the minutes closed when the data ended
    bars: list[Bar]  # what Redis holds after an ordered shutdown
    marks: set[int]  # the minutes Redis marks incomplete


async def replay_into_redis(
    venue: Venue,
    source: Source,
    redis_url: str,
    faults: Faults | None = None,
    stream_from: int = STREAM_FROM,
) -> Run:
    expected = expected_bars(source, venue.name)
    start = source.first_open_ms + stream_from * MINUTE_MS
    async with ReplayServer(
        [source], speed=REPLAY_SPEED, start_ms=start, faults=faults, dialect=venue.name
    ) as server:
        settings = venue_settings(server, venue, redis_url)
        streamer = Streamer(settings, clock=server.clock_ms)
        client = aioredis.from_url(redis_url)
        try:
            async with running(streamer):
                await server.wait_finished()
                end = server.clock_ms()
                closed = [b for b in expected if b.close_time_ms + REPLAY_GRACE_MS <= end]

                async def all_closed_minutes_stored_complete() -> bool:
                    bars, marks = await stored_bars(client, venue.name, venue.symbol)
                    stored = {b.open_time_ms for b in bars}
                    minutes = {b.open_time_ms for b in closed}
                    return minutes <= stored and not marks & minutes

                await wait_until(
                    all_closed_minutes_stored_complete, 30, "every closed minute stored, complete"
                )
            bars, marks = await stored_bars(client, venue.name, venue.symbol)
        finally:
            await client.aclose()
    return Run(streamer, server, closed, bars, marks)


def busiest_minute(source: Source) -> int:
    """The index of the streamed minute with the most trades, at least 12 minutes before the
    end (time to reconnect and repair)."""
    candidates = range(STREAM_FROM + 2, MINUTES - 12)
    return max(candidates, key=lambda i: len(source.minute_trades(i)))


@pytest.mark.parametrize("venue", list(VENUES.values()), ids=list(VENUES))
async def test_recorded_trades_become_exactly_the_pure_aggregators_bars(
    venue: Venue, redis_server: ServerProcess
) -> None:
    source = venue.source()
    run = await replay_into_redis(venue, source, redis_server.url)
    expected = expected_bars(source, venue.name)

    # every closed minute: exactly the pure aggregator's bars, all complete
    assert len(run.closed) >= MINUTES - 3
    stored = run.bars[: len(run.closed)]
    assert comparable(venue, stored, run.closed) == expected_values(run.closed)
    # the minutes before the stream started came over REST, the rest over the WebSocket
    streamed = [b for b in run.bars[: len(run.closed)] if b.open_time_ms > run.server.start_ms]
    assert [b.trades for b in streamed] == [
        e.trades for e in run.closed if e.open_time_ms > run.server.start_ms
    ]
    assert any(e.path in venue.rest_paths and e.status == 200 for e in run.server.rest_log)
    # minutes still open when the data ended: stored at shutdown, marked incomplete
    tail = run.bars[len(run.closed) :]
    assert ohlcv(tail) == ohlcv(expected[len(run.closed) :])
    assert run.marks == {b.open_time_ms for b in tail}
    # nothing streamed was lost, late or double counted
    stats = run.streamer.metrics.feeds[0]
    sent = sum(n for n, _ in run.server.sent.minutes(venue.symbol).values())
    assert stats.trades == sent > 0
    assert stats.dropped["late"] == 0 and stats.dropped["duplicate"] == 0
    assert run.streamer.writer.dropped_total == 0
    # Coinbase and Kraken kept the connection's heartbeats coming; the others send none
    assert (run.server.heartbeats_sent > 0) == (venue.name in HEARTBEATING)


@pytest.mark.parametrize("venue", list(VENUES.values()), ids=list(VENUES))
async def test_a_connection_dropped_mid_minute_is_repaired_over_the_venues_rest(
    venue: Venue, redis_server: ServerProcess
) -> None:
    source = venue.source()
    index = busiest_minute(source)
    trades = source.minute_trades(index)
    minute = source.klines[index].open_time_ms
    drop_at = trades[len(trades) // 2].ts_ms  # before this trade goes out
    faults = Faults(drop_at_ms=drop_at, refuse_after_drop_s=0.5)
    run = await replay_into_redis(venue, source, redis_server.url, faults)

    assert run.server.sent.drops == 1
    assert sum(run.streamer.metrics.feeds[0].reconnects.values()) >= 1
    # the drop lost trades of that minute: the stream alone could not have made its bar
    sent_in_minute = run.server.sent.minutes(venue.symbol).get(minute, (0, 0.0))[0]
    assert sent_in_minute < len(trades)
    # yet Redis holds every closed minute exactly, the dropped one complete with the REST bar
    stored = run.bars[: len(run.closed)]
    assert comparable(venue, stored, run.closed) == expected_values(run.closed)
    [bar] = [b for b in run.bars if b.open_time_ms == minute]
    [want] = [b for b in run.closed if b.open_time_ms == minute]
    assert minute not in run.marks
    assert ohlcv([bar]) == ohlcv([want])
    assert bar.trades == (want.trades if venue.rest_trade_counts else 0)
    # ... fetched over this venue's REST after the drop (start-up backfill, then the gap)
    pages = [e for e in run.server.rest_log if e.path in venue.rest_paths and e.status == 200]
    assert len(pages) >= 2
    ok = run.streamer.metrics.backfill_requests.labels(venue.name, "ok")._value.get()
    assert ok >= 2


# the Kraken trades through the venues that serve quiet minutes as flat rows at the close before
QUIET_VENUES = {
    "okx-quiet": dataclasses.replace(VENUES["okx"], recording="kraken"),
    "bybit-quiet": dataclasses.replace(VENUES["bybit"], recording="kraken"),
    "bitstamp-quiet": dataclasses.replace(VENUES["bitstamp"], recording="kraken"),
}
QUIET = {name: VENUES[name] for name in ("kraken", "coinbase-quiet")} | QUIET_VENUES


@pytest.mark.parametrize("venue", list(QUIET.values()), ids=list(QUIET))
async def test_quiet_minutes_after_a_repaired_gap_stay_flat_at_the_repaired_close(
    venue: Venue, redis_server: ServerProcess
) -> None:
    # Kraken BTC/USDT 2025-11-10 17:54 .. 18:33, streamed from 18:01. 18:04 has one trade (at
    # :53, 105908.1, below 18:03's close of 105930.3), then 18:05 .. 18:10 are quiet. The
    # connection drops just before 18:04's trade and comes back (after the venue's
    # connection-rate limit) inside the quiet stretch: 18:04's trade is repaired over REST, and
    # every quiet minute after it is flat at 105908.1, as the venue's own bars and the pure
    # aggregator say (not at 18:03's close, the last the streamer's aggregator saw itself).
    source = venue.source(first=31)
    index = 10  # 18:04
    [trade] = source.minute_trades(index)
    assert source.klines[index - 1].close != trade.price
    assert [len(source.minute_trades(i)) for i in range(index + 1, index + 7)] == [0] * 6
    faults = Faults(drop_at_ms=trade.ts_ms, refuse_after_drop_s=0.5)
    run = await replay_into_redis(venue, source, redis_server.url, faults, stream_from=7)

    assert run.server.sent.drops == 1
    assert run.server.sent.minutes(venue.symbol).get(source.klines[index].open_time_ms) is None
    stored = run.bars[: len(run.closed)]
    assert comparable(venue, stored, run.closed) == expected_values(run.closed)


# --- OKX: the feed's keepalive against the venue's idle close ----------------------------------

IDLE_TIMEOUT_S = 1.0  # OKX's 30 s, shortened
KEEPALIVE_S = 0.2  # the feed's 20 s, shortened in proportion


class ListeningOkx(OkxDialect):
    """OKX, counting the keepalive pings it is sent (what the server heard, for the waits)."""

    pings = 0

    def control(self, message: str | bytes, streams: Set[str], framing: int) -> ControlOutcome:
        if message in ("ping", b"ping"):
            self.pings += 1
        return super().control(message, streams, framing)


class QuickKeepaliveOkx(OkxSpot):
    rules = dataclasses.replace(OkxSpot.rules, keepalive_interval_s=KEEPALIVE_S)


class NoKeepaliveOkx(OkxSpot):
    rules = dataclasses.replace(OkxSpot.rules, keepalive_message=None)


def quiet_okx_source() -> Source:
    """Kraken's BTC/USDT trades of 2025-11-10 from 18:05: six minutes without a trade."""
    source = QUIET_VENUES["okx-quiet"].source(first=31)
    assert [len(source.minute_trades(i)) for i in range(11, 17)] == [0] * 6
    return source


@contextlib.asynccontextmanager
async def quiet_okx(exchange: OkxSpot) -> AsyncIterator[tuple[ReplayServer, ListeningOkx, Feed]]:
    """An OKX replay at wall speed from the quiet minutes, its idle timeout shortened, and a
    feed subscribed to it (WebSocket pings every 0.1 s: they must not count as keepalive)."""
    source = quiet_okx_source()
    dialect = ListeningOkx([source.symbol])
    start = source.klines[11].open_time_ms
    async with ReplayServer(
        [source], speed=1.0, start_ms=start, dialect=dialect, client_idle_timeout_s=IDLE_TIMEOUT_S
    ) as server:
        feed = Feed(
            exchange,
            [source.symbol],
            ["trades"],
            server.ws_url + WS_PATHS["okx"],
            BarAggregator("okx", grace_ms=REPLAY_GRACE_MS, clock=server.clock_ms),
            Metrics().add_feed("okx"),
            Clock.wall(server.clock_ms),
            on_bars=lambda bars: None,
            on_gap=lambda gap: None,
            options=FeedOptions(reconnect_initial_s=0.05, ping_interval_s=0.1),
        )
        task = asyncio.create_task(feed.run(), name="okx-feed")
        try:
            await wait_until(lambda: server.connection_count == 1, 10, "the feed connected")
            yield server, dialect, feed
        finally:
            feed.stop()
            await asyncio.wait_for(task, 5)


async def test_the_feeds_keepalive_keeps_a_quiet_okx_connection_past_the_idle_timeout() -> None:
    async with quiet_okx(QuickKeepaliveOkx()) as (server, dialect, feed):
        # three idle timeouts' worth of keepalive pings, nothing else heard from the client
        await wait_until(
            lambda: dialect.pings >= 3 * IDLE_TIMEOUT_S / KEEPALIVE_S, 15, "15 keepalive pings"
        )
        assert server.sent.messages == 0  # a quiet market: not a trade pushed
        assert server.idle_closes == 0
        assert server.sent.connections == server.connection_count == 1
        assert sum(feed.stats.reconnects.values()) == 0


async def test_without_keepalive_okx_closes_the_quiet_connection_after_its_idle_timeout() -> None:
    async with quiet_okx(NoKeepaliveOkx()) as (server, dialect, feed):
        opened = time.monotonic()
        await wait_until(lambda: server.idle_closes >= 1, 10, "the idle close")
        assert time.monotonic() - opened >= IDLE_TIMEOUT_S * 0.9  # not before its time
        await wait_until(lambda: feed.stats.reconnects["closed"] >= 1, 5, "the feed reconnected")
        assert dialect.pings == 0 and server.sent.messages == 0
    # the close is OKX's: 4004, after the subscription was acknowledged
    source = quiet_okx_source()
    start = source.klines[11].open_time_ms
    async with ReplayServer(
        [source], speed=1.0, start_ms=start, dialect="okx", client_idle_timeout_s=IDLE_TIMEOUT_S
    ) as server:
        async with websockets.connect(server.ws_url + WS_PATHS["okx"]) as ws:
            [plan] = OKX.connections(server.ws_url, [source.symbol], ["trades"])
            await ws.send(plan.subscribe[0])
            assert OKX.parse(await ws.recv()) == []  # the ack
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await ws.recv()
        assert (ws.close_code, ws.close_reason) == (4004, "No data received in 30s")
