from __future__ import annotations

from streamer.core.types import Bar
from streamer.core.windows import Windows

MIN = 60_000


def bar(t: int, close: float = 1.0, complete: bool = True) -> Bar:
    return Bar("binance", "BTCUSDT", t * 60_000, close, close, close, close, 1.0, 1, complete)


def test_append_cap_and_tail() -> None:
    w = Windows(cap=3)
    w.apply([bar(1), bar(2), bar(3), bar(4)])
    key = ("binance", "BTCUSDT")
    assert [b.open_time_ms // 60_000 for b in w.tail(key, 10)] == [2, 3, 4]
    assert [b.open_time_ms // 60_000 for b in w.tail(key, 2)] == [3, 4]
    assert w.last(key) == bar(4)
    assert w.last_open_time(key) == 4 * 60_000
    assert w.tail(("binance", "ETHUSDT"), 2) == []
    assert w.last_open_time(("binance", "ETHUSDT")) is None


def test_backfilled_bar_replaces_incomplete_and_fills_holes() -> None:
    w = Windows(cap=10)
    key = ("binance", "BTCUSDT")
    w.apply([bar(1), bar(2, complete=False), bar(4)])
    w.apply([bar(2, close=5.0), bar(3, close=6.0)])
    got = w.tail(key, 10)
    assert [b.open_time_ms // 60_000 for b in got] == [1, 2, 3, 4]
    assert got[1].close == 5.0 and got[1].complete
    assert got[2].close == 6.0


def test_bar_older_than_a_full_window_is_ignored() -> None:
    w = Windows(cap=2)
    w.apply([bar(5), bar(6), bar(1)])
    assert [b.open_time_ms // 60_000 for b in w.tail(("binance", "BTCUSDT"), 5)] == [5, 6]


def test_full_ends_are_the_windows_ending_at_each_minute_since_a_time() -> None:
    w = Windows(cap=10)
    key = ("binance", "BTCUSDT")
    w.apply([bar(t, close=float(t)) for t in (1, 2, 3, 5, 6, 7, 8)])  # minute 4 is a hole
    s = w.series(key)
    assert s is not None
    # windows of 2 ending at minutes 3, 5 (crosses the hole: not full), 6, 7, 8
    ends = s.full_ends(3 * 60_000, 2)
    assert [int(s.times[e - 1]) // 60_000 for e in ends] == [3, 6, 7, 8]
    assert s.full_ends(9 * 60_000, 2) == []
    batch = w.batch([key] * len(ends), 2, ends)
    assert batch[:, :, 3].tolist() == [[2.0, 3.0], [5.0, 6.0], [6.0, 7.0], [7.0, 8.0]]


def flat(i: int, price: float, complete: bool = True) -> Bar:
    return Bar("binance", "BTCUSDT", i * MIN, price, price, price, price, 0.0, 0, complete)


def test_a_repair_reprices_the_flat_bars_that_carried_the_replaced_close_on() -> None:
    w = Windows(cap=10)
    traded = Bar("binance", "BTCUSDT", 1 * MIN, 100.0, 101.0, 99.0, 100.5, 3.0, 4, False)
    w.apply([traded, flat(2, 100.5), flat(3, 100.5), bar(4, 103.0), flat(5, 103.0)])
    # REST has the outage minute with a trade the feed missed: its close is 102.0
    fixed = Bar("binance", "BTCUSDT", 1 * MIN, 100.0, 102.0, 99.0, 102.0, 3.5, 5)
    repriced = w.apply_repair([fixed])
    assert repriced == [flat(2, 102.0), flat(3, 102.0)]  # up to the next minute that traded
    key = ("binance", "BTCUSDT")
    assert [b.close for b in w.tail(key, 5)] == [102.0, 102.0, 102.0, 103.0, 103.0]
    assert w.apply_repair([fixed]) == []  # nothing left to carry on
