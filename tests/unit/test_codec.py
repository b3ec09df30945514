"""The Redis bar format of DESIGN.md 3.3: exact bytes, round trips, and rejection of bad input."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.contracts.redis_bars import bars_key, decode_bar, encode_bar, incomplete_key
from streamer.core.types import MINUTE_MS, Bar

# Kraken BTC/USDT, 2025-11-10 17:24 UTC: the bar of the five real trades 10218209..10218213
KRAKEN_BAR = Bar(
    "kraken", "BTC-USDT", 1_762_795_440_000, 105410.1, 105410.1, 105351.1, 105351.1, 0.0095537, 5
)


def test_keys() -> None:
    assert bars_key("binance", "BTCUSDT") == "tickcast:bars:binance:BTCUSDT"
    assert bars_key("kraken", "BTC-USD") == "tickcast:bars:kraken:BTC-USD"
    assert incomplete_key("kraken", "BTC-USD") == "tickcast:incomplete:kraken:BTC-USD"


def test_encode_is_the_compact_3_3_array() -> None:
    assert encode_bar(KRAKEN_BAR) == (
        b"[1762795440000,105410.1,105410.1,105351.1,105351.1,0.0095537,5]"
    )
    flat = Bar(
        "kraken", "BTC-USDT", 1_762_795_500_000, 105351.1, 105351.1, 105351.1, 105351.1, 0.0, 0
    )
    assert encode_bar(flat) == b"[1762795500000,105351.1,105351.1,105351.1,105351.1,0.0,0]"
    # completeness is not part of the contract array
    incomplete = msgspec.structs.replace(KRAKEN_BAR, complete=False)
    assert encode_bar(incomplete) == encode_bar(KRAKEN_BAR)


def test_decode_round_trip_and_complete_flag() -> None:
    raw = encode_bar(KRAKEN_BAR)
    assert decode_bar("kraken", "BTC-USDT", raw) == KRAKEN_BAR
    assert decode_bar("kraken", "BTC-USDT", raw.decode()) == KRAKEN_BAR
    assert decode_bar("kraken", "BTC-USDT", raw, complete=False).complete is False
    # integers where floats belong (other writers may drop ".0") are fine
    decoded = decode_bar("binance", "BTCUSDT", b"[1582329600000,9682,9690,9671,9680,1,4]")
    assert decoded == Bar(
        "binance", "BTCUSDT", 1_582_329_600_000, 9682.0, 9690.0, 9671.0, 9680.0, 1.0, 4
    )
    assert isinstance(decoded.open, float)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"{}",
        b"[1582329600000,9682.0,9690.0,9671.0,9680.0,1.0]",  # too short
        b"[1582329600000,9682.0,9690.0,9671.0,9680.0,1.0,4,1]",  # too long
        b'[1582329600000,"9682.0",9690.0,9671.0,9680.0,1.0,4]',  # string price
        b"[1582329600000,null,9690.0,9671.0,9680.0,1.0,4]",  # NaN is written as null
        b"[1582329600000,9682.0,1e999,9671.0,9680.0,1.0,4]",  # infinite
        b"[1582329600000,9682.0,9690.0,9671.0,9680.0,1.0,4.0]",  # float trade count
        b"[1582329600000,9682.0,9690.0,9671.0,9680.0,1.0,true]",
        b"[1582329600001,9682.0,9690.0,9671.0,9680.0,1.0,4]",  # not a minute start
        b"[1582329600000,9682.0,9681.0,9671.0,9680.0,1.0,4]",  # high below open
        b"[1582329600000,9682.0,9690.0,9681.0,9680.0,1.0,4]",  # low above close
        b"[1582329600000,9682.0,9690.0,9671.0,9680.0,-1.0,4]",  # negative volume
        b"[1582329600000,9682.0,9690.0,9671.0,9680.0,1.0,-4]",  # negative trade count
    ],
)
def test_malformed_input_raises_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_bar("binance", "BTCUSDT", raw)


def significant_digits(token: str) -> str:
    return token.split("e")[0].replace(".", "").strip("0")


def test_floats_are_written_shortest_round_trip() -> None:
    # repr is Python's shortest round-trip form; msgspec spells exponents differently (1e-8)
    for value in (0.1, 105433.6, 0.00955370, 1e-8, 123456789.12345679, 5e-324, 1e22):
        bar = Bar("binance", "BTCUSDT", 0, value, value, value, value, value, 1)
        tokens = encode_bar(bar).decode().strip("[]").split(",")
        for token in tokens[1:6]:
            assert float(token) == value
            assert significant_digits(token) == significant_digits(repr(value))


finite = st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    minute=st.integers(0, 10**8),
    prices=st.lists(finite, min_size=4, max_size=4),
    volume=finite,
    trades=st.integers(0, 10**9),
)
def test_round_trip_is_exact(minute: int, prices: list[float], volume: float, trades: int) -> None:
    o, c = prices[0], prices[1]
    high = max(prices)
    low = min(prices)
    bar = Bar("binance", "BTCUSDT", minute * MINUTE_MS, o, high, low, c, volume, trades)
    raw = encode_bar(bar)
    back = decode_bar("binance", "BTCUSDT", raw)
    assert back == bar
    assert decode_bar("binance", "BTCUSDT", encode_bar(back)) == bar
