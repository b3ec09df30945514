"""Replay data without sockets: the exact volume split, trade synthesis, CSV loading."""

from __future__ import annotations

import gzip
import itertools
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.replay.data import (
    DATA_DIR,
    Kline,
    load_source,
    split_volume,
    synthesize_trades,
)

volumes = st.floats(min_value=2.0**-960, max_value=1e300, allow_nan=False, allow_infinity=False)


@given(volumes)
def test_volume_split_sums_exactly_in_every_order(volume: float) -> None:
    parts = split_volume(volume)
    assert len(parts) == 4 and min(parts) > 0
    assert math.fsum(parts) == volume
    for order in itertools.permutations(parts):
        total = 0.0
        for part in order:
            total += part
        assert total == volume


def test_quarters_plus_remainder_depend_on_the_order() -> None:
    """Why the split works on the significand: three quarters and the remainder add up only
    when the remainder comes last."""
    volume = 76.3774618976614
    quarter = volume / 4
    remainder = volume - (quarter + quarter + quarter)
    assert quarter + quarter + quarter + remainder == volume
    assert remainder + quarter + quarter + quarter != volume
    parts = split_volume(volume)
    assert parts[3] + parts[0] + parts[1] + parts[2] == volume


def test_synthesized_trades_of_a_real_kline() -> None:
    # BTCUSDT 2023-04-27 21:00 UTC, the first row of the bundled file
    kline = Kline(
        1682629200000, "29619.3", "29647.72", "29618.53", "29634.66", "35.19333",
        0, "0.0", "0.0", "0.0", -1, -1,
    )  # fmt: skip
    trades = synthesize_trades(kline)
    first_id = 1682629200000 // 60_000 * 4
    assert [(t.trade_id, t.ts_ms, t.price, t.buyer_is_maker) for t in trades] == [
        (first_id, 1682629200000, "29619.3", False),
        (first_id + 1, 1682629215000, "29647.72", False),
        (first_id + 2, 1682629230000, "29618.53", True),
        (first_id + 3, 1682629245000, "29634.66", False),  # close >= open: a buyer
    ]
    assert math.fsum(float(t.qty) for t in trades) == 35.19333
    assert synthesize_trades(Kline(0, "1", "1", "1", "1", "0", 0, "0", "0", "0", -1, -1)) == []


def test_bundled_kline_file_loads_with_the_source_tokens() -> None:
    source = load_source(DATA_DIR / "BTCUSDT_1m_20230427_20230501.csv.gz")
    assert (source.symbol, source.kind, len(source.klines)) == ("BTCUSDT", "klines", 5761)
    first = source.klines[0]
    assert (first.open_time_ms, first.open, first.high, first.low, first.close, first.volume) == (
        1682629200000, "29619.3", "29647.72", "29618.53", "29634.66", "35.19333",
    )  # fmt: skip
    assert (first.trades, first.first_trade_id, first.last_trade_id) == (
        4,
        1682629200000 // 60_000 * 4,
        1682629200000 // 60_000 * 4 + 3,
    )


def test_trade_file_gets_flat_klines_for_quiet_minutes(tmp_path: Path) -> None:
    # rows 1-2 of the bundled Binance BTCUSDT trades, the second moved two minutes later
    path = tmp_path / "BTCUSDT_trades_test.csv"
    path.write_text(
        "trade_id,timestamp_ms,price,qty,is_buyer_maker,taker_side\n"
        "553287559,1610064000278,39432.48,0.000263,true,sell\n"
        "553287560,1610064120310,39439.44,0.004376,false,buy\n"
    )
    source = load_source(path, "XBT")
    assert source.symbol == "XBT"
    assert [(k.open_time_ms, k.open, k.close, k.volume, k.trades) for k in source.klines] == [
        (1610064000000, "39432.48", "39432.48", "0.000263", 1),
        (1610064060000, "39432.48", "39432.48", "0.0", 0),
        (1610064120000, "39439.44", "39439.44", "0.004376", 1),
    ]
    assert source.klines[2].taker_buy_volume == "0.004376"
    assert [len(source.minute_trades(i)) for i in range(3)] == [1, 0, 1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b\n1,2\n", "unknown header"),
        ("open_time_ms,open,high,low,close,volume\n60000,1,1,1,1,1\n0,1,1,1,1,1\n", "increase"),
        ("open_time_ms,open,high,low,close,volume\n60001,1,1,1,1,1\n", "not on a minute"),
        ("open_time_ms,open,high,low,close,volume\n60000,1,1,nan,1,1\n", "positive"),
        (
            "trade_id,timestamp_ms,price,qty,is_buyer_maker,taker_side\n2,5,1,1,true,sell\n"
            "1,5,1,1,true,sell\n",
            "sorted",
        ),
    ],
)
def test_bad_files_are_refused_with_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "X_bad.csv.gz"
    path.write_bytes(gzip.compress(content.encode()))
    with pytest.raises(ValueError, match=message):
        load_source(path)
