"""Quiet minutes that a venue leaves out of its REST bars (Coinbase) come back as flat bars,
also at the start of a repaired range, where the pager has no close of its own to carry on."""

from __future__ import annotations

from streamer.core.exchanges.binance import BINANCE
from streamer.core.exchanges.coinbase import COINBASE
from streamer.core.paging import quiet_lead_in
from streamer.core.types import MINUTE_MS, Bar
from streamer.core.windows import Windows

T0 = 1_682_553_600_000


def candle(minute: int, close: float, volume: float = 1.0) -> Bar:
    t = T0 + minute * MINUTE_MS
    return Bar("coinbase", "BTC-USD", t, close, close, close, close, volume, 0)


def test_the_minutes_before_the_first_candle_are_flat_at_the_close_before_the_range() -> None:
    before = candle(-1, 100.0)
    bars = quiet_lead_in(COINBASE, [candle(3, 103.0)], T0, T0 + 5 * MINUTE_MS, before)
    assert [b.open_time_ms for b in bars] == [T0 + m * MINUTE_MS for m in range(4)]
    assert [(b.close, b.volume, b.complete) for b in bars[:3]] == [(100.0, 0.0, True)] * 3
    assert bars[3] == candle(3, 103.0)


def test_a_range_without_any_candle_is_all_flat_bars() -> None:
    bars = quiet_lead_in(COINBASE, [], T0, T0 + 3 * MINUTE_MS, candle(-1, 100.0))
    assert [(b.open_time_ms, b.close, b.volume) for b in bars] == [
        (T0 + m * MINUTE_MS, 100.0, 0.0) for m in range(3)
    ]


def test_nothing_is_made_up_without_a_close_before_or_on_a_venue_that_reports_every_minute() -> (
    None
):
    assert quiet_lead_in(COINBASE, [], T0, T0 + 3 * MINUTE_MS, None) == []
    assert quiet_lead_in(BINANCE, [], T0, T0 + 3 * MINUTE_MS, candle(-1, 100.0)) == []


def test_the_window_finds_the_bar_before_a_time() -> None:
    w = Windows(cap=10)
    w.apply([candle(0, 100.0), candle(1, 101.0), candle(4, 104.0)])
    key = ("coinbase", "BTC-USD")
    assert w.before(key, T0) is None
    assert w.before(key, T0 + 2 * MINUTE_MS) == candle(1, 101.0)
    assert w.before(key, T0 + 4 * MINUTE_MS) == candle(1, 101.0)
    assert w.before(key, T0 + 9 * MINUTE_MS) == candle(4, 104.0)
    assert w.before(("coinbase", "ETH-USD"), T0) is None
