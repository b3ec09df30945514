"""Kraken backfill further back than OHLC's 720 minutes, against the replay's Kraken dialect.

Both shells, the streamer's (aiohttp) and the trainer's (urllib), on the replay clock: a range
older than Kraken's OHLC reaches is fetched from ``/0/public/Trades``, paged by ``last``, and
aggregated into exactly the recorded 1-minute bars (the bundled BTCUSDT klines replayed as
Kraken ``BTC-USD``; their trades are the replay's, four a minute); a recent range still comes
from ``/0/public/OHLC``. Expected bars are the source klines, not the code under test.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from support.streamer import comparable, kline_values

from streamer.core.exchanges.kraken import KRAKEN
from streamer.core.types import MINUTE_MS
from streamer.io.backfill import RestBackfill
from streamer.replay.data import Source, bundled_kline_paths, load_source
from streamer.replay.server import ReplayServer
from trainer.backfill import fetch_bars

pytestmark = pytest.mark.integration

SYMBOL = "BTC-USD"


def btc_klines() -> Source:
    path = next(p for p in bundled_kline_paths() if p.name.startswith("BTCUSDT"))
    return load_source(path, SYMBOL)


async def test_a_range_older_than_ohlc_reaches_comes_from_trades_in_both_shells(
    session: aiohttp.ClientSession,
) -> None:
    source = btc_klines()
    first = source.first_open_ms
    start, end = first + 10 * MINUTE_MS, first + 410 * MINUTE_MS  # 1,600 trades: 2 pages
    async with ReplayServer([source], start_ms=first + 1000 * MINUTE_MS, dialect="kraken") as srv:
        backfill = RestBackfill(KRAKEN, srv.rest_url, session, clock=srv.clock_ms)
        bars = await backfill.fetch(SYMBOL, start, end)
        trades_pages = [e for e in srv.rest_log if e.path == "/0/public/Trades"]
        assert [e.status for e in trades_pages] == [200, 200] and len(srv.rest_log) == 2

        table, result = await asyncio.to_thread(
            fetch_bars,
            srv.rest_url,
            "kraken",
            SYMBOL,
            start,
            end,
            sleep=lambda _: None,
            log=lambda _: None,
            now_ms=srv.clock_ms(),
        )
        assert result.pages == 2 and len(srv.rest_log) == 4

        # a range OHLC still reaches: one OHLC page, as before
        recent = await backfill.fetch(SYMBOL, first + 900 * MINUTE_MS, first + 960 * MINUTE_MS)
        assert [e.path for e in srv.rest_log[4:]] == ["/0/public/OHLC"]

    want = kline_values(source, start, end)
    assert len(want) == 400 and comparable(bars) == want
    assert [int(t) for t in table.open_time_ms] == [w[0] for w in want]
    assert [tuple(float(x) for x in row) for row in table.ohlcv] == [w[1:6] for w in want]
    assert comparable(recent) == kline_values(
        source, first + 900 * MINUTE_MS, first + 960 * MINUTE_MS
    )
