"""OKX's and Bybit's connection and REST limits, enforced by the replay exchange over loopback.

The replay refuses what is over a venue's limits, as the venue does; the streamer's feed and
backfill keep within them at their own pace, and recover from a refusal when a limit is
tighter than that pace (``rules`` of the replay server: a smaller window than the venue's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
import websockets
from support.streamer import REPLAY_GRACE_MS, kline_source
from support.waits import wait_until

from streamer.core.bars import BarAggregator
from streamer.core.clock import Clock
from streamer.core.exchanges.bybit import BYBIT, KEEPALIVE_MESSAGE, BybitSpot
from streamer.core.exchanges.okx import OKX, OkxSpot
from streamer.core.types import MINUTE_MS
from streamer.io.backfill import RestBackfill
from streamer.io.feed import Feed, FeedOptions
from streamer.io.metrics import Metrics
from streamer.replay.bybit import BybitDialect
from streamer.replay.cli import WS_PATHS
from streamer.replay.data import Source
from streamer.replay.dialect import ControlOutcome
from streamer.replay.limits import RequestLimit, VenueRules
from streamer.replay.okx import CANDLES_PATH, HISTORY_PATH, OkxDialect
from streamer.replay.rest import RestLogEntry
from streamer.replay.server import ReplayServer

pytestmark = pytest.mark.integration

OKX_SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT")


def renamed(symbol: str, minutes: int | None = None) -> Source:
    """The bundled BTCUSDT klines under the name ``symbol``."""
    return dataclasses.replace(kline_source("BTCUSDT", minutes), symbol=symbol)


def most_within(log: Sequence[RestLogEntry], seconds: float) -> int:
    """The most requests of ``log`` that arrived within any ``seconds``."""
    times = [entry.arrived for entry in log]
    return max((sum(1 for t in times[i:] if t - start < seconds) for i, start in
                enumerate(times)), default=0)  # fmt: skip


# --- OKX: 3 connection requests a second per IP ------------------------------------------------


async def test_okx_answers_the_fourth_connection_request_within_a_second_429() -> None:
    async with ReplayServer([renamed("BTC-USDT", 10)], dialect="okx") as server:
        url = server.ws_url + WS_PATHS["okx"]
        opened = [await websockets.connect(url) for _ in range(3)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url)
        assert refused.value.response.status_code == 429
        assert server.connection_rate_refusals == 1
        for ws in opened:
            await ws.close()


class OnePerConnectionOkx(OkxSpot):
    max_streams_per_connection = 1  # a connection per symbol: four connection requests


class HastyOkx(OnePerConnectionOkx):
    connect_attempts_per_s = 100.0  # far over OKX's 3 a second


def feed_of(exchange: Any, server: ReplayServer, symbols: Sequence[str]) -> Feed:
    """A feed of ``symbols`` from ``server`` (reconnecting after 0.3 s to 1 s)."""
    return Feed(
        exchange,
        list(symbols),
        list(exchange.channels),
        server.ws_url + WS_PATHS[exchange.name],
        BarAggregator(exchange.name, grace_ms=REPLAY_GRACE_MS, clock=server.clock_ms),
        Metrics().add_feed(exchange.name),
        Clock.wall(server.clock_ms),
        on_bars=lambda bars: None,
        on_gap=lambda gap: None,
        options=FeedOptions(reconnect_initial_s=0.3, reconnect_max_s=1.0),
    )


async def feed_connections(exchange: OkxSpot) -> ReplayServer:
    """An OKX replay and a feed of ``OKX_SYMBOLS`` on ``exchange``, until all four connections
    are open; the server, closed."""
    sources = [renamed(symbol, 30) for symbol in OKX_SYMBOLS]
    async with ReplayServer(sources, speed=1.0, dialect="okx") as server:
        feed = feed_of(exchange, server, OKX_SYMBOLS)
        assert len(feed.plans) == 4
        task = asyncio.create_task(feed.run(), name="okx-feed")
        try:
            await wait_until(lambda: server.connection_count == 4, 20, "four connections")
        finally:
            feed.stop()
            await asyncio.wait_for(task, 5)
    return server


async def test_the_feed_opens_okx_connections_within_the_connection_rate() -> None:
    server = await feed_connections(OnePerConnectionOkx())
    assert server.connection_rate_refusals == 0
    assert len(server.connection_attempts) == 4


async def test_a_feed_connecting_too_fast_is_refused_and_retries_until_all_are_open() -> None:
    server = await feed_connections(HastyOkx())
    assert server.connection_rate_refusals >= 1
    assert len(server.connection_attempts) == 4 + server.connection_rate_refusals


# --- Bybit: a connection whose client sent nothing for 10 minutes is closed -------------------

IDLE_S = 1.0  # the replay's 10 minutes, shortened
PING_S = 0.2  # the feed's 20 s, shortened alike


class QuickKeepaliveBybit(BybitSpot):
    rules = dataclasses.replace(BYBIT.rules, keepalive_interval_s=PING_S)


class ListeningBybit(BybitDialect):
    """Counts the keepalive pings it answers."""

    pings = 0

    def control(self, message: str | bytes, streams: Any, framing: int) -> ControlOutcome:
        if message == KEEPALIVE_MESSAGE:
            self.pings += 1
        return super().control(message, streams, framing)


async def test_the_feeds_ping_keeps_a_bybit_connection_past_the_idle_timeout() -> None:
    dialect = ListeningBybit(["BTCUSDT"])
    async with ReplayServer(
        [renamed("BTCUSDT", 30)], speed=1.0, dialect=dialect, client_idle_timeout_s=IDLE_S
    ) as server:
        bybit = feed_of(QuickKeepaliveBybit(), server, ["BTCUSDT"])
        task = asyncio.create_task(bybit.run(), name="bybit-feed")
        try:
            await wait_until(lambda: dialect.pings >= 3 * IDLE_S / PING_S, 10, "15 pings")
            assert server.idle_closes == 0
            assert server.sent.connections == server.connection_count == 1
        finally:
            bybit.stop()
            await asyncio.wait_for(task, 5)
        # a client that sends nothing is closed once the timeout has passed
        async with websockets.connect(server.ws_url + WS_PATHS["bybit"]) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5 * IDLE_S)
        assert server.idle_closes == 1


# --- OKX and Bybit: REST requests per IP -------------------------------------------------------


async def backfill(
    session: aiohttp.ClientSession,
    exchange: Any,
    symbol: str,
    minutes: int,
    rules: VenueRules | None = None,
) -> ReplayServer:
    """Backfill the first ``minutes`` of the data from a replay of ``exchange``'s venue whose
    clock is at the end of the data, check every bar came; the server, closed."""
    source = renamed(symbol)
    live = source.klines[-60].open_time_ms
    async with ReplayServer([source], start_ms=live, dialect=exchange.name, rules=rules) as server:
        client = RestBackfill(exchange, server.rest_url, session, clock=server.clock_ms)
        start = source.first_open_ms
        bars = await client.fetch(symbol, start, start + minutes * MINUTE_MS)
    assert [b.open_time_ms for b in bars] == [start + i * MINUTE_MS for i in range(minutes)]
    assert [b.close for b in bars] == [float(k.close) for k in source.klines[:minutes]]
    return server


async def test_the_okx_backfill_keeps_within_20_history_candles_requests_in_2_s(
    session: aiohttp.ClientSession,
) -> None:
    server = await backfill(session, OKX, "BTC-USDT", 2500)  # 25 pages: more than 20
    assert {entry.path for entry in server.rest_log} == {HISTORY_PATH}
    assert len(server.rest_log) == 25 and server.sent.rest_throttled == 0
    assert most_within(server.rest_log, 2.0) <= 20


async def test_the_okx_backfill_waits_out_a_429_and_gets_every_bar(
    session: aiohttp.ClientSession,
) -> None:
    tight = RequestLimit(3, 1.0, frozenset({HISTORY_PATH, CANDLES_PATH}))  # under its pace
    rules = dataclasses.replace(OkxDialect(["BTC-USDT"]).rules, request_limits=(tight,))
    server = await backfill(session, OKX, "BTC-USDT", 800, rules)
    statuses = [entry.status for entry in server.rest_log]
    assert statuses.count(200) == 8 and server.sent.rest_throttled == statuses.count(429) > 0
    assert most_within([e for e in server.rest_log if e.status == 200], 1.0) <= 3


async def test_the_bybit_backfill_keeps_within_600_requests_in_5_s(
    session: aiohttp.ClientSession,
) -> None:
    server = await backfill(session, BYBIT, "BTCUSDT", 5000)
    assert server.sent.rest_throttled == 0 and {e.status for e in server.rest_log} == {200}
    assert 0 < most_within(server.rest_log, 5.0) <= 600


def test_most_within_counts_a_sliding_window() -> None:
    log = [RestLogEntry(t, "/", 200) for t in itertools.accumulate([0.0, 0.5, 0.4, 0.2, 1.5])]
    assert most_within(log, 1.0) == 3  # 0.5, 0.9 and 1.1
