"""BarAggregator rules, one test per rule, with exact values."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.core.bars import RECENT_CLOSED_MINUTES, AddOutcome, BarAggregator, snap_volume
from streamer.core.types import MINUTE_MS, Bar, Trade

M0 = 1_582_329_600_000  # 2020-02-22 00:00 UTC, a minute start
M1 = M0 + MINUTE_MS
M2 = M1 + MINUTE_MS
M3 = M2 + MINUTE_MS
GRACE = 2000


def trade(tid: int, ts: int, price: float, qty: float = 0.5, symbol: str = "BTCUSDT") -> Trade:
    return Trade("binance", symbol, tid, ts, price, qty, "buy")


def bar(
    open_time: int,
    o: float,
    h: float,
    lo: float,
    c: float,
    volume: float,
    trades: int,
    symbol: str = "BTCUSDT",
    complete: bool = True,
) -> Bar:
    return Bar("binance", symbol, open_time, o, h, lo, c, volume, trades, complete)


def feed(agg: BarAggregator, trades: list[Trade]) -> list[Bar]:
    out: list[Bar] = []
    for t in trades:
        out += agg.add(t)
    return out


def test_one_minute_ohlcv_and_trade_count() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    closed = feed(
        agg,
        [
            trade(1, M0 + 100, 9682.0, 0.132),
            trade(2, M0 + 5_000, 9690.5, 0.412),
            trade(3, M0 + 20_000, 9671.25, 1.0),
            trade(4, M0 + 59_999, 9680.0, 0.001),
        ],
    )
    assert closed == []
    assert agg.on_clock(M1 + GRACE) == [bar(M0, 9682.0, 9690.5, 9671.25, 9680.0, 1.545, 4)]
    assert agg.accepted == 4


def test_watermark_closes_at_minute_end_plus_grace_not_before() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    agg.add(trade(1, M0 + 10, 9682.0))
    assert agg.add(trade(2, M1 + GRACE - 1, 9683.0)) == []
    assert agg.add(trade(3, M1 + GRACE, 9684.0)) == [
        bar(M0, 9682.0, 9682.0, 9682.0, 9682.0, 0.5, 1)
    ]
    assert agg.watermark_ms == M1 + GRACE


def test_clock_closes_at_minute_end_plus_grace_not_before() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    agg.add(trade(1, M0 + 10, 9682.0))
    assert agg.on_clock(M1 + GRACE - 1) == []
    assert agg.on_clock(M1 + GRACE) == [bar(M0, 9682.0, 9682.0, 9682.0, 9682.0, 0.5, 1)]
    assert agg.on_clock(M1 + GRACE) == []  # nothing closes twice


def test_whichever_of_watermark_and_clock_comes_first_closes() -> None:
    # clock behind the exchange: the watermark closes
    agg = BarAggregator("binance", grace_ms=GRACE)
    agg.on_clock(M0 + 58_000)
    agg.add(trade(1, M0 + 10, 9682.0))
    assert agg.add(trade(2, M1 + GRACE, 9683.0)) == [
        bar(M0, 9682.0, 9682.0, 9682.0, 9682.0, 0.5, 1)
    ]
    # a lagging clock reading afterwards closes nothing more
    assert agg.on_clock(M1) == []
    # feed quiet: the clock closes
    assert agg.on_clock(M2 + GRACE) == [bar(M1, 9683.0, 9683.0, 9683.0, 9683.0, 0.5, 1)]


def test_watermark_of_one_symbol_closes_quiet_symbols_sorted_by_time_then_symbol() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    feed(
        agg,
        [
            trade(7, M0 + 30_000, 250.5, 2.0, symbol="ETHUSDT"),
            trade(1, M0 + 40_000, 9682.0),
            trade(2, M1 + 1_000, 9683.0),
        ],
    )
    closed = agg.add(trade(3, M2 + GRACE, 9684.0))
    assert closed == [
        bar(M0, 9682.0, 9682.0, 9682.0, 9682.0, 0.5, 1),
        bar(M0, 250.5, 250.5, 250.5, 250.5, 2.0, 1, symbol="ETHUSDT"),
        bar(M1, 9683.0, 9683.0, 9683.0, 9683.0, 0.5, 1),
        bar(M1, 250.5, 250.5, 250.5, 250.5, 0.0, 0, symbol="ETHUSDT"),  # flat
    ]


def test_out_of_order_trade_within_grace_lands_in_its_own_minute() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    feed(agg, [trade(1, M0 + 1_000, 9682.0), trade(3, M1 + 1_500, 9700.0)])
    # trade 2 happened at M0 + 59_000 but arrives after trade 3 (watermark M1 + 1.5 s < M1 + grace)
    assert agg.add(trade(2, M0 + 59_000, 9690.0, 0.25)) == []
    assert agg.last_rejected is None
    closed = agg.on_clock(M2 + GRACE)
    assert closed == [
        bar(M0, 9682.0, 9690.0, 9682.0, 9690.0, 0.75, 2),
        bar(M1, 9700.0, 9700.0, 9700.0, 9700.0, 0.5, 1),
    ]


def test_open_and_close_follow_exchange_order_not_arrival() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    # same timestamp, arriving in reverse id order: open is the lowest id, close the highest
    feed(
        agg,
        [
            trade(12, M0 + 500, 9685.0),
            trade(11, M0 + 500, 9684.0),
            trade(10, M0 + 500, 9683.0),
            trade(9, M0 + 100, 9681.0),  # earlier timestamp, arriving last: the open
            trade(13, M0 + 500, 9686.0),
        ],
    )
    (closed,) = agg.on_clock(M1 + GRACE)
    assert (closed.open, closed.close, closed.high, closed.low) == (9681.0, 9686.0, 9686.0, 9681.0)


def test_flat_bars_carry_the_previous_close() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    feed(agg, [trade(1, M0 + 1, 9682.0), trade(2, M0 + 2, 9679.5)])
    assert agg.on_clock(M3 + GRACE) == [
        bar(M0, 9682.0, 9682.0, 9679.5, 9679.5, 1.0, 2),
        bar(M1, 9679.5, 9679.5, 9679.5, 9679.5, 0.0, 0),
        bar(M2, 9679.5, 9679.5, 9679.5, 9679.5, 0.0, 0),
    ]
    agg.add(trade(3, M3 + 4_000, 9700.0))
    assert agg.on_clock(M3 + MINUTE_MS + GRACE) == [bar(M3, 9700.0, 9700.0, 9700.0, 9700.0, 0.5, 1)]


def test_nothing_is_emitted_for_a_symbol_before_its_first_trade() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    closed = agg.add(trade(1, M0 + 1, 9682.0))
    closed += agg.add(trade(50, M2 + 5, 250.5, symbol="ETHUSDT"))  # its watermark closes M0
    assert closed + agg.on_clock(M3 + GRACE) == [
        bar(M0, 9682.0, 9682.0, 9682.0, 9682.0, 0.5, 1),
        bar(M1, 9682.0, 9682.0, 9682.0, 9682.0, 0.0, 0),
        bar(M2, 9682.0, 9682.0, 9682.0, 9682.0, 0.0, 0),
        bar(M2, 250.5, 250.5, 250.5, 250.5, 0.5, 1, symbol="ETHUSDT"),
    ]


def test_duplicate_in_open_minute_is_dropped_and_counted() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    first = trade(1, M0 + 1, 9682.0)
    feed(agg, [first, trade(2, M0 + 2, 9683.0), trade(1, M0 + 1, 9682.0)])
    assert (agg.accepted, agg.duplicates, agg.late) == (2, 1, 0)
    assert agg.last_rejected == (AddOutcome.DUPLICATE, first)
    # also when the symbol has two open minutes (slow path) and the id is in the older one
    agg.add(trade(3, M1 + 1, 9684.0))
    agg.add(trade(2, M0 + 2, 9683.0))
    assert agg.duplicates == 2
    assert agg.on_clock(M1 + GRACE) == [bar(M0, 9682.0, 9683.0, 9682.0, 9683.0, 1.0, 2)]


def test_resent_trade_of_a_closed_minute_is_duplicate_unknown_one_is_late() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    feed(agg, [trade(1, M0 + 1, 9682.0), trade(2, M0 + 2, 9683.0)])
    agg.on_clock(M1 + GRACE)
    agg.add(trade(2, M0 + 2, 9683.0))  # resent after a reconnect
    assert (agg.duplicates, agg.late) == (1, 0)
    late = trade(3, M0 + 59_000, 9690.0)  # never seen, minute closed
    agg.add(late)
    assert (agg.duplicates, agg.late) == (1, 1)
    assert agg.last_rejected == (AddOutcome.LATE, late)
    assert agg.accepted == 2
    # late trade of a symbol never seen before: late too (its minute is closed feed-wide)
    agg.add(trade(9, M0 + 3, 250.5, symbol="ETHUSDT"))
    assert agg.late == 2
    assert agg.on_clock(M2 + GRACE) == [bar(M1, 9683.0, 9683.0, 9683.0, 9683.0, 0.0, 0)]


def test_duplicate_memory_is_bounded_to_recent_closed_minutes() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    minutes = RECENT_CLOSED_MINUTES + 1
    for i in range(minutes):
        agg.add(trade(i, M0 + i * MINUTE_MS, 9682.0 + i))
    agg.on_clock(M0 + minutes * MINUTE_MS + GRACE)
    # the ids of the last RECENT_CLOSED_MINUTES minutes are remembered: duplicates
    for i in range(1, minutes):
        agg.add(trade(i, M0 + i * MINUTE_MS, 9682.0 + i))
    assert (agg.duplicates, agg.late) == (RECENT_CLOSED_MINUTES, 0)
    # the oldest minute's ids are forgotten: its resend counts as late (still dropped)
    agg.add(trade(0, M0, 9682.0))
    assert (agg.duplicates, agg.late) == (RECENT_CLOSED_MINUTES, 1)


def test_future_trade_is_rejected_and_does_not_move_the_watermark() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE, future_tolerance_ms=5000)
    agg.add(trade(1, M0 + 1_000, 9682.0))
    agg.on_clock(M0 + 10_000)
    bad_clock = trade(2, M0 + 15_001, 9683.0)
    # in the open minute (the hot path) and hours ahead (which would close everything)
    assert agg.add(bad_clock) == []
    assert agg.add(trade(3, M0 + 3 * 3_600_000, 9683.0)) == []
    assert agg.future == 2
    assert agg.last_rejected == (AddOutcome.FUTURE, trade(3, M0 + 3 * 3_600_000, 9683.0))
    assert agg.watermark_ms == M0 + 1_000
    # exactly at the tolerance it is accepted
    agg.add(trade(4, M0 + 15_000, 9684.0))
    assert (agg.accepted, agg.future, agg.watermark_ms) == (2, 2, M0 + 15_000)
    # as the clock moves on, the once-future time becomes acceptable
    agg.on_clock(M0 + 11_000)
    agg.add(trade(2, M0 + 15_001, 9683.0))
    assert agg.accepted == 3
    assert agg.on_clock(M1 + GRACE) == [bar(M0, 9682.0, 9684.0, 9682.0, 9683.0, 1.5, 3)]


def test_nothing_is_future_before_the_first_clock_reading() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    agg.add(trade(1, M0, 9682.0))
    agg.add(trade(2, M0 + 3_600_000, 9683.0))
    assert (agg.accepted, agg.future) == (2, 0)


def test_outage_marks_overlapping_bars_incomplete_flat_ones_too() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    agg.add(trade(1, M0 + 1, 9682.0))
    # disconnected from M0 + 30 s to M1 + 10 s: minutes M0 and M1 overlap, M2 does not
    agg.mark_outage(M0 + 30_000, M1 + 10_000)
    closed = agg.add(trade(2, M1 + 20_000, 9683.0))
    assert closed + agg.on_clock(M3 + GRACE) == [
        bar(M0, 9682.0, 9682.0, 9682.0, 9682.0, 0.5, 1, complete=False),
        bar(M1, 9683.0, 9683.0, 9683.0, 9683.0, 0.5, 1, complete=False),
        bar(M2, 9683.0, 9683.0, 9683.0, 9683.0, 0.0, 0),
    ]


def test_open_ended_outage_is_shortened_by_marking_the_same_start_again() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    agg.add(trade(1, M0 + 1, 9682.0))
    agg.mark_outage(M0 + 50_000, 2**62)  # at disconnect: end unknown
    # while disconnected, the clock still closes minutes: incomplete flat bars
    assert agg.on_clock(M2 + GRACE) == [
        bar(M0, 9682.0, 9682.0, 9682.0, 9682.0, 0.5, 1, complete=False),
        bar(M1, 9682.0, 9682.0, 9682.0, 9682.0, 0.0, 0, complete=False),
    ]
    agg.mark_outage(M0 + 50_000, M2 + 5_000)  # reconnected at M2 + 5 s
    assert agg.on_clock(M3 + MINUTE_MS + GRACE) == [
        bar(M2, 9682.0, 9682.0, 9682.0, 9682.0, 0.0, 0, complete=False),
        bar(M3, 9682.0, 9682.0, 9682.0, 9682.0, 0.0, 0),
    ]
    # an interval boundary exactly at a minute start touches that minute (inclusive end)
    agg.mark_outage(M3 + 2 * MINUTE_MS, M3 + 2 * MINUTE_MS)
    closed = agg.on_clock(M3 + 3 * MINUTE_MS + GRACE)
    assert [b.complete for b in closed] == [True, False]
    with pytest.raises(ValueError):
        agg.mark_outage(M3, M2)


def test_seed_restores_last_close_and_closed_minutes() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    agg.seed(bar(M0, 9682.0, 9690.0, 9670.0, 9685.5, 12.0, 40))
    agg.add(trade(100, M0 + 59_000, 9686.0))  # its minute is already stored: late
    assert (agg.late, agg.accepted) == (1, 0)
    closed = agg.add(trade(101, M2 + 3_000, 9700.0))
    assert closed + agg.on_clock(M3 + GRACE) == [
        bar(M1, 9685.5, 9685.5, 9685.5, 9685.5, 0.0, 0),  # flat at the seeded close
        bar(M2, 9700.0, 9700.0, 9700.0, 9700.0, 0.5, 1),
    ]


def test_seed_fills_from_the_stored_bar_when_the_feed_is_already_ahead() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    agg.add(trade(1, M2 + 1, 250.5, symbol="ETHUSDT"))
    agg.seed(bar(M0, 9682.0, 9682.0, 9682.0, 9682.0, 1.0, 1))
    assert agg.on_clock(M3 + GRACE) == [
        bar(M1, 9682.0, 9682.0, 9682.0, 9682.0, 0.0, 0),
        bar(M2, 9682.0, 9682.0, 9682.0, 9682.0, 0.0, 0),
        bar(M2, 250.5, 250.5, 250.5, 250.5, 0.5, 1, symbol="ETHUSDT"),
    ]


def test_seed_is_refused_after_trades_or_for_another_exchange() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    agg.add(trade(1, M1 + 1, 9682.0))
    with pytest.raises(ValueError, match="after it has received trades"):
        agg.seed(bar(M0, 9682.0, 9682.0, 9682.0, 9682.0, 1.0, 1))
    with pytest.raises(ValueError, match="coinbase"):
        agg.seed(Bar("coinbase", "BTC-USD", M0, 1.0, 1.0, 1.0, 1.0, 1.0, 1))
    with pytest.raises(ValueError, match="minute start"):
        agg.seed(bar(M0 + 1, 9682.0, 9682.0, 9682.0, 9682.0, 1.0, 1, symbol="ETHUSDT"))


def test_flush_returns_open_minutes_incomplete_and_keeps_them() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    feed(
        agg,
        [
            trade(1, M0 + 1, 9682.0),
            trade(5, M0 + 2, 250.5, symbol="ETHUSDT"),
            trade(2, M1 + 1_000, 9683.0),
        ],
    )
    flushed = agg.flush()
    assert flushed == [
        bar(M0, 9682.0, 9682.0, 9682.0, 9682.0, 0.5, 1, complete=False),
        bar(M0, 250.5, 250.5, 250.5, 250.5, 0.5, 1, symbol="ETHUSDT", complete=False),
        bar(M1, 9683.0, 9683.0, 9683.0, 9683.0, 0.5, 1, complete=False),
    ]
    assert agg.flush() == flushed
    # nothing lost: a later trade still lands, and the minutes close normally
    closed = agg.add(trade(3, M1 + 2_000, 9684.0))
    assert closed + agg.on_clock(M2 + GRACE) == [
        bar(M0, 9682.0, 9682.0, 9682.0, 9682.0, 0.5, 1),
        bar(M0, 250.5, 250.5, 250.5, 250.5, 0.5, 1, symbol="ETHUSDT"),
        bar(M1, 9683.0, 9684.0, 9683.0, 9684.0, 1.0, 2),
        bar(M1, 250.5, 250.5, 250.5, 250.5, 0.0, 0, symbol="ETHUSDT"),
    ]


def test_clock_jump_of_hours_emits_every_flat_bar_in_order_quickly() -> None:
    symbols = [f"SYM{i:03d}USDT" for i in range(200)]
    agg = BarAggregator("binance", grace_ms=GRACE)
    for i, symbol in enumerate(symbols):
        agg.add(trade(i, M0 + i, 1.0 + i, symbol=symbol))
    hours = 6
    start = time.perf_counter()
    closed = agg.on_clock(M0 + hours * 3_600_000 + GRACE)
    elapsed = time.perf_counter() - start
    minutes = hours * 60
    assert len(closed) == minutes * len(symbols)
    assert [(b.open_time_ms, b.symbol) for b in closed] == [
        (M0 + m * MINUTE_MS, s) for m in range(minutes) for s in symbols
    ]
    assert all(b.trades == 0 and b.close == b.open for b in closed[len(symbols) :])
    # 72,000 bars: linear work, about 1 us each here; generous bound for a loaded machine
    assert elapsed < 5.0


def test_counters_add_up() -> None:
    agg = BarAggregator("binance", grace_ms=GRACE)
    agg.on_clock(M0 + 59_000)
    feed(
        agg,
        [
            trade(1, M0 + 1, 9682.0),
            trade(1, M0 + 1, 9682.0),
            trade(2, M0 + 60_000_000, 9682.0),
            trade(3, M1 + GRACE, 9682.0),
        ],
    )
    agg.on_clock(M1 + GRACE)
    agg.add(trade(4, M0 + 2, 9682.0))
    assert (agg.accepted, agg.duplicates, agg.late, agg.future) == (2, 1, 1, 1)


def test_snap_volume() -> None:
    assert snap_volume(0.0) == 0.0
    assert snap_volume(0.20853481999999998) == 0.20853482
    assert snap_volume(0.1 + 0.2) == 0.3
    # a value that is not near a short decimal is left alone
    assert snap_volume(1 / 3) == 1 / 3
    assert snap_volume(math.pi * 1e5) == math.pi * 1e5


@given(st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_snap_volume_is_the_shortest_decimal_within_two_ulps(total: float) -> None:
    """The binary search finds what trying 1, 2, 3, ... significant digits in turn finds."""
    tolerance = 2 * math.ulp(total)
    shortest = next(
        float(f"{total:.{d}g}")
        for d in range(1, 18)
        if abs(float(f"{total:.{d}g}") - total) <= tolerance
    )
    assert snap_volume(total) == shortest


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        BarAggregator("binance", grace_ms=-1)


def test_outage_of_named_symbols_leaves_the_others_complete() -> None:
    # a feed with two connections: only ETHUSDT's connection dropped
    agg = BarAggregator("binance", grace_ms=GRACE)
    agg.add(trade(1, M0 + 1, 9682.0))
    agg.add(trade(2, M0 + 2, 150.0, symbol="ETHUSDT"))
    agg.mark_outage(M0 + 30_000, M0 + 40_000, symbols=["ETHUSDT"])
    closed = agg.on_clock(M1 + GRACE)
    assert [(b.symbol, b.complete) for b in closed] == [("BTCUSDT", True), ("ETHUSDT", False)]


def test_a_repaired_newest_minute_sets_the_price_of_the_flat_bars_to_come() -> None:
    agg = BarAggregator("binance", grace_ms=0)
    t0 = 1_700_000_040_000 - 1_700_000_040_000 % 60_000
    agg.add(Trade("binance", "BTCUSDT", 1, t0 + 1_000, 100.0, 1.0, "buy"))
    [closed] = agg.on_clock(t0 + 60_000)
    assert closed.close == 100.0
    # REST says the minute closed at 102.0 (a trade the feed missed)
    agg.repaired(Bar("binance", "BTCUSDT", t0, 100.0, 102.0, 100.0, 102.0, 2.0, 2))
    agg.repaired(Bar("binance", "BTCUSDT", t0 - 60_000, 1.0, 1.0, 1.0, 1.0, 1.0, 1))  # older
    [quiet] = agg.on_clock(t0 + 120_000)
    assert (quiet.open, quiet.close, quiet.volume) == (102.0, 102.0, 0.0)
