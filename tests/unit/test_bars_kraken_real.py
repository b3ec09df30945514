"""Real-data oracle: our bars from Kraken's trades against Kraken's own 1-minute bars.

Fixtures (tests/fixtures/kraken/, see the SOURCE note there): 1000 consecutive real BTC/USDT
trades, 2025-11-10 17:23:53.971 .. 2025-11-11 00:13:55.982 UTC, and Kraken's REST OHLC bars for
17:23 .. 00:16. Every minute from 17:23 to 00:16 is compared; exactly one differs, explained
below. Kraken keeps no-trade minutes as flat bars (o=h=l=c=previous close, volume 0), as we do,
so the 140 flat minutes are compared too.
"""

from __future__ import annotations

import math
from collections import Counter
from decimal import Decimal

from support.kraken_pages import load_ohlc, load_rows

from streamer.core.bars import BarAggregator
from streamer.core.types import MINUTE_MS, Bar, Trade

FIRST_MINUTE = 1_762_795_380_000  # 2025-11-10 17:23 UTC, holds the file's first trade
LAST_TRADE_MINUTE = 1_762_819_980_000  # 2025-11-11 00:13 UTC, holds the file's last trade
LAST_COMPARED_MINUTE = 1_762_820_160_000  # 2025-11-11 00:16 UTC
GRACE_MS = 2000


def load_trades() -> list[Trade]:
    return [row.trade() for row in load_rows()]


def aggregate(trades: list[Trade]) -> list[Bar]:
    agg = BarAggregator("kraken", grace_ms=GRACE_MS)
    bars: list[Bar] = []
    for trade in trades:
        bars += agg.add(trade)
    # Kraken's bars 00:14-00:16 have volume 0, so the trade file (cut at 1000 trades) misses
    # nothing there; the clock closes them as flat bars, as a quiet live feed would.
    bars += agg.on_clock(LAST_COMPARED_MINUTE + MINUTE_MS + GRACE_MS)
    assert agg.accepted == 1000
    assert (agg.duplicates, agg.late, agg.future) == (0, 0, 0)
    return bars


def ohlcv(bar: Bar) -> tuple[float, float, float, float, float]:
    return (bar.open, bar.high, bar.low, bar.close, bar.volume)


def test_every_minute_matches_kraken_except_the_partial_first_one() -> None:
    trades = load_trades()
    kraken = load_ohlc()
    bars = aggregate(trades)

    # one bar per minute 17:23 .. 00:16, nothing before the first trade, all complete
    assert [b.open_time_ms for b in bars] == list(
        range(FIRST_MINUTE, LAST_COMPARED_MINUTE + MINUTE_MS, MINUTE_MS)
    )
    assert sorted(kraken) == [b.open_time_ms for b in bars]
    assert all(b.complete and b.symbol == "BTC-USDT" for b in bars)

    # The only differing minute: 17:23. The trade file starts at 17:23:53.971 (trade 10218208),
    # so it holds 1 of that minute's trades; Kraken's bar also has earlier ones (open and low
    # 105433.4, volume 0.00036969 against our single 0.00027625 trade at 105433.6).
    first = bars[0]
    assert first.open_time_ms == FIRST_MINUTE
    assert ohlcv(first) == (105433.6, 105433.6, 105433.6, 105433.6, 0.00027625)
    assert first.trades == 1
    assert kraken[FIRST_MINUTE] == (105433.4, 105433.6, 105433.4, 105433.6, 0.00036969)

    # every other minute is exactly Kraken's bar: open, high, low, close and volume as floats
    differing = [b.open_time_ms for b in bars if ohlcv(b) != kraken[b.open_time_ms]]
    assert differing == [FIRST_MINUTE]

    # trade counts (Kraken's count column is not in the fixture): per minute from the trades
    per_minute = Counter(t.ts_ms - t.ts_ms % MINUTE_MS for t in trades)
    assert {b.open_time_ms: b.trades for b in bars if b.trades} == dict(per_minute)
    assert len(per_minute) == 274
    flat = [b for b in bars if b.trades == 0]
    assert len(flat) == 414 - 274
    assert all(b.volume == 0.0 and b.open == b.high == b.low == b.close for b in flat)
    assert bars[-1].close == trades[-1].price == 105899.4
    assert max(per_minute) == LAST_TRADE_MINUTE


def test_volumes_equal_the_exact_decimal_sums() -> None:
    """Why the volumes match exactly: the aggregator's volume is the float nearest the exact
    decimal sum of the quantity strings, which is also what Kraken reports."""
    sums: dict[int, Decimal] = {}
    for row in load_rows():
        minute = row.ts_ms // MINUTE_MS * MINUTE_MS
        sums[minute] = sums.get(minute, Decimal(0)) + Decimal(row.qty)
    bars = {b.open_time_ms: b for b in aggregate(load_trades())}
    assert {m: bars[m].volume for m in sums} == {m: float(s) for m, s in sums.items()}
    # neither a plain float sum nor fsum alone gets there: they end an ulp or two away from
    # the decimal sum in 41 and 22 of the 274 minutes, which is what snap_volume repairs
    qtys: dict[int, list[float]] = {}
    for t in load_trades():
        qtys.setdefault(t.ts_ms - t.ts_ms % MINUTE_MS, []).append(t.qty)
    assert sum(sum(qtys[m]) != float(s) for m, s in sums.items()) == 41
    assert sum(math.fsum(qtys[m]) != float(s) for m, s in sums.items()) == 22
