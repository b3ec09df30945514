"""Kraken WebSocket v2 and REST OHLC.

``kraken_spot_trade_v1.jsonl`` is a real recording, but of WebSocket v1 (arrays, no trade ids);
``kraken_v2_doc.jsonl`` holds the v2 samples from Kraken's documentation, the current format;
``kraken_rest_ohlc_XBTUSDT.json`` is the start of a real ``/0/public/OHLC`` response
(tests/fixtures/ws/README.md says which is which).
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.exchanges import get_exchange
from streamer.core.exchanges.base import FrameError
from streamer.core.exchanges.kraken import KRAKEN, rest_pair
from streamer.core.types import Bar, Trade

WS = Path(__file__).resolve().parent.parent / "fixtures" / "ws"


def frames(name: str) -> list[bytes]:
    return [line for line in (WS / name).read_bytes().splitlines() if line]


def assert_valid(records: list[Trade | Bar]) -> None:
    for record in records:
        assert isinstance(record, Trade) and record.exchange == "kraken"
        assert record.symbol and "/" not in record.symbol
        assert isinstance(record.trade_id, int) and record.trade_id >= 0
        assert isinstance(record.ts_ms, int) and record.ts_ms > 0
        assert math.isfinite(record.price) and record.price > 0
        assert math.isfinite(record.qty) and record.qty > 0
        assert record.taker_side in ("buy", "sell")


def test_registry_returns_the_kraken_instance() -> None:
    assert get_exchange("kraken") is KRAKEN


# --- v2, the current protocol (documentation samples) ---------------------------------------


def test_documented_v2_frames() -> None:
    ack, snapshot, update, heartbeat, status, unsubscribed = frames("kraken_v2_doc.jsonl")
    assert KRAKEN.parse(snapshot) == [
        Trade("kraken", "MATIC-USD", 4665846, 1695628116925, 0.5147, 6423.46326, "buy"),
        Trade("kraken", "MATIC-USD", 4665847, 1695628176925, 0.5147, 1136.19677815, "buy"),
    ]
    assert KRAKEN.parse(update) == [
        Trade("kraken", "MATIC-USD", 4665906, 1695628177708, 0.5117, 40.0, "sell")
    ]
    assert KRAKEN.parse(update.decode()) == KRAKEN.parse(update)
    for frame in (ack, heartbeat, status, unsubscribed):
        assert KRAKEN.parse(frame) == []


@pytest.mark.parametrize(
    "frame",
    [
        b'{"channel":"book","type":"update","data":[{"symbol":"MATIC/USD","bids":[{"price":0.5666,'
        b'"qty":0}],"asks":[],"checksum":2439117997,"timestamp":"2023-10-06T17:35:55.440295Z"}]}',
        b'{"channel":"ticker","type":"snapshot","data":[{"symbol":"ALGO/USD","bid":0.10025,'
        b'"bid_qty":740.0,"ask":0.10036,"ask_qty":1361.4,"last":0.10035}]}',
        b'{"method":"pong","req_id":101,"time_in":"2023-09-24T14:10:23.799685Z",'
        b'"time_out":"2023-09-24T14:10:23.799703Z"}',
        b'{"channel":"trade","type":"update","data":[]}',
    ],
    ids=["book", "ticker", "pong", "empty-trade-list"],
)
def test_other_channels_and_responses_give_nothing(frame: bytes) -> None:
    assert KRAKEN.parse(frame) == []


SNAPSHOT = json.loads(frames("kraken_v2_doc.jsonl")[1])


def second_trade(**changes: Any) -> str:
    """The documented two-trade snapshot with its second trade changed."""
    frame = json.loads(json.dumps(SNAPSHOT))
    trade = {k: v for k, v in frame["data"][1].items() if k not in changes}
    frame["data"][1] = trade | {k: v for k, v in changes.items() if v is not None}
    return json.dumps(frame)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b'{"channel":"trade","type":"update","data":[', "malformed_json"),
        (b'"trade"', "bad_type"),
        (second_trade(price="0.5147"), "bad_type"),  # v2 prices are JSON numbers
        (second_trade(qty=None), "missing_field"),
        (second_trade(trade_id=None), "missing_field"),
        (second_trade(trade_id=1.5), "bad_type"),
        (second_trade(symbol=None), "missing_field"),
        (second_trade(qty=0), "bad_value"),
        (second_trade(price=-0.5), "bad_value"),
        (second_trade(side="short"), "bad_value"),
        (second_trade(timestamp="2023-09-25 07:49:36"), "bad_value"),
        (second_trade(trade_id=-1), "bad_value"),
        (second_trade(trade_id=2**64), "bad_value"),
        (b"[" * 100_000, "malformed_json"),
        (b'{"channel":"trade","data":[{"symbol":"\xff"}]}', "malformed_json"),
        ('{"channel":"trade","data":[{"symbol":"\ud800"}]}', "malformed_json"),
        (
            b'{"method":"subscribe","error":"Currency pair not supported MATIC/XYZ",'
            b'"success":false,"symbol":"MATIC/XYZ","time_in":"2023-09-25T09:21:10.428340Z",'
            b'"time_out":"2023-09-25T09:21:10.428375Z"}',
            "exchange_error",
        ),
        (
            b'[993,[["354.11","0.89","1618678142.557535","s","l",""]],"trade","XMR/USD"]',
            "unsupported_protocol",
        ),
    ],
)
def test_bad_frames_raise_frame_error_with_reason(frame: bytes | str, reason: str) -> None:
    with pytest.raises(FrameError) as caught:
        KRAKEN.parse(frame)
    assert caught.value.reason == reason


def test_one_bad_trade_rejects_the_whole_frame() -> None:
    good = KRAKEN.parse(second_trade())
    assert len(good) == 2
    with pytest.raises(FrameError):
        KRAKEN.parse(second_trade(qty=-1.0))  # the first, valid trade is not returned alone


# --- v1, the recorded protocol --------------------------------------------------------------


def test_recorded_v1_frames_are_ignored_or_rejected_as_unsupported() -> None:
    ignored, unsupported = 0, 0
    for line in frames("kraken_spot_trade_v1.jsonl"):
        try:
            assert KRAKEN.parse(line) == []
            ignored += 1
        except FrameError as exc:
            assert exc.reason == "unsupported_protocol"
            assert json.loads(line)[-2] == "trade"
            unsupported += 1
    # 30 heartbeats, 10 subscriptionStatus, 1 systemStatus; 8 trade arrays (11 trades)
    assert (ignored, unsupported) == (41, 8)


# --- connections ----------------------------------------------------------------------------


def test_subscribe_message_uses_wire_symbols_and_no_snapshot() -> None:
    (plan,) = KRAKEN.connections(KRAKEN.default_ws_url, ["BTC-USD", "ETH-EUR"], ["trade"])
    assert plan.url == "wss://ws.kraken.com/v2"
    assert plan.symbols == ("BTC-USD", "ETH-EUR")
    assert [json.loads(m) for m in plan.subscribe] == [
        {
            "method": "subscribe",
            "params": {"channel": "trade", "symbol": ["BTC/USD", "ETH/EUR"], "snapshot": False},
        }
    ]
    plans = KRAKEN.connections("ws://127.0.0.1:9", [f"K{i}-USD" for i in range(250)], ["trade"])
    assert [len(p.symbols) for p in plans] == [100, 100, 50]


@pytest.mark.parametrize(
    ("symbols", "channels"),
    [(["BTC-USD"], ["book"]), (["BTC-USD"], []), (["BTC/USD"], ["trade"]), (["XBTUSD"], ["trade"])],
)
def test_bad_subscription_is_a_start_up_error(symbols: list[str], channels: list[str]) -> None:
    with pytest.raises(ValueError):
        KRAKEN.connections(KRAKEN.default_ws_url, symbols, channels)


# --- REST OHLC ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "pair"),
    [
        ("BTC-USD", "XBTUSD"),
        ("BTC-USDT", "XBTUSDT"),
        ("ETH-BTC", "ETHXBT"),
        ("DOGE-USD", "XDGUSD"),
        ("SOL-EUR", "SOLEUR"),
    ],
)
def test_rest_pair_names(symbol: str, pair: str) -> None:
    assert rest_pair(symbol) == pair


def test_bars_request() -> None:
    request = KRAKEN.bars_request("BTC-USDT", 1762777020000, 1762778580000)
    assert request.path == "/0/public/OHLC"
    assert request.params == {"pair": "XBTUSDT", "interval": "1", "since": "1762777019"}
    assert KRAKEN.max_bars_per_request == 720


def test_parse_bars_drops_the_still_open_last_row() -> None:
    raw = (WS / "kraken_rest_ohlc_XBTUSDT.json").read_bytes()
    rows = json.loads(raw)["result"]["XBTUSDT"]

    bars = KRAKEN.parse_bars("BTC-USDT", raw)

    assert len(rows) == 26 and len(bars) == 25
    assert bars[-1].open_time_ms == rows[-2][0] * 1000 == 1762778460000
    # a minute without trades: Kraken repeats the previous close, volume 0, count 0
    assert bars[0] == Bar(
        "kraken", "BTC-USDT", 1762777020000, 106038.2, 106038.2, 106038.2, 106038.2, 0.0, 0
    )
    assert bars[3] == Bar(
        "kraken", "BTC-USDT", 1762777200000, 106038.1, 106044.3, 106038.1, 106040.1, 0.08317981, 3
    )
    assert bars[-1] == Bar(
        "kraken", "BTC-USDT", 1762778460000, 106022.7, 106022.7, 106003.8, 106003.8, 0.59013141, 4
    )
    assert sum(b.trades for b in bars) == 38
    assert sum(Decimal(repr(b.volume)) for b in bars) == sum(Decimal(r[6]) for r in rows[:-1])


def test_parse_bars_of_a_response_with_only_the_open_minute_is_empty() -> None:
    body = b'{"error":[],"result":{"XXBTZUSD":[[1762820220,"105899.4","105899.4","105899.4",'
    body += b'"105899.4","0.0","0.00000000",0]],"last":1762820160}}'
    assert KRAKEN.parse_bars("BTC-USD", body) == []


ROW = '[1762777200,"106038.1","106044.3","106038.1","106040.1","106039.6","0.08317981",3]'
OPEN_ROW = '[1762777260,"106040.1","106040.1","106040.1","106040.1","0.0","0.00000000",0]'


def ohlc(row: str) -> bytes:
    return f'{{"error":[],"result":{{"XBTUSDT":[{row},{OPEN_ROW}],"last":1}}}}'.encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"error":["EQuery:Unknown asset pair"]}', "exchange_error"),
        (b'{"error":[],"result":', "malformed_json"),
        (b"[]", "bad_type"),
        (b'{"error":[]}', "missing_field"),
        (b'{"error":[],"result":{"last":5}}', "bad_type"),
        (ohlc('[1762777200,"1","1","1","1","1","1"]'), "missing_field"),
        (ohlc('["1762777200","1","1","1","1","1","1",3]'), "bad_type"),
        (ohlc('[1762777200,"1","1","1","1","1","1",true]'), "bad_type"),
        (ohlc('[1762777200,"one","1","1","1","1","1",3]'), "bad_value"),
        (ohlc('[1762777230,"1","1","1","1","1","1",3]'), "bad_value"),
        (ohlc('[1762777200,"2","1","1","1","1","1",3]'), "bad_value"),
        (ohlc('[1762777200,"1","1","1","1","1","nan",3]'), "bad_value"),
        (ohlc('[1762777200,"1","1","1","1","1","1",-3]'), "bad_value"),
        (ohlc('[1762777200,"1","1","1","1","1",' + "9" * 400 + ",3]"), "bad_value"),
        (ohlc("[" + "6" * 30 + ',"1","1","1","1","1","1",3]'), "bad_value"),
    ],
)
def test_bad_ohlc_responses(body: bytes, reason: str) -> None:
    assert KRAKEN.parse_bars("BTC-USDT", ohlc(ROW))[0].trades == 3
    with pytest.raises(FrameError) as caught:
        KRAKEN.parse_bars("BTC-USDT", body)
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
    st.sampled_from(["buy", "sell", "BTC/USD", "", "2023-09-25T07:49:37.708706Z", "0.5"]),
    st.sampled_from(["1969-12-31T23:59:59Z", "2023-09-25T07:49:37"]),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
)
trade_like = st.fixed_dictionaries(
    {}, optional={k: cell for k in ("symbol", "side", "price", "qty", "trade_id", "timestamp")}
)
message_like = st.fixed_dictionaries(
    {"channel": st.just("trade"), "data": st.lists(trade_like, max_size=3)},
    optional={"type": st.sampled_from(["update", "snapshot"])},
)
REASONS = {
    "malformed_json",
    "missing_field",
    "bad_type",
    "bad_value",
    "exchange_error",
    "unsupported_protocol",
}


def parse_checked(frame: bytes | str) -> None:
    try:
        records = KRAKEN.parse(frame)
    except FrameError as exc:
        assert exc.reason in REASONS
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
@given(message_like)
def test_trade_shaped_json_never_yields_an_invalid_trade(frame: dict[str, Any]) -> None:
    parse_checked(json.dumps(frame))


@settings(max_examples=200)
@given(json_values)
def test_arbitrary_json_never_breaks_parse_bars(value: Any) -> None:
    try:
        bars = KRAKEN.parse_bars(
            "BTC-USD", json.dumps({"error": [], "result": {"X": value}}).encode()
        )
    except FrameError:
        return
    for bar in bars:
        assert bar.open_time_ms % 60_000 == 0 and bar.low <= bar.high and bar.volume >= 0
