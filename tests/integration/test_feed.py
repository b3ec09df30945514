"""The feed shell over real loopback sockets: watchdog, rotation, bad frames, backoff, rate limit.

Each test drives a real ``Feed`` (pure aggregator, injected replay clock) against the replay
exchange, or a tiny local WebSocket server where the replay exchange cannot misbehave the
needed way. Expected bars come from the pure aggregator over the recorded trades; what the
server actually delivered comes from its ``sent`` counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from support.streamer import (
    REPLAY_GRACE_MS,
    REPLAY_SPEED,
    comparable,
    expected_bars,
    kline_source,
    tardis_source,
)
from support.waits import wait_until
from websockets.asyncio.server import ServerConnection, serve

from streamer.core.bars import BarAggregator
from streamer.core.clock import Clock
from streamer.core.exchanges import ConnectionPlan, Exchange
from streamer.core.exchanges.binance import BINANCE, BinanceSpot
from streamer.core.gaps import Gap
from streamer.core.types import MINUTE_MS, Bar, floor_minute
from streamer.io.backfill import RestBackfill
from streamer.io.feed import Feed, FeedOptions
from streamer.io.metrics import LAG_BUCKETS, FeedStats, Metrics
from streamer.replay.data import Source, bundled_trade_paths, load_source
from streamer.replay.server import Faults, ReplayServer

pytestmark = pytest.mark.integration

SLOP_S = 0.1  # scheduling slack on a loaded 2-core machine, for upper bounds only


class SlowConnectBinance(BinanceSpot):
    """Binance with one stream per connection and its real rate: one attempt per 2 s."""

    max_streams_per_connection = 1


class FastConnectBinance(BinanceSpot):
    """Binance with a connection-rate limit high enough not to hide the backoff delays."""

    connect_attempts_per_s = 1000.0


class ShortLivedBinance(BinanceSpot):
    """Binance whose connections are cut after 1.5 s instead of 24 h."""

    max_connection_age_s: float | None = 1.5
    connect_attempts_per_s = 1000.0


class ShortLivedRateLimitedBinance(ShortLivedBinance):
    """ShortLivedBinance allowing one connection attempt per 1.3 s: a connection rotated at an
    age of 1.0 s waits 0.3 s for its next attempt."""

    connect_attempts_per_s = 1 / 1.3


class OneStreamBinance(BinanceSpot):
    """Binance allowing one stream per connection and 4 connection attempts per second."""

    max_streams_per_connection = 1
    connect_attempts_per_s = 4.0


class LaggingServerClock:
    """The replay clock shifted by ``ahead_ms``: what a live wall clock is to exchange time."""

    def __init__(self, server: ReplayServer, ahead_ms: int) -> None:
        self._server = server
        self._ahead_ms = ahead_ms

    def clock_ms(self) -> int:
        return self._server.clock_ms() + self._ahead_ms


@dataclass
class FeedRun:
    feed: Feed
    stats: FeedStats
    bars: list[Bar] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    @property
    def aggregator(self) -> BarAggregator:
        return self.feed.aggregator

    def closed(self, symbol: str) -> dict[int, Bar]:
        return {b.open_time_ms: b for b in self.bars if b.symbol == symbol}


@contextlib.asynccontextmanager
async def running_feed(
    url: str,
    symbols: list[str],
    clock: ReplayServer | LaggingServerClock | None,
    *,
    exchange: Exchange = BINANCE,
    options: FeedOptions | None = None,
    gap_start_ms: int | None = None,
) -> AsyncIterator[FeedRun]:
    """A Feed plus the bar-clock task the app would run beside it (every 20 ms)."""
    now = Clock.wall(clock.clock_ms) if clock is not None else Clock.watermark()
    reading = clock.clock_ms if clock is not None else None
    aggregator = BarAggregator("binance", grace_ms=REPLAY_GRACE_MS, clock=reading)
    stats = Metrics().add_feed("binance")
    bars: list[Bar] = []
    gaps: list[Gap] = []
    feed = Feed(
        exchange,
        symbols,
        ["trade"],
        url,
        aggregator,
        stats,
        now,
        on_bars=bars.extend,
        on_gap=gaps.append,
        options=options,
        gap_start_ms=gap_start_ms,
    )
    run = FeedRun(feed, stats, bars, gaps)

    async def tick() -> None:
        while True:
            run.feed.on_clock()
            await asyncio.sleep(0.02)

    feed_task = asyncio.create_task(run.feed.run(), name="feed-under-test")
    tick_task = asyncio.create_task(tick(), name="bar-clock")
    try:
        yield run
    finally:
        run.feed.stop()
        tick_task.cancel()
        async with asyncio.timeout(5):
            await feed_task
        run.feed.on_clock()


async def every_frame_taken(run: FeedRun, server: ReplayServer) -> bool:
    """Every trade frame written has been taken: aggregated, or dropped as a duplicate of one
    that two connections both delivered while one replaced the other."""
    run.feed.on_clock()
    taken = run.stats.trades + run.stats.dropped["duplicate"]
    return taken == sum(server.sent.trades.values())


async def trades_caught_up(run: FeedRun, server: ReplayServer) -> bool:
    """Every trade frame the server wrote has been aggregated."""
    run.feed.on_clock()
    return run.stats.trades == sum(server.sent.trades.values())


def assert_delivered_trades_aggregated(run: FeedRun, server: ReplayServer, symbol: str) -> None:
    """Each closed bar holds exactly the trades the server delivered in its minute."""
    sent = server.sent.minutes(symbol)
    for minute, bar in run.closed(symbol).items():
        trades, volume = sent.get(minute, (0, 0.0))
        assert (bar.trades, bar.volume) == (trades, volume), minute


def lossy_minutes(server: ReplayServer, source: Source) -> list[int]:
    """Minutes in which the server delivered fewer trades than the recording holds."""
    sent = server.sent.minutes(source.symbol)
    return [
        k.open_time_ms
        for k, trades in source.minutes()
        if trades and sent.get(k.open_time_ms, (0, 0.0))[0] < len(trades)
    ]


def in_a_gap(minute: int, gaps: list[Gap]) -> bool:
    return any(floor_minute(g.start_ms) <= minute <= g.end_ms for g in gaps)


async def repaired(run: FeedRun, server: ReplayServer, symbol: str) -> dict[int, Bar]:
    """The closed bars after each reported gap is backfilled over REST, as the app does."""
    bars = run.closed(symbol)
    async with aiohttp.ClientSession() as session:
        backfill = RestBackfill(BINANCE, server.rest_url, session)
        for gap in run.gaps:
            end = floor_minute(gap.end_ms) + MINUTE_MS
            for bar in await backfill.fetch(symbol, gap.start_ms, end):
                if bar.open_time_ms in bars:
                    bars[bar.open_time_ms] = bar
    return bars


async def through_the_fault(
    server: ReplayServer, clock: ReplayServer | LaggingServerClock, options: FeedOptions
) -> tuple[FeedRun, dict[int, Bar]]:
    """A BTCUSDT feed on ``server`` (``FastConnectBinance``) until it has aggregated every trade
    the server sent; the run, and its closed bars once the reported gaps are backfilled."""
    async with running_feed(
        server.ws_url, ["BTCUSDT"], clock, exchange=FastConnectBinance(), options=options
    ) as run:
        await server.wait_finished()
        await wait_until(lambda: trades_caught_up(run, server), 5, "every trade aggregated")
    return run, await repaired(run, server, "BTCUSDT")


def assert_nothing_lost(
    run: FeedRun, server: ReplayServer, source: Source, fixed: dict[int, Bar]
) -> None:
    """The fault lost trades (else nothing was exercised); every delivered trade is in its bar;
    every minute that missed trades lies in a reported gap and came out incomplete (never passed
    off as complete); backfilling the reported gaps gives exactly the recorded bars."""
    symbol = source.symbol
    assert_delivered_trades_aggregated(run, server, symbol)
    expected = {b.open_time_ms: b for b in expected_bars(source)}
    closed = run.closed(symbol)
    lost = lossy_minutes(server, source)
    assert lost, "the fault lost no trade: nothing was exercised"
    assert all(in_a_gap(m, run.gaps) for m in lost), (lost, run.gaps)
    assert [m for m in lost if m in closed and closed[m].complete] == []
    for minute, bar in closed.items():
        if bar.complete:
            assert comparable([bar]) == comparable([expected[minute]]), minute
    assert len(fixed) >= 5
    assert comparable(fixed.values()) == comparable(expected[m] for m in fixed)


# ---- 1. stale-feed watchdog -------------------------------------------------------------------


async def test_a_stalled_feed_is_reconnected_as_stale_and_its_gap_reported() -> None:
    source = tardis_source(9)
    stall_at = source.first_open_ms + 3 * MINUTE_MS + 20_000
    faults = Faults(stall_at_ms=stall_at, stall_s=2.0)
    options = FeedOptions(stale_after_s=0.3, reconnect_initial_s=0.05, reconnect_max_s=0.2)
    async with ReplayServer([source], speed=REPLAY_SPEED, faults=faults) as server:
        run, fixed = await through_the_fault(server, server, options)

    # the stall is noticed by the watchdog well before the server's stall ends
    assert dict(run.stats.reconnects) == {"stale": 1}
    assert server.sent.skipped_stalled > 0 and server.sent.connections == 2
    # one gap, covering every minute whose trades the stall swallowed
    [gap] = run.gaps
    assert gap.symbols == ("BTCUSDT",)
    assert gap.start_ms <= stall_at <= gap.end_ms
    # data flows again on the new connection: minutes after the gap are whole
    expected = {b.open_time_ms: b for b in expected_bars(source)}
    closed = run.closed("BTCUSDT")
    after = [m for m in closed if m > gap.end_ms]
    assert after and all(closed[m].trades == expected[m].trades for m in after)
    assert_nothing_lost(run, server, source, fixed)


async def test_a_dropped_connection_leaves_every_lost_trade_in_an_incomplete_gap() -> None:
    # Live, the wall clock runs ahead of exchange time by the network latency: model that with
    # a clock 30 s of data time (150 ms at 200x) ahead of the replay's. The drop comes 20 s
    # before a minute ends, and reconnects are refused for longer than a minute plus grace.
    source = tardis_source(9)
    drop_at = source.first_open_ms + 3 * MINUTE_MS - 20_000
    faults = Faults(drop_at_ms=drop_at, refuse_after_drop_s=0.8)
    options = FeedOptions(reconnect_initial_s=0.05, reconnect_max_s=0.1, stale_after_s=5.0)
    async with ReplayServer([source], speed=REPLAY_SPEED, faults=faults) as server:
        run, fixed = await through_the_fault(server, LaggingServerClock(server, 30_000), options)

    assert server.sent.drops == 1 and server.sent.refused >= 2
    assert run.stats.reconnects["closed"] == 1
    assert run.stats.reconnects["connect_failed"] == server.sent.refused
    [gap] = run.gaps
    assert gap.start_ms <= drop_at
    assert_nothing_lost(run, server, source, fixed)


async def test_the_lag_histogram_shows_how_far_behind_the_clock_trades_arrive() -> None:
    # A receiving clock 3 s ahead of the exchange's: every frame's newest trade arrives about
    # 3 s "late" (plus the replay's own delivery time, milliseconds).
    source = tardis_source(3)
    async with (
        ReplayServer([source], speed=REPLAY_SPEED) as server,
        running_feed(
            server.ws_url, ["BTCUSDT"], LaggingServerClock(server, 3_000), options=FeedOptions()
        ) as run,
    ):
        await server.wait_finished()
        await wait_until(lambda: trades_caught_up(run, server), 5, "every trade aggregated")
    counts = dict(zip([*LAG_BUCKETS, math.inf], run.stats.lag_counts, strict=True))
    frames = sum(counts.values())
    assert frames >= run.stats.trades // 2 > 0  # one observation per frame
    # all of them between 2.5 s and 5 s: none faster than the clock's lead, none much later
    assert counts[5.0] == frames
    assert 3.0 * frames <= run.stats.lag_sum_s < 3.5 * frames


# ---- 2. rotation before the exchange's cut ----------------------------------------------------


async def test_connections_rotate_make_before_break_without_backoff_gap_or_rest() -> None:
    source = tardis_source(11)
    # Connections live 1.5 s; rotate 0.5 s before that. A backoff delay would be >= 1 s. The
    # rate limit holds each new connection back 0.3 s, 60 s of data, while trades flow: more
    # than twice the recording's longest quiet stretch, so a break-before-make rotation (close,
    # then connect) would lose trades at every rotation wherever it falls. Make-before-break
    # keeps the old connection delivering until the new one does: no trade is missed, no gap
    # opens, and REST is never asked.
    options = FeedOptions(
        rotate_margin_s=0.5, reconnect_initial_s=2.0, reconnect_max_s=4.0, stale_after_s=5.0
    )
    exchange = ShortLivedRateLimitedBinance()
    slot, cut = 1 / exchange.connect_attempts_per_s, 1.5
    trade_times = [t.ts_ms for _, trades in source.minutes() for t in trades]
    quiet_ms = max(b - a for a, b in itertools.pairwise(trade_times))
    rotate_after = cut - options.rotate_margin_s
    assert 2 * quiet_ms < (slot - rotate_after) * REPLAY_SPEED * 1000, quiet_ms

    # the venue cuts connections at 2 s: the feed must have moved on before that
    async with (
        ReplayServer([source], speed=REPLAY_SPEED, connection_age_s=2.0) as server,
        running_feed(server.ws_url, ["BTCUSDT"], server, exchange=exchange, options=options) as run,
    ):
        await server.wait_finished()
        await wait_until(lambda: every_frame_taken(run, server), 5, "every frame aggregated")
        run.feed.on_clock()
    assert server.age_cuts == 0

    rotations = run.stats.reconnects["rotate"]
    assert rotations >= 2 and dict(run.stats.reconnects) == {"rotate": rotations}
    # each new connection comes in the rate limit's next slot: no backoff, and before the cut
    spacing = [b - a for a, b in itertools.pairwise(server.connection_attempts)]
    assert all(slot - 0.005 <= s < cut for s in spacing), spacing
    assert run.gaps == [] and server.rest_log == []
    assert run.stats.dropped["late"] == 0
    # every recorded trade is in its bar: each closed minute is exactly the recorded one
    expected = {b.open_time_ms: b for b in expected_bars(source)}
    closed = run.closed("BTCUSDT")
    assert len(closed) >= 9
    assert all(bar.complete for bar in closed.values())
    assert comparable(closed.values()) == comparable(expected[m] for m in closed)


async def test_a_server_shutdown_notice_moves_to_a_new_connection_before_the_old_closes() -> None:
    # Binance sends serverShutdown, then disconnects. The feed opens the next connection at
    # once and lets the old one go when the new one delivers: no gap, no REST, nothing lost.
    source = tardis_source(6)
    async with (
        ReplayServer([source], speed=REPLAY_SPEED) as server,
        running_feed(server.ws_url, ["BTCUSDT"], server, exchange=FastConnectBinance()) as run,
    ):
        await wait_until(lambda: run.stats.trades > 100, 10, "trades flowing")
        await server.announce_shutdown(close_after_s=1.0)
        await wait_until(
            lambda: run.stats.reconnects["server_shutdown"] == 1, 5, "the old connection let go"
        )
        await server.wait_finished()
        await wait_until(lambda: every_frame_taken(run, server), 5, "every frame taken")
        run.feed.on_clock()
    assert dict(run.stats.reconnects) == {"server_shutdown": 1}
    assert len(server.connection_attempts) == 2
    assert run.gaps == [] and server.rest_log == []
    expected = {b.open_time_ms: b for b in expected_bars(source)}
    closed = run.closed("BTCUSDT")
    assert len(closed) >= 4 and all(bar.complete for bar in closed.values())
    assert comparable(closed.values()) == comparable(expected[m] for m in closed)


class ChattyBinance(FastConnectBinance):
    """A connection plan of 8 messages (SUBSCRIBE, then 7 LIST_SUBSCRIPTIONS): more than
    Binance takes in a second."""

    def connections(
        self, ws_url: str, symbols: list[str], channels: list[str]
    ) -> list[ConnectionPlan]:
        [plan] = super().connections(ws_url, symbols, channels)
        listing = tuple(
            json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 10 + i}) for i in range(7)
        )
        return [dataclasses.replace(plan, subscribe=plan.subscribe + listing)]


async def test_subscribe_messages_are_paced_within_the_venues_message_limit() -> None:
    # Binance closes a connection that sends more than 5 messages a second (pings and pongs
    # count too) with 1008: the feed spaces its messages to leave room for them.
    source = tardis_source(3)
    async with (
        ReplayServer([source], speed=REPLAY_SPEED) as server,
        running_feed(server.ws_url, ["BTCUSDT"], server, exchange=ChattyBinance()) as run,
    ):
        await server.wait_finished()
        await wait_until(lambda: trades_caught_up(run, server), 10, "every trade aggregated")
    assert server.rate_limit_closes == 0 and dict(run.stats.reconnects) == {}
    assert run.gaps == []


async def test_a_rotation_under_full_load_does_not_wait_out_the_close_timeout() -> None:
    # As fast as the feed reads: its receive queue is full whenever it rotates. A plain close
    # then never reads the exchange's close frame and waits the whole close timeout.
    source = load_source(next(p for p in bundled_trade_paths() if "tardis" in p.name), "BTCUSDT")
    options = FeedOptions(rotate_margin_s=0.5, close_timeout_s=3.0, stale_after_s=5.0)
    async with (
        ReplayServer([source], speed=0, loop=True) as server,
        running_feed(
            server.ws_url, ["BTCUSDT"], server, exchange=ShortLivedBinance(), options=options
        ) as run,
    ):
        await wait_until(lambda: len(server.connection_attempts) >= 3, 4, "two rotations")
        # the replaced connection closes once its successor delivers, well within the close
        # timeout (3 s) that a close without reading on would wait out
        await wait_until(
            lambda: run.stats.reconnects["rotate"] >= 2, 1.5, "two connections replaced"
        )
        before = run.aggregator.accepted
        await wait_until(lambda: run.aggregator.accepted > before, 2, "more trades")
    spacing = [b - a for a, b in itertools.pairwise(server.connection_attempts)]
    assert all(1.0 <= s <= 1.0 + 2 * SLOP_S for s in spacing), spacing


# ---- 3. malformed frames ----------------------------------------------------------------------


async def test_malformed_frames_are_counted_by_reason_logged_once_and_good_frames_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = tardis_source(5)
    caplog.set_level(logging.WARNING, logger="streamer.io.feed")
    async with (
        ReplayServer([source], speed=REPLAY_SPEED, faults=Faults(malformed_every=7)) as server,
        running_feed(server.ws_url, ["BTCUSDT"], server) as run,
    ):
        await server.wait_finished()
        await wait_until(lambda: trades_caught_up(run, server), 5, "every sent trade aggregated")

    # the server cycles invalid JSON, wrong types, NaN price over its 1st, 2nd, 3rd... bad frame
    n = server.sent.malformed
    assert n > 40
    by_variant = [sum(1 for k in range(1, n + 1) if k % 3 == v) for v in range(3)]
    assert dict(run.stats.rejected) == {
        "malformed_json": by_variant[0],
        "bad_type": by_variant[1],
        "bad_value": by_variant[2],
    }
    logged = [r for r in caplog.records if r.getMessage() == "frame rejected"]
    assert sorted(r.__dict__["reason"] for r in logged) == [
        "bad_type",
        "bad_value",
        "malformed_json",
    ]
    assert all(r.__dict__["sample"] for r in logged)
    # every good frame around them is aggregated: exactly the recorded bars
    assert run.stats.trades == sum(server.sent.trades.values()) > 300
    expected = {b.open_time_ms: b for b in expected_bars(source)}
    closed = run.closed("BTCUSDT")
    assert len(closed) >= 3 and all(b.complete for b in closed.values())
    assert comparable(closed.values()) == comparable(expected[m] for m in closed)


# ---- 4. refused connections: capped, jittered backoff -----------------------------------------


async def test_refused_connections_back_off_capped_and_jittered_then_recover() -> None:
    source = kline_source("ETHUSDT", 60)
    initial, cap = 0.05, 0.4
    options = FeedOptions(reconnect_initial_s=initial, reconnect_max_s=cap, stale_after_s=5.0)
    async with ReplayServer([source], speed=REPLAY_SPEED) as server:
        server.refuse_connections(2.0)
        async with running_feed(
            server.ws_url, ["ETHUSDT"], server, exchange=FastConnectBinance(), options=options
        ) as run:
            await wait_until(lambda: run.stats.trades > 0, 10, "trades")
            refused = server.sent.refused
            attempts = list(server.connection_attempts)
            assert refused >= 6 and len(attempts) == refused + 1
            assert dict(run.stats.reconnects) == {"connect_failed": refused}
            delays = [b - a for a, b in itertools.pairwise(attempts)]
            for i, delay in enumerate(delays):  # uniform in [c/2, c], c = min(cap, initial * 2^i)
                c = min(cap, initial * 2**i)
                assert c / 2 - 0.005 <= delay <= c + SLOP_S, (i, delays)
            assert delays[3] > delays[0]  # they grow...
            capped = delays[3:]  # ...to the cap, where jitter keeps them apart
            assert max(capped) <= cap + SLOP_S and max(capped) - min(capped) > 0.002

            # after a success the backoff starts afresh: the next retry comes within `initial`
            dropped_at = time.monotonic()
            await server.drop_connections()
            await wait_until(lambda: len(server.connection_attempts) > len(attempts), 5, "a retry")
            assert server.connection_attempts[-1] - dropped_at <= initial + SLOP_S
            before = run.stats.trades
            await wait_until(lambda: run.stats.trades > before, 5, "trades after the drop")
    assert run.stats.reconnects["closed"] == 1


# ---- 5. connection-attempt rate limit across connections --------------------------------------


async def test_connection_attempts_across_a_feed_are_spaced_by_the_rate_limit() -> None:
    sources = [kline_source(s, 30) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
    async with (
        ReplayServer(sources, speed=REPLAY_SPEED) as server,
        running_feed(
            server.ws_url,
            ["BTCUSDT", "ETHUSDT", "SOLUSDT"],
            server,
            exchange=OneStreamBinance(),
            gap_start_ms=server.start_ms,  # as the app does: the start-up minute is a gap
        ) as run,
    ):
        assert len(run.feed.plans) == 3
        await wait_until(lambda: len(run.gaps) == 3, 10, "3 connections")
        assert run.feed.connected and server.connection_count == 3
        spacing = [b - a for a, b in itertools.pairwise(server.connection_attempts)]
        assert len(spacing) == 2
        assert all(0.25 - 0.02 <= s <= 0.25 + SLOP_S for s in spacing), spacing
        # each connection reports the start-up gap of its own symbol, up to when it began
        assert sorted(g.symbols for g in run.gaps) == [("BTCUSDT",), ("ETHUSDT",), ("SOLUSDT",)]
        assert all(g.start_ms == server.start_ms <= g.end_ms for g in run.gaps)
    assert dict(run.stats.reconnects) == {}


# ---- 6. frames above max_frame_bytes ----------------------------------------------------------


async def test_a_frame_above_the_size_limit_is_refused_and_the_feed_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # real Binance spot trades (nautilus_trader recording), as combined-stream frames
    source = load_source(next(p for p in bundled_trade_paths() if "20210108" in p.name))
    trades = [t for _, minute in source.minutes() for t in minute][:50]
    frames = [
        json.dumps(
            {
                "stream": "btcusdt@trade",
                "data": {
                    "e": "trade",
                    "E": t.ts_ms,
                    "s": "BTCUSDT",
                    "t": t.trade_id,
                    "p": t.price,
                    "q": t.qty,
                    "T": t.ts_ms,
                    "m": t.buyer_is_maker,
                    "M": True,
                },
            }
        )
        for t in trades
    ]
    limit = 4096
    huge = "[" + ",".join(frames * (limit // len(frames[0]) + 1)) + "]"
    assert len(huge) > limit
    connections = itertools.count()

    async def exchange(ws: ServerConnection) -> None:
        request = json.loads(await ws.recv())
        await ws.send(json.dumps({"result": None, "id": request["id"]}))
        if next(connections) == 0:
            await ws.send(frames[0])
            await ws.send(huge)  # one frame over the limit
            await ws.send(frames[1])
        else:
            for frame in frames[1:]:
                await ws.send(frame)
        await ws.wait_closed()

    caplog.set_level(logging.WARNING, logger="streamer.io.feed")
    options = FeedOptions(max_frame_bytes=limit, reconnect_initial_s=0.05, reconnect_max_s=0.1)
    async with (
        serve(exchange, "127.0.0.1", 0) as ws_server,
        running_feed(
            f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}",
            ["BTCUSDT"],
            None,
            exchange=FastConnectBinance(),
            options=options,
        ) as run,
    ):
        await wait_until(lambda: run.aggregator.accepted == len(trades), 10, "all trades")

    assert dict(run.stats.rejected) == {"frame_too_large": 1}
    assert dict(run.stats.reconnects) == {"frame_too_large": 1}
    assert [r.__dict__["reason"] for r in caplog.records if r.getMessage() == "frame rejected"] == [
        "frame_too_large"
    ]
    # the frames on both sides of the refused one are aggregated, each once
    assert run.stats.dropped["duplicate"] == 0
    [bar] = run.aggregator.flush()
    assert bar.trades == len(trades)
    assert bar.volume == pytest.approx(sum(float(t.qty) for t in trades), rel=1e-12)


# ---- stop -------------------------------------------------------------------------------------


async def test_stop_ends_the_feed_at_once_even_while_connections_wait_for_a_slot() -> None:
    sources = [kline_source(s, 30) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
    async with ReplayServer(sources, speed=REPLAY_SPEED) as server:
        async with running_feed(
            server.ws_url,
            ["BTCUSDT", "ETHUSDT", "SOLUSDT"],
            server,
            exchange=SlowConnectBinance(),
        ) as run:
            await wait_until(lambda: run.stats.trades > 0, 5, "the first connection")
            stopping_at = time.monotonic()
        assert time.monotonic() - stopping_at < 0.5
        # the two connections still waiting for their slot never connected
        assert len(server.connection_attempts) == 1
        await wait_until(lambda: server.connection_count == 0, 2, "the server sees it")
