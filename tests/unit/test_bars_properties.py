"""Property tests of BarAggregator (hypothesis).

Prices and quantities are drawn from the real Kraken BTC/USDT trades in tests/fixtures/kraken/,
so volumes are sums of real decimal quantities; timestamps, symbols and arrival orders are drawn.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.bars import BarAggregator
from streamer.core.types import MINUTE_MS, Bar, Trade

KRAKEN_TRADES = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "kraken"
    / "XBTUSDT_trades_20251110_1723-20251111_0013.csv"
)
with KRAKEN_TRADES.open() as _f:
    _rows = list(csv.DictReader(_f))
PRICES = sorted({float(r["price"]) for r in _rows})
QTYS = sorted({float(r["qty"]) for r in _rows})

M0 = 1_762_795_440_000  # 2025-11-10 17:24 UTC
GRACE = 2000
SPAN_MS = 6 * MINUTE_MS
SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT")
END_CLOCK = M0 + SPAN_MS + 2 * MINUTE_MS + GRACE  # closes every minute with trades


@st.composite
def trade_lists(draw: st.DrawFn, max_size: int = 80) -> list[Trade]:
    """Trades as an exchange reports them: per symbol, ids grow in (ts, execution) order."""
    # coarse offsets make equal timestamps common: ties are where arrival order could leak
    offsets = st.one_of(
        st.integers(0, SPAN_MS - 1), st.integers(0, SPAN_MS // 500 - 1).map(lambda k: k * 500)
    )
    raw = draw(
        st.lists(
            st.tuples(
                st.sampled_from(SYMBOLS), offsets, st.sampled_from(PRICES), st.sampled_from(QTYS)
            ),
            min_size=1,
            max_size=max_size,
        )
    )
    raw.sort(key=lambda r: r[1])  # stable: equal timestamps keep their drawn execution order
    next_id: dict[str, int] = defaultdict(lambda: 1000)
    trades = []
    for symbol, offset, price, qty in raw:
        next_id[symbol] += 1
        trades.append(Trade("kraken", symbol, next_id[symbol], M0 + offset, price, qty, "buy"))
    return trades


def run(trades: list[Trade]) -> tuple[list[Bar], BarAggregator]:
    agg = BarAggregator("kraken", grace_ms=GRACE)
    out: list[Bar] = []
    for t in trades:
        out += agg.add(t)
    out += agg.on_clock(END_CLOCK)
    return out, agg


def reference_bars(trades: list[Trade], closed_before: int) -> list[Bar]:
    """Bars computed the obvious way, for comparison: group, sort, fill flat minutes."""
    by_symbol: dict[str, dict[int, list[Trade]]] = defaultdict(lambda: defaultdict(list))
    for t in trades:
        by_symbol[t.symbol][t.ts_ms - t.ts_ms % MINUTE_MS].append(t)
    bars = []
    for symbol, minutes in by_symbol.items():
        last_close = None
        for minute in range(min(minutes), closed_before, MINUTE_MS):
            group = sorted(minutes.get(minute, []), key=lambda t: (t.ts_ms, t.trade_id))
            if group:
                prices = [t.price for t in group]
                volume = math.fsum(t.qty for t in group)
                bars.append(
                    Bar(
                        "kraken",
                        symbol,
                        minute,
                        group[0].price,
                        max(prices),
                        min(prices),
                        group[-1].price,
                        volume,
                        len(group),
                    )
                )
                last_close = group[-1].price
            else:
                assert last_close is not None
                c = last_close
                bars.append(Bar("kraken", symbol, minute, c, c, c, c, 0.0, 0))
    bars.sort(key=lambda b: (b.open_time_ms, b.symbol))
    return bars


def same_bars(got: list[Bar], want: list[Bar]) -> None:
    """Exact on everything but volume, which is compared to 1e-12 (see snap_volume)."""
    assert [(b.symbol, b.open_time_ms) for b in got] == [(b.symbol, b.open_time_ms) for b in want]
    for g, w in zip(got, want, strict=True):
        assert (g.open, g.high, g.low, g.close, g.trades, g.complete) == (
            w.open,
            w.high,
            w.low,
            w.close,
            w.trades,
            w.complete,
        )
        assert math.isclose(g.volume, w.volume, rel_tol=1e-12, abs_tol=0.0)


@settings(max_examples=300, deadline=None)
@given(trade_lists(), st.data())
def test_arrival_order_within_grace_does_not_change_the_bars(
    trades: list[Trade], data: st.DataObject
) -> None:
    in_order = sorted(trades, key=lambda t: (t.ts_ms, t.trade_id))
    # each trade is delayed by less than the grace period; arrival follows ts + delay
    delays = data.draw(
        st.lists(st.integers(0, GRACE - 1), min_size=len(trades), max_size=len(trades))
    )
    tiebreak = data.draw(st.permutations(range(len(trades))))
    arrival = [
        t
        for _, _, t in sorted(
            zip(
                [t.ts_ms + d for t, d in zip(trades, delays, strict=True)],
                tiebreak,
                trades,
                strict=True,
            ),
            key=lambda x: (x[0], x[1]),
        )
    ]
    expected, agg_in_order = run(in_order)
    got, agg = run(arrival)
    assert got == expected  # exact, volumes included
    assert agg.accepted == agg_in_order.accepted == len(trades)
    assert (agg.duplicates, agg.late, agg.future) == (0, 0, 0)
    same_bars(got, reference_bars(trades, END_CLOCK - GRACE - (END_CLOCK - GRACE) % MINUTE_MS))


@settings(max_examples=300, deadline=None)
@given(trade_lists(), st.data())
def test_conservation_and_bar_invariants_under_any_arrival(
    trades: list[Trade], data: st.DataObject
) -> None:
    # any arrival order, some trades sent twice, clock readings interleaved: trades get
    # accepted, or dropped as duplicate, late or future
    sent = data.draw(st.permutations(trades + data.draw(st.lists(st.sampled_from(trades)))))
    clock_after = data.draw(
        st.lists(st.tuples(st.integers(0, len(sent)), st.integers(0, SPAN_MS)), max_size=6)
    )
    clock_at: dict[int, list[int]] = defaultdict(list)
    for index, offset in clock_after:
        clock_at[index].append(M0 + offset)

    agg = BarAggregator("kraken", grace_ms=GRACE)
    out: list[Bar] = []
    accepted: list[Trade] = []
    for i, t in enumerate(sent):
        for now in clock_at.get(i, []):
            out += agg.on_clock(now)
        rejected_before = agg.duplicates + agg.late + agg.future
        out += agg.add(t)
        if agg.duplicates + agg.late + agg.future == rejected_before:
            accepted.append(t)
    out += agg.on_clock(END_CLOCK)

    assert agg.accepted == len(accepted)
    assert agg.accepted + agg.duplicates + agg.late + agg.future == len(sent)
    assert len({(t.symbol, t.trade_id) for t in accepted}) == len(accepted)  # no dup accepted
    # conservation: every accepted trade is in exactly one bar
    assert sum(b.trades for b in out) == len(accepted)
    assert math.isclose(
        math.fsum(b.volume for b in out), math.fsum(t.qty for t in accepted), rel_tol=1e-12
    )
    for b in out:
        assert b.high >= max(b.open, b.close)
        assert b.low <= min(b.open, b.close)
        assert (b.trades == 0) == (b.volume == 0.0)
        assert b.complete
    # closed once each, sorted by (open time, symbol) across all calls
    keys = [(b.open_time_ms, b.symbol) for b in out]
    assert keys == sorted(set(keys))
    same_bars(out, reference_bars(accepted, END_CLOCK - GRACE - (END_CLOCK - GRACE) % MINUTE_MS))
