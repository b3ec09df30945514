"""Coinbase Exchange protocol: real recorded ``matches`` frames, candles, limits.

``coinbase_pro.jsonl`` holds real frames recorded by cryptofeed (every match/last_match of the
recording plus a few subscriptions, ticker and l2update frames); ``coinbase_BTCUSD_1m_20171217.csv``
holds 300 real Coinbase BTC-USD minutes (tests/fixtures/ws/README.md).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.exchanges import get_exchange
from streamer.core.exchanges.base import FrameError
from streamer.core.exchanges.coinbase import COINBASE, iso8601_to_ms
from streamer.core.types import Bar, Trade

WS = Path(__file__).resolve().parent.parent / "fixtures" / "ws"


def frames() -> list[bytes]:
    return [line for line in (WS / "coinbase_pro.jsonl").read_bytes().splitlines() if line]


def assert_valid(records: list[Trade | Bar]) -> None:
    for record in records:
        assert isinstance(record, Trade) and record.exchange == "coinbase" and record.symbol
        assert isinstance(record.trade_id, int) and record.trade_id >= 0
        assert isinstance(record.ts_ms, int) and record.ts_ms > 0
        assert math.isfinite(record.price) and record.price > 0
        assert math.isfinite(record.qty) and record.qty > 0
        assert record.taker_side in ("buy", "sell")


# --- real recorded frames -------------------------------------------------------------------


def test_registry_returns_the_coinbase_instance() -> None:
    assert get_exchange("coinbase") is COINBASE


def test_recorded_matches_give_exact_trades() -> None:
    trades: list[Trade] = []
    empty = 0
    for line in frames():
        records = COINBASE.parse(line)
        empty += not records
        trades += [r for r in records if isinstance(r, Trade)]

    assert len(trades) == 107  # 97 match + 10 last_match
    assert empty == 9  # 3 subscriptions, 3 ticker, 3 l2update
    # first frame is a last_match: the maker sold, so the taker bought
    assert trades[0] == Trade("coinbase", "BAND-GBP", 881613, 1618677810244, 14.7775, 0.04, "buy")
    assert trades[-1] == Trade("coinbase", "SKL-USD", 1568319, 1618677846669, 0.7902, 18.0, "sell")
    assert Counter(t.symbol for t in trades) == {
        "SKL-USD": 53,
        "DASH-BTC": 16,
        "SKL-BTC": 9,
        "BAND-BTC": 9,
        "NMR-EUR": 9,
        "BAND-GBP": 5,
        "SKL-GBP": 2,
        "NU-GBP": 2,
        "YFI-BTC": 1,
        "CRV-EUR": 1,
    }
    qty: defaultdict[str, Decimal] = defaultdict(Decimal)
    for t in trades:
        qty[t.symbol] += Decimal(repr(t.qty))
    assert qty == {
        "SKL-USD": Decimal("48069.6"),
        "DASH-BTC": Decimal("15.767"),
        "SKL-BTC": Decimal("6763.4"),
        "BAND-BTC": Decimal("210.67"),
        "NMR-EUR": Decimal("4.936"),
        "BAND-GBP": Decimal("36.04"),
        "SKL-GBP": Decimal("1343.2"),
        "NU-GBP": Decimal("875.131"),
        "YFI-BTC": Decimal("0.000007"),
        "CRV-EUR": Decimal("400"),
    }
    # maker side "buy" on 54 matches -> 54 taker sells
    assert Counter(t.taker_side for t in trades) == {"sell": 54, "buy": 53}


def test_taker_side_is_the_opposite_of_the_maker_side_on_every_frame() -> None:
    for line in frames():
        frame = json.loads(line)
        if frame["type"] in ("match", "last_match"):
            (trade,) = COINBASE.parse(line)
            assert isinstance(trade, Trade)
            assert trade.taker_side != frame["side"]
            assert trade.trade_id == frame["trade_id"]
            assert trade.price == float(frame["price"]) and trade.qty == float(frame["size"])


@pytest.mark.parametrize(
    "frame",
    [
        # message shapes from the Exchange WebSocket channel documentation (docs.cdp.coinbase.com)
        b'{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD",'
        b'"time":"2014-11-07T08:19:28.464459Z"}',
        b'{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]}]}',
        b'{"type":"status","products":[],"currencies":[]}',
        b'{"type":"received","time":"2014-11-07T08:19:27.028459Z","product_id":"BTC-USD",'
        b'"sequence":10,"order_id":"d50ec984","size":"1.34","price":"502.1","side":"buy",'
        b'"order_type":"limit"}',
    ],
    ids=["heartbeat", "subscriptions", "status", "full-channel-received"],
)
def test_other_types_give_nothing(frame: bytes) -> None:
    assert COINBASE.parse(frame) == []


# --- rejected frames ------------------------------------------------------------------------

MATCH = json.loads(frames()[-1])


def mutated(**changes: Any) -> str:
    frame = {k: v for k, v in MATCH.items() if k not in changes}
    frame |= {k: v for k, v in changes.items() if v is not None}
    return json.dumps(frame)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b'{"type":"match",', "malformed_json"),
        (b"[]", "bad_type"),
        (
            b'{"type":"error","message":"Failed to subscribe","reason":"BTC-XYZ is not a valid '
            b'product"}',
            "exchange_error",
        ),
        (mutated(time=None), "missing_field"),
        (mutated(trade_id=None), "missing_field"),
        (mutated(trade_id="abc"), "bad_type"),
        (mutated(price=[1]), "bad_type"),
        (mutated(product_id=7), "bad_type"),
        (mutated(side="both"), "bad_value"),
        (mutated(size="0"), "bad_value"),
        (mutated(price="-0.7902"), "bad_value"),
        (mutated(price="NaN"), "bad_value"),
        (mutated(time="yesterday"), "bad_value"),
        (mutated(time="2021-04-17T16:44:06.669388"), "bad_value"),  # naive: no Z
        (mutated(time="1969-12-31T23:59:59.000Z"), "bad_value"),
        (mutated(trade_id=-3), "bad_value"),
        (mutated(trade_id=2**64), "bad_value"),
        (b"[" * 100_000, "malformed_json"),
        (b'{"type":"match","product_id":"\xc3\x28"}', "malformed_json"),
        ('{"type":"match","product_id":"\ud800"}', "malformed_json"),
    ],
)
def test_bad_frames_raise_frame_error_with_reason(frame: bytes | str, reason: str) -> None:
    with pytest.raises(FrameError) as caught:
        COINBASE.parse(frame)
    assert caught.value.reason == reason


def test_error_frame_detail_carries_the_message() -> None:
    with pytest.raises(FrameError, match="BTC-XYZ is not a valid product"):
        COINBASE.parse(
            '{"type":"error","message":"Failed","reason":"BTC-XYZ is not a valid product"}'
        )


# --- timestamps -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2021-04-17T16:43:30.244075Z", 1618677810244),
        ("2021-04-17T16:43:30.244999Z", 1618677810244),  # truncated, never rounded up
        ("2021-04-17T16:43:30.2Z", 1618677810200),
        ("2021-04-17T16:43:30Z", 1618677810000),
        ("2023-09-25T07:49:37.708706123Z", 1695628177708),
        ("2000-02-29T23:59:59.999Z", 951868799999),
        ("1970-01-01T00:00:00.001Z", 1),
    ],
)
def test_iso8601_to_ms(text: str, ms: int) -> None:
    assert iso8601_to_ms(text) == ms


@pytest.mark.parametrize(
    "text",
    [
        "2021-04-17",
        "2021-04-17T16:43:30",
        "2021-04-17 16:43:30.1Z",
        "2021-04-17T16:43:30+00:00",
        "2021-02-29T00:00:00Z",
        "2021-04-17T24:00:00Z",
        "2021-04-17T16:43:3_Z",
        "２021-04-17T16:43:30Z",
        "",
    ],
)
def test_iso8601_to_ms_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError):
        iso8601_to_ms(text)


# --- connections ----------------------------------------------------------------------------


def test_subscribe_message_and_chunking() -> None:
    (plan,) = COINBASE.connections(COINBASE.default_ws_url, ["BTC-USD", "ETH-USD"], ["matches"])
    assert plan.url == "wss://ws-feed.exchange.coinbase.com"
    assert plan.symbols == ("BTC-USD", "ETH-USD")
    assert [json.loads(m) for m in plan.subscribe] == [
        {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channels": ["matches"]}
    ]
    symbols = [f"C{i}-USD" for i in range(250)]
    plans = COINBASE.connections("ws://127.0.0.1:9", symbols, ["matches"])
    assert [len(p.symbols) for p in plans] == [100, 100, 50]
    assert [s for p in plans for s in p.symbols] == symbols


@pytest.mark.parametrize(
    ("symbols", "channels"),
    [
        (["BTC-USD"], ["level2"]),
        (["BTC-USD"], []),
        (["BTCUSD"], ["matches"]),
        (["btc-usd"], ["matches"]),
    ],
)
def test_bad_subscription_is_a_start_up_error(symbols: list[str], channels: list[str]) -> None:
    with pytest.raises(ValueError):
        COINBASE.connections(COINBASE.default_ws_url, symbols, channels)


# --- REST candles ---------------------------------------------------------------------------


def test_bars_request_covers_at_most_300_minutes_with_inclusive_end() -> None:
    start = 1513468800000  # 2017-12-17 00:00 UTC
    short = COINBASE.bars_request("BTC-USD", start, start + 90 * 60_000)
    assert short.path == "/products/BTC-USD/candles"
    assert short.params == {
        "granularity": "60",
        "start": "2017-12-17T00:00:00Z",
        "end": "2017-12-17T01:29:59Z",
    }
    long = COINBASE.bars_request("BTC-USD", start, start + 1000 * 60_000)
    assert long.params["end"] == "2017-12-17T04:59:59Z"  # 300 minutes: the page limit
    assert COINBASE.max_bars_per_request == 300


def candles_body() -> tuple[bytes, list[dict[str, str]]]:
    """A candles response built from 300 real minutes, newest first as Coinbase sends them;
    the CSV's numeric tokens go into the JSON verbatim."""
    with open(WS / "coinbase_BTCUSD_1m_20171217.csv") as f:
        rows = list(csv.DictReader(f))
    body = (
        "["
        + ",".join(
            f"[{int(r['open_time_ms']) // 1000},{r['low']},{r['high']},{r['open']},{r['close']},"
            f"{r['volume']}]"
            for r in reversed(rows)
        )
        + "]"
    )
    return body.encode(), rows


def test_parse_bars_on_real_candles() -> None:
    body, rows = candles_body()
    bars = COINBASE.parse_bars("BTC-USD", body)

    assert len(bars) == 300
    assert bars[0] == Bar(
        "coinbase",
        "BTC-USD",
        1513468800000,
        19650.02,
        19650.02,
        19505.0,
        19516.96,
        61.34020731,
        0,
    )
    assert bars[-1] == Bar(
        "coinbase", "BTC-USD", 1513486740000, 19350.0, 19369.42, 19350.0, 19369.42, 5.32918986, 0
    )
    assert [b.open_time_ms for b in bars] == sorted(b.open_time_ms for b in bars)
    assert sum(Decimal(repr(b.volume)) for b in bars) == sum(Decimal(r["volume"]) for r in rows)
    assert {b.trades for b in bars} == {0}  # Coinbase candles carry no trade count


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"message":"NotFound"}', "exchange_error"),
        (b"[[1513468800,", "malformed_json"),
        (b'"candles"', "bad_type"),
        (b"[[1513468800,1,2,1,2]]", "missing_field"),
        (b'[[1513468800,"x",2,1,2,5]]', "bad_value"),  # decimal strings are accepted
        (b"[[1513468800,true,2,1,2,5]]", "bad_type"),
        (b"[[1513468800.0,1,2,1,2,5]]", "bad_type"),
        (b"[[1513468830,1,2,1,2,5]]", "bad_value"),
        (b"[[1513468800,1,2,3,2,5]]", "bad_value"),
        (b"[[1513468800,0,2,1,2,5]]", "bad_value"),
        (b"[[1513468800,1,2,1,2,-5]]", "bad_value"),
        (b"[[1513468800,1,2,1,2," + b"9" * 400 + b"]]", "bad_value"),
        (b"[[" + b"6" * 30 + b",1,2,1,2,5]]", "bad_value"),
    ],
)
def test_bad_candles(body: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as caught:
        COINBASE.parse_bars("BTC-USD", body)
    assert caught.value.reason == reason


# --- properties -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
cell = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.sampled_from(["0.5", "0", "-1", "nan", "buy", "sell", "2021-04-17T16:43:30.2Z"]),
    st.sampled_from(["1969-01-01T00:00:00Z", "2021-04-17T16:43:30", "", "BTC-USD"]),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
)
match_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["match", "last_match"])},
    optional={k: cell for k in ("trade_id", "side", "size", "price", "product_id", "time")},
)


def parse_checked(frame: bytes | str) -> None:
    try:
        records = COINBASE.parse(frame)
    except FrameError as exc:
        assert exc.reason in {
            "malformed_json",
            "missing_field",
            "bad_type",
            "bad_value",
            "exchange_error",
        }
        return
    assert_valid(records)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_frame_error(frame: bytes) -> None:
    parse_checked(frame)


@settings(max_examples=200)
@given(st.text(max_size=100))
def test_arbitrary_text_raises_only_frame_error(frame: str) -> None:
    parse_checked(frame)


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_raises_only_frame_error(value: Any) -> None:
    parse_checked(json.dumps(value))


@settings(max_examples=500)
@given(match_like)
def test_match_shaped_json_never_yields_an_invalid_trade(frame: dict[str, Any]) -> None:
    parse_checked(json.dumps(frame))


bar_cell = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([1633998240000, 1513468800, 60]),
    st.floats(),
    st.sampled_from(["1", "0", "-1", "1e400", "nan", "x"]),
    st.booleans(),
    st.none(),
)


@settings(max_examples=300)
@given(st.lists(st.lists(bar_cell, max_size=13), max_size=3) | json_values)
def test_arbitrary_rest_bodies_raise_only_frame_error(rows: Any) -> None:
    try:
        bars = COINBASE.parse_bars("BTC-USD", json.dumps(rows).encode())
    except FrameError:
        return
    for bar in bars:
        assert bar.open_time_ms > 0 and bar.open_time_ms % 60_000 == 0
        assert 0 < bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
        assert math.isfinite(bar.high) and math.isfinite(bar.volume) and bar.volume >= 0
