"""The REST pagers: what they ask for, what they keep of each page, and when they stop. Bar pages
are real Binance klines (the bundled BTCUSDT CSV) parsed by the exchange module; trade pages
are real recorded Kraken trades rendered as Kraken's ``/0/public/Trades`` answers."""

from __future__ import annotations

from typing import Any

import pytest
from support.kraken_pages import Row, load_ohlc, load_rows, trades_body, trades_page

from streamer.core.bars import BarAggregator
from streamer.core.exchanges.binance import BINANCE
from streamer.core.exchanges.coinbase import COINBASE
from streamer.core.exchanges.kraken import KRAKEN
from streamer.core.paging import (
    DEPTH_MARGIN_MINUTES,
    TRADE_PAGE_OVERLAP_NS,
    Pager,
    RestPager,
    TradePager,
    choose_pager,
    read_page,
)
from streamer.core.retry import Permanent, Throttled, Transient
from streamer.core.types import MINUTE_MS, Bar
from streamer.replay.data import bundled_kline_paths, load_source


def real_bars(n: int) -> list[Bar]:
    source = load_source(next(p for p in bundled_kline_paths() if p.name.startswith("BTCUSDT")))
    body = "[" + ",".join(str(k.rest_row()).replace("'", '"') for k in source.klines[:n]) + "]"
    return BINANCE.parse_bars("BTCUSDT", body.encode())


def test_pages_move_the_cursor_past_the_newest_bar_and_stop_at_the_end() -> None:
    bars = real_bars(25)
    start, end = bars[0].open_time_ms + 30_000, bars[20].open_time_ms  # mid-minute start
    pager = RestPager(BINANCE, "BTCUSDT", start, end)
    first = pager.next_request()
    assert first is not None and first.params["startTime"] == str(bars[0].open_time_ms)
    pager.accept(bars[:8])
    second = pager.next_request()
    assert second is not None and second.params["startTime"] == str(bars[8].open_time_ms)
    pager.accept(bars[5:25])  # overlap and bars past the end: kept once, the rest ignored
    assert pager.done and pager.next_request() is None and pager.pages == 2
    assert pager.bars() == bars[:20]


def test_a_page_with_nothing_new_moves_on_by_its_span_and_never_loops() -> None:
    bars = real_bars(5)
    start = bars[0].open_time_ms
    pager = RestPager(BINANCE, "BTCUSDT", start, start + 1900 * MINUTE_MS)
    pager.accept(bars)
    assert pager.cursor == bars[-1].open_time_ms + MINUTE_MS
    pager.accept(bars)  # the same bars again: nothing at or after the cursor
    assert pager.cursor == bars[-1].open_time_ms + (1 + 1000) * MINUTE_MS  # one page further
    assert not pager.done
    pager.accept([])
    assert pager.done and pager.pages == 3 and pager.bars() == bars


def test_a_quiet_coinbase_stretch_neither_ends_the_backfill_nor_stays_incomplete() -> None:
    # Coinbase leaves minutes without trades out of its candles, and a whole 300-minute page
    # may be empty: the pager goes on past it, and the missing minutes come back as flat bars
    # at the close before them.
    t0 = 1_682_553_600_000

    def candle(minute: int, close: float) -> Bar:
        return Bar(
            "coinbase", "BTC-USD", t0 + minute * MINUTE_MS, close, close, close, close, 1.0, 0
        )

    pager = RestPager(COINBASE, "BTC-USD", t0, t0 + 700 * MINUTE_MS)
    pager.accept([candle(0, 100.0), candle(2, 102.0)])  # minute 1 had no trade
    pager.accept([])  # 3 .. 302: nothing traded
    assert not pager.done
    pager.accept([candle(650, 99.0)])
    assert not pager.done
    pager.accept([])  # 651 .. 699: quiet to the end
    assert pager.done
    bars = pager.bars()
    assert [b.open_time_ms for b in bars] == [t0 + m * MINUTE_MS for m in range(700)]
    flat = bars[1]
    assert (flat.open, flat.high, flat.low, flat.close, flat.volume, flat.trades) == (
        100.0,
        100.0,
        100.0,
        100.0,
        0.0,
        0,
    )
    assert flat.complete
    assert bars[300].close == 102.0 and bars[699].close == 99.0 and bars[650].volume == 1.0
    # Binance reports every minute, quiet ones included: nothing is made up
    binance = RestPager(BINANCE, "BTCUSDT", t0, t0 + 10 * MINUTE_MS)
    binance.accept([candle(0, 1.0), candle(5, 2.0)])
    assert len(binance.bars()) == 2


def test_an_empty_range_asks_for_nothing() -> None:
    pager = RestPager(BINANCE, "BTCUSDT", 1_682_553_600_000, 1_682_553_600_000)
    assert pager.done and pager.next_request() is None


def test_answers_become_bars_or_the_failure_they_stand_for() -> None:
    with pytest.raises(Throttled):
        read_page(BINANCE, "BTCUSDT", 429, b'{"code":-1003}', "1", "binance /api/v3/klines")
    with pytest.raises(Transient):
        read_page(BINANCE, "BTCUSDT", 502, b"bad gateway", None, "binance /api/v3/klines")
    with pytest.raises(Permanent, match=r"answered HTTP 400: .*Invalid symbol"):
        read_page(BINANCE, "X", 400, b'{"code":-1121,"msg":"Invalid symbol."}', None, "binance")
    with pytest.raises(Permanent, match="unusable"):
        read_page(BINANCE, "BTCUSDT", 200, b"[[1682629200000, 1]]", None, "binance")


# --- trades: Kraken's older minutes from /0/public/Trades ----------------------------------

M1724 = 1_762_795_440_000  # 2025-11-10 17:24 UTC, a minute with trades
M0000 = 1_762_819_200_000  # 2025-11-11 00:00 UTC, minutes of trades follow it
M0013 = 1_762_819_980_000  # the minute of the recording's last trade
M0017 = 1_762_820_220_000  # Kraken's OHLC answer reaches 00:16


def aggregator_bars(rows: list[Row], start_ms: int, end_ms: int) -> list[Bar]:
    """The live path's bars of the same trades: the pure aggregator with its default grace,
    the clock closing the quiet minutes after the last trade."""
    agg = BarAggregator("kraken")
    bars = [bar for row in rows for bar in agg.add(row.trade())]
    bars += agg.on_clock(end_ms + agg.grace_ms)
    return [b for b in bars if start_ms <= b.open_time_ms < end_ms]


def page_through(pager: Pager[Any], rows: list[Row], per_page: int) -> list[int]:
    """Serve the pager Kraken's pages of ``rows`` until it is done; the ``since`` it asked."""
    asked: list[int] = []
    while (request := pager.next_request()) is not None:
        assert request.path == "/0/public/Trades"
        assert request.params["pair"] == "XBTUSDT" and request.params["count"] == "1000"
        asked.append(int(request.params["since"]))
        body = trades_page(rows, asked[-1], per_page)
        pager.accept(pager.read(200, body, None, "kraken /0/public/Trades"))
        assert len(asked) <= len(rows) // per_page + 3, "the pager does not move on"
    return asked


def assert_every_minute_as_krakens_own(
    bars: list[Bar], rows: list[Row], start_ms: int, end_ms: int
) -> None:
    """``bars``: the aggregator's of the trades in [start_ms, end_ms), one for every minute, each
    equal to Kraken's own OHLC bar of its minute."""
    assert bars == aggregator_bars(rows, start_ms, end_ms)
    assert [b.open_time_ms for b in bars] == list(range(start_ms, end_ms, MINUTE_MS))
    kraken = load_ohlc()
    assert [(b.open, b.high, b.low, b.close, b.volume) for b in bars] == [
        kraken[b.open_time_ms] for b in bars
    ]


def test_bars_from_real_kraken_trades_equal_the_aggregators_and_krakens_own() -> None:
    rows = load_rows()
    pager = TradePager(KRAKEN, "BTC-USDT", M1724 + 25_000, M0000, now_ms=M0017 + 3_600_000)
    asked = page_through(pager, rows, per_page=100)

    bars = pager.bars()
    # exactly Kraken's own OHLC bars of those minutes, quiet ones (flat, volume 0) included
    assert_every_minute_as_krakens_own(bars, rows, M1724, M0000)
    # with the trade count, which the aggregator counts per minute
    in_range = [r for r in rows if M1724 <= r.ts_ms < M0000]
    assert sum(b.trades for b in bars) == len(in_range) and bars[2].trades == 13
    assert all(b.complete and b.symbol == "BTC-USDT" for b in bars)
    # from one ms before the range's first minute, then each page from its last
    assert asked[0] == M1724 * 1_000_000 - 1_000_000
    # 999 trades from 17:24 on, pages of 100 less the repeats of each last millisecond
    assert asked == sorted(set(asked)) and pager.pages == len(asked) == 11


def test_each_page_starts_at_the_previous_pages_last() -> None:
    rows = load_rows()
    pager = TradePager(KRAKEN, "BTC-USDT", M1724, M0000, now_ms=M0017)
    request = pager.next_request()
    assert request is not None
    first = pager.read(200, trades_page(rows, int(request.params["since"]), 50), None, "kraken")
    assert first[1] == rows[51].ts_ms * 1_000_000  # the 50 trades after the 17:23 one
    pager.accept(first)
    following = pager.next_request()
    assert following is not None
    assert int(following.params["since"]) == first[1] - TRADE_PAGE_OVERLAP_NS
    pager.accept(pager.read(200, trades_body(rows[60:70], 1_762_796_000_123_456_789), None, "k"))
    again = pager.next_request()
    assert again is not None and int(again.params["since"]) == 1_762_796_000_122_456_789


def test_a_page_cut_inside_a_millisecond_loses_no_trade() -> None:
    rows = load_rows()
    # trades 10218215 .. 10218226 (rows 7 .. 18) share one millisecond; the first page of 15
    # (rows 1 .. 15) ends among them, and Kraken's next page after its last would skip 16 .. 18
    burst = [r for r in rows if r.ts_ms == rows[7].ts_ms]
    assert len(burst) == 12 and rows[15].ts_ms == rows[16].ts_ms == rows[18].ts_ms
    pager = TradePager(KRAKEN, "BTC-USDT", M1724, M1724 + 10 * MINUTE_MS, now_ms=M0017)
    page_through(pager, rows, per_page=15)
    assert pager.bars() == aggregator_bars(rows, M1724, M1724 + 10 * MINUTE_MS)
    assert pager.bars()[2].trades == 13


def test_the_newest_trade_past_the_end_ends_the_paging_without_another_request() -> None:
    rows = load_rows()
    pager = TradePager(KRAKEN, "BTC-USDT", M1724, M1724 + 3 * MINUTE_MS, now_ms=M0017)
    assert page_through(pager, rows, per_page=1000) == [M1724 * 1_000_000 - 1_000_000]
    assert pager.done and pager.pages == 1
    assert [b.open_time_ms for b in pager.bars()] == [M1724, M1724 + MINUTE_MS, M1724 + 120_000]


def test_past_the_newest_trade_a_page_with_nothing_new_ends_and_quiet_minutes_close() -> None:
    rows = load_rows()
    pager = TradePager(KRAKEN, "BTC-USDT", M0000, M0017, now_ms=M0017 + 3_600_000)
    asked = page_through(pager, rows, per_page=1000)
    # one page of trades, then one that repeats only the last millisecond's trade
    assert len(asked) == 2 and pager.done
    bars = pager.bars()
    assert_every_minute_as_krakens_own(bars, rows, M0000, M0017)
    assert [b.trades for b in bars[-3:]] == [0, 0, 0]  # 00:14 .. 00:16, flat at 105899.4
    # ... but only the minutes that had ended when the pager was made: 00:14 ended 1 ms
    # before; the running 00:15 is the live feed's (its trades may still come)
    soon = TradePager(KRAKEN, "BTC-USDT", M0000, M0017, now_ms=M0013 + 2 * MINUTE_MS + 1)
    page_through(soon, rows, per_page=1000)
    assert soon.bars() == bars[:-2] and soon.bars()[-1].open_time_ms == M0013 + MINUTE_MS


def test_an_empty_page_ends_the_paging() -> None:
    pager = TradePager(KRAKEN, "BTC-USDT", M1724, M0000, now_ms=M0017)
    pager.accept(pager.read(200, trades_body([], 5), None, "kraken"))
    assert pager.done and pager.next_request() is None and pager.bars() == []
    empty = TradePager(KRAKEN, "BTC-USDT", M1724, M1724, now_ms=M0017)
    assert empty.done and empty.next_request() is None


def test_trade_answers_become_trades_or_the_failure_they_stand_for() -> None:
    pager = TradePager(KRAKEN, "BTC-USDT", M1724, M0000, now_ms=M0017)
    with pytest.raises(Throttled):
        pager.read(429, b'{"error":["EGeneral:Too many requests"]}', "2", "kraken")
    with pytest.raises(Transient):
        pager.read(503, b"unavailable", None, "kraken")
    with pytest.raises(Permanent, match="unusable: exchange_error"):
        pager.read(200, b'{"error":["EQuery:Unknown asset pair"]}', None, "kraken")
    with pytest.raises(Permanent, match="unusable: missing_field"):
        pager.read(
            200, b'{"error":[],"result":{"XBTUSDT":[["1","1",1.5,"b"]],"last":"1"}}', None, "k"
        )
    assert pager.pages == 0


def test_kraken_ranges_older_than_its_ohlc_reaches_come_from_trades() -> None:
    now = M0017 + 25_000
    depth = (KRAKEN.rules.bars_depth_minutes - DEPTH_MARGIN_MINUTES) * MINUTE_MS
    old = choose_pager(KRAKEN, "BTC-USDT", now - 13 * 60 * MINUTE_MS, now - 60 * MINUTE_MS, now)
    assert isinstance(old, TradePager)
    edge = M0017 - depth  # the oldest minute trusted to OHLC
    assert isinstance(choose_pager(KRAKEN, "BTC-USDT", edge, now, now), RestPager)
    assert isinstance(choose_pager(KRAKEN, "BTC-USDT", edge - 1, now, now), TradePager)
    recent = choose_pager(KRAKEN, "BTC-USDT", now - 60 * MINUTE_MS, now, now)
    assert isinstance(recent, RestPager)
    request = recent.next_request()
    assert request is not None and request.path == "/0/public/OHLC"
    # venues without a trade history, or whose bars reach far back, page their bars
    assert isinstance(choose_pager(BINANCE, "BTCUSDT", 0, now, now), RestPager)
    assert isinstance(choose_pager(COINBASE, "BTC-USD", 0, now, now), RestPager)
