"""Real 1-minute bars for the tests of what stores and buffers bars: Binance USD-M BTCUSDT,
2020-02-22 00:00-00:11 UTC, aggregated from the tardis.dev trades of
streamer/replay/data/BTCUSDT_trades_20200222_0000-0205_tardis.csv.gz (see its SOURCES.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from streamer.core.types import Bar

Row = tuple[int, float, float, float, float, float, int]  # open time, OHLCV, trade count

BTC_ROWS: list[Row] = [
    (1582329600000, 9682.0, 9684.69, 9681.28, 9682.31, 35.713, 90),
    (1582329660000, 9681.93, 9683.5, 9666.66, 9673.15, 70.843, 176),
    (1582329720000, 9673.86, 9678.6, 9666.84, 9668.74, 57.815, 172),
    (1582329780000, 9669.41, 9675.19, 9669.41, 9673.21, 41.962, 88),
    (1582329840000, 9674.46, 9674.46, 9670.28, 9671.21, 26.525, 68),
    (1582329900000, 9670.28, 9676.47, 9668.97, 9676.47, 38.021, 107),
    (1582329960000, 9676.46, 9679.09, 9675.7, 9675.8, 24.121, 70),
    (1582330020000, 9676.49, 9678.72, 9675.38, 9677.91, 16.946, 47),
    (1582330080000, 9677.21, 9681.2, 9676.14, 9681.1, 9.038, 50),
    (1582330140000, 9681.09, 9686.85, 9679.66, 9686.84, 36.641, 77),
    (1582330200000, 9686.84, 9686.85, 9686.84, 9686.85, 110.121, 81),
    (1582330260000, 9686.85, 9689.34, 9686.84, 9687.99, 45.963, 66),
]


def bars(exchange: str, symbol: str, rows: Sequence[Row], complete: bool = True) -> list[Bar]:
    return [Bar(exchange, symbol, *row, complete=complete) for row in rows]


BTC = bars("binance", "BTCUSDT", BTC_ROWS)
