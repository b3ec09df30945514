"""Every venue's parser, on any input at all: valid records or a ``FrameError`` with a bounded
reason, never another exception; on inputs shaped like the venue's own frames and REST answers
but holding any values, the same. Plus what every venue must do alike: refuse each venue's own
frames and REST answers, one thing changed, with the right reason; return its instance from the
registry; make a subscription it cannot serve a start-up error. Exact values of real and
documented frames per venue are in tests/unit/test_exchange_*.py."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.parsers import (
    REASONS,
    assert_refused,
    assert_valid,
    bar_cell,
    cells,
    json_values,
    parse_bars_checked,
    parse_checked,
    recorded_frames,
    with_cells,
)

from streamer.core.exchanges import Exchange, get_exchange, names
from streamer.core.exchanges.base import FrameError
from streamer.core.exchanges.binance import BINANCE
from streamer.core.exchanges.bitstamp import BITSTAMP
from streamer.core.exchanges.bybit import BYBIT
from streamer.core.exchanges.coinbase import COINBASE
from streamer.core.exchanges.kraken import KRAKEN
from streamer.core.exchanges.okx import OKX

FrameT = TypeVar("FrameT", bytes, str)
VENUES = names()
INSTANCES: dict[str, Exchange] = {
    "binance": BINANCE, "bitstamp": BITSTAMP, "bybit": BYBIT,
    "coinbase": COINBASE, "kraken": KRAKEN, "okx": OKX,
}  # fmt: skip


@pytest.mark.parametrize("venue", VENUES)
@settings(max_examples=300)
@given(frame=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_frame_error(venue: str, frame: bytes) -> None:
    parse_checked(venue, frame)


@pytest.mark.parametrize("venue", VENUES)
@settings(max_examples=200)
@given(frame=st.text(max_size=100))
def test_arbitrary_text_raises_only_frame_error(venue: str, frame: str) -> None:
    parse_checked(venue, frame)


@pytest.mark.parametrize("venue", VENUES)
@settings(max_examples=300)
@given(value=json_values)
def test_arbitrary_json_raises_only_frame_error(venue: str, value: Any) -> None:
    parse_checked(venue, json.dumps(value))


# --- shaped like each venue's trade frames, any values in the fields ------------------------


def fields(keys: tuple[str, ...], cell: st.SearchStrategy[Any], **required: Any) -> Any:
    """A trade object of ``required`` fields and any of ``keys``, each holding a ``cell``."""
    return st.fixed_dictionaries(required, optional={k: cell for k in keys})


BINANCE_CELL = cells(["0.001", "1e-9", "-2", "0", "nan", "inf", "1e400", "", "12.5"], text_size=6)
BITSTAMP_CELL = cells(
    ["3800.80", "0", "-1", "NaN", "1e400", "1e16", "1641343721269000", "999"], [0, 1, 2]
)
BYBIT_CELL = cells(
    ["Buy", "Sell", "BTCUSDT", "", "20f43950-d8dd-5b31", "16578.50", "0", "-1"],
    ["NaN", "1e400", "1e16", "f" * 65],
)
COINBASE_CELL = cells(
    ["0.5", "0", "-1", "nan", "buy", "sell", "2021-04-17T16:43:30.2Z"],
    ["1969-01-01T00:00:00Z", "2021-04-17T16:43:30", "", "BTC-USD"],
)
KRAKEN_CELL = cells(
    ["buy", "sell", "BTC/USD", "", "2023-09-25T07:49:37.708706Z", "0.5"],
    ["1969-12-31T23:59:59Z", "2023-09-25T07:49:37"],
)
OKX_CELL = cells(
    ["buy", "sell", "BTC-USDT", "", "338476375", "1652459235576", "0.5", "-1"],
    ["NaN", "1e400", "0", "1e16", "12x"],
)
BINANCE_TRADE = fields(
    ("s", "t", "a", "p", "q", "T", "m", "E"), BINANCE_CELL, e=st.sampled_from(["trade", "aggTrade"])
)
TRADE_SHAPED: dict[str, st.SearchStrategy[Any]] = {
    # raw, or wrapped as a combined-stream frame
    "binance": st.tuples(BINANCE_TRADE, st.booleans()).map(
        lambda t: {"stream": "x@trade", "data": t[0]} if t[1] else t[0]
    ),
    "bitstamp": st.fixed_dictionaries(
        {
            "event": st.just("trade"),
            "data": fields(
                ("id", "price_str", "amount_str", "type", "microtimestamp"), BITSTAMP_CELL
            ),
        },
        optional={
            "channel": st.sampled_from(["live_trades_btcusd", "live_trades_", "x", ""])
            | BITSTAMP_CELL
        },
    ),
    "bybit": st.fixed_dictionaries(
        {
            "topic": st.sampled_from(["publicTrade.BTCUSDT", "trade.BTCUSDT"]),
            "data": st.lists(fields(("i", "T", "s", "S", "v", "p"), BYBIT_CELL), max_size=3),
        },
        optional={"type": st.just("snapshot"), "ts": st.integers()},
    ),
    "coinbase": fields(
        ("trade_id", "side", "size", "price", "product_id", "time"),
        COINBASE_CELL,
        type=st.sampled_from(["match", "last_match"]),
    ),
    "kraken": st.fixed_dictionaries(
        {
            "channel": st.just("trade"),
            "data": st.lists(
                fields(("symbol", "side", "price", "qty", "trade_id", "timestamp"), KRAKEN_CELL),
                max_size=3,
            ),
        },
        optional={"type": st.sampled_from(["update", "snapshot"])},
    ),
    "okx": st.fixed_dictionaries(
        {
            "arg": st.just({"channel": "trades", "instId": "BTC-USDT"}),
            "data": st.lists(
                fields(("instId", "tradeId", "px", "sz", "side", "ts"), OKX_CELL), max_size=3
            ),
        }
    ),
}


@pytest.mark.parametrize("venue", VENUES)
@settings(max_examples=500)
@given(data=st.data())
def test_trade_shaped_json_never_yields_an_invalid_trade(venue: str, data: st.DataObject) -> None:
    parse_checked(venue, json.dumps(data.draw(TRADE_SHAPED[venue])))


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_in_a_binance_combined_stream_frame_raises_only_frame_error(
    value: Any,
) -> None:
    parse_checked("binance", json.dumps({"stream": "x@trade", "data": value}))


# --- shaped like each venue's REST bars answer, any values in the rows ----------------------

BITSTAMP_CANDLE_KEYS = ["high", "timestamp", "volume", "low", "close", "open"]
REST_SHAPED: dict[str, tuple[str, st.SearchStrategy[Any]]] = {  # the symbol asked, the body
    "binance": ("BTCUSDT", st.lists(st.lists(bar_cell, max_size=13), max_size=3) | json_values),
    "bitstamp": (
        "BTCUSD",
        (
            st.lists(
                st.dictionaries(st.sampled_from(BITSTAMP_CANDLE_KEYS), BITSTAMP_CELL), max_size=3
            )
            | json_values
        ).map(lambda rows: {"data": {"ohlc": rows}}),
    ),
    "bybit": (
        "BTCUSDT",
        (st.lists(st.lists(bar_cell, max_size=8), max_size=3) | json_values).map(
            lambda rows: {"retCode": 0, "retMsg": "OK", "result": {"list": rows}}
        ),
    ),
    "coinbase": ("BTC-USD", st.lists(st.lists(bar_cell, max_size=13), max_size=3) | json_values),
    "kraken": ("BTC-USD", json_values.map(lambda value: {"error": [], "result": {"X": value}})),
    "okx": (
        "BTC-USDT",
        (
            st.lists(st.lists(bar_cell | st.sampled_from(["0", "1"]), max_size=10), max_size=3)
            | json_values
        ).map(lambda rows: {"code": "0", "msg": "", "data": rows}),
    ),
}


@pytest.mark.parametrize("venue", VENUES)
@settings(max_examples=300)
@given(data=st.data())
def test_rest_shaped_json_raises_only_frame_error(venue: str, data: st.DataObject) -> None:
    symbol, body = REST_SHAPED[venue]
    parse_bars_checked(venue, symbol, json.dumps(data.draw(body)).encode())


@settings(max_examples=300)
@given(st.lists(st.lists(json_values | KRAKEN_CELL, max_size=8), max_size=3), json_values)
def test_kraken_trades_shaped_pages_never_yield_an_invalid_trade(
    rows: list[Any], last: Any
) -> None:
    body = json.dumps({"error": [], "result": {"XBTUSDT": rows, "last": last}}).encode()
    try:
        trades, last_ns = KRAKEN.parse_trades("BTC-USD", body)
    except FrameError as exc:
        assert exc.reason in REASONS
        return
    assert_valid("kraken", trades)
    assert isinstance(last_ns, int) and last_ns >= 0


# --- each venue's frames and REST answers, one thing changed: refused with the right reason --


def changed(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``obj`` with ``changes``: a changed field moves to the end, a None value drops it."""
    return {k: v for k, v in obj.items() if k not in changes} | {
        k: v for k, v in changes.items() if v is not None
    }


# the documented trade stream event, in a combined-stream frame; a change keeps the key order
BINANCE_EVENT = {"e": "trade", "E": 1, "s": "BNBBTC", "t": 12345, "p": "0.001", "q": "100", "T": 5}
BINANCE_EVENT |= {"m": True, "M": True}
BITSTAMP_EVENT = json.loads(recorded_frames("bitstamp.jsonl")[-1])  # the last recorded trade
BYBIT_PUSH = json.loads(recorded_frames("bybit_v5_doc.jsonl")[0])  # the documented v5 push
COINBASE_MATCH = json.loads(recorded_frames("coinbase_pro.jsonl")[-1])  # the last recorded one
KRAKEN_SNAPSHOT = json.loads(recorded_frames("kraken_v2_doc.jsonl")[1])  # documented, 2 trades
OKX_PUSH = json.loads(recorded_frames("okx.jsonl")[-1])  # the last recorded push


def binance_changed(**changes: Any) -> str:
    kept = {k: v for k, v in BINANCE_EVENT.items() if changes.get(k, v) is not None}
    event = kept | {k: v for k, v in changes.items() if v is not None}
    return json.dumps({"stream": "bnbbtc@trade", "data": event})


def bitstamp_changed(channel: str | None = None, **changes: Any) -> str:
    data = changed(BITSTAMP_EVENT["data"], **changes)
    return json.dumps(
        BITSTAMP_EVENT | {"data": data, "channel": channel or BITSTAMP_EVENT["channel"]}
    )


def bybit_push(*trades: dict[str, Any]) -> str:
    return json.dumps(BYBIT_PUSH | {"data": list(trades)})


def bybit_changed(**changes: Any) -> str:
    return bybit_push(changed(BYBIT_PUSH["data"][0], **changes))


def coinbase_changed(**changes: Any) -> str:
    return json.dumps(changed(COINBASE_MATCH, **changes))


def kraken_changed(**changes: Any) -> str:
    """The snapshot with its second trade changed."""
    first, second = KRAKEN_SNAPSHOT["data"]
    return json.dumps(KRAKEN_SNAPSHOT | {"data": [first, changed(second, **changes)]})


def okx_push(*trades: dict[str, Any]) -> str:
    return json.dumps({"arg": OKX_PUSH["arg"], "data": list(trades)})


def okx_changed(**changes: Any) -> str:
    return okx_push(changed(OKX_PUSH["data"][0], **changes))


# one candle or row of each venue's REST answer (Bitstamp's documented, Bybit's real, Kraken's
# real, OKX's documented), and the answer around it
BITSTAMP_CANDLE = {"high": "19122.76", "timestamp": "1656868680", "volume": "0.02005000",
                   "low": "19111.99", "close": "19111.99", "open": "19122.76"}  # fmt: skip
BYBIT_ROW = ["1670889600000", "17208.86", "17212.99", "17205", "17205", "1.549151", "26657.6"]
KRAKEN_ROW = '[1762777200,"106038.1","106044.3","106038.1","106040.1","106039.6","0.08317981",3]'
KRAKEN_OPEN_ROW = '[1762777260,"106040.1","106040.1","106040.1","106040.1","0.0","0.00000000",0]'
OKX_M = 1597026360000
OKX_ROW = [str(OKX_M), "3.731", "3.799", "3.494", "3.72", "24912403", "67632347.24399722"]
OKX_ROW += ["37632347.24399722", "1"]


def bitstamp_ohlc(**changes: Any) -> bytes:
    return json.dumps(
        {"data": {"pair": "BTC/USD", "ohlc": [changed(BITSTAMP_CANDLE, **changes)]}}
    ).encode()


def bybit_klines(rows: list[list[Any]]) -> bytes:
    result = {"symbol": "BTCUSDT", "category": "spot", "list": rows}
    return json.dumps({"retCode": 0, "retMsg": "OK", "result": result, "time": 1}).encode()


def kraken_ohlc(row: str) -> bytes:
    """A row before the still open one, which Kraken sends last."""
    return f'{{"error":[],"result":{{"XBTUSDT":[{row},{KRAKEN_OPEN_ROW}],"last":1}}}}'.encode()


def okx_candles(*rows: list[Any]) -> bytes:
    return json.dumps({"code": "0", "msg": "", "data": list(rows)}).encode()


def cases(reason: str, *frames: FrameT) -> list[tuple[FrameT, str]]:
    """Each of ``frames``, to be refused with ``reason``."""
    return [(frame, reason) for frame in frames]


# fmt: off
BAD_FRAMES: dict[str, list[tuple[bytes | str, str]]] = {
    "binance": [
        (b"", "malformed_json"),
        (b'{"stream":"bnbbtc@trade","data":{"e":"trade"', "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"17", "bad_type"),
        (b'{"code":2,"msg":"Invalid request: unknown variant"}', "exchange_error"),
        (json.dumps({k: v for k, v in BINANCE_EVENT.items() if k != "p"}), "missing_field"),
        (json.dumps({k: v for k, v in BINANCE_EVENT.items() if k != "T"}), "missing_field"),
        *cases("bad_type", binance_changed(p="abc"), binance_changed(q=True),
               binance_changed(m="yes"), binance_changed(t="12x"), binance_changed(s=5)),
        *cases("bad_value", binance_changed(p="NaN"), binance_changed(p="0"),
               binance_changed(q="-1"), binance_changed(p="1e999"), binance_changed(T=0),
               binance_changed(t=-1), binance_changed(s=""), binance_changed(t=2**64)),
        (b"[" * 100_000, "malformed_json"),
        (b'{"stream":"x","data":{"e":"trade","s":"\xff\xfe"}}', "malformed_json"),
        ('{"e":"trade","s":"\ud800"}', "malformed_json"),
    ],
    "bitstamp": [
        (b'{"data":{"id":216000506,', "malformed_json"),
        (b"[1]", "bad_type"),
        (
            b'{"event":"bts:error","channel":"","data":{"code":null,"message":'
            b'"Bad subscription string."}}',
            "exchange_error",
        ),
        # price_str: the exact string is the one read
        *cases("missing_field", bitstamp_changed(id=None), bitstamp_changed(price_str=None),
               bitstamp_changed(microtimestamp=None), bitstamp_changed(type=None)),
        (json.dumps({"event": "trade", "data": BITSTAMP_EVENT["data"]}), "missing_field"),
        *cases("bad_type", bitstamp_changed(id="21600050x"), bitstamp_changed(id=1.5),
               bitstamp_changed(price_str=[1]), bitstamp_changed(microtimestamp="soon")),
        (json.dumps(BITSTAMP_EVENT | {"channel": 5}), "bad_type"),
        *cases("bad_value", bitstamp_changed(type=2), bitstamp_changed(amount_str="0.00000000"),
               bitstamp_changed(price_str="-3800.80"), bitstamp_changed(price_str="NaN"),
               bitstamp_changed(amount_str="1e16"), bitstamp_changed(microtimestamp="999"),
               bitstamp_changed(id=-1), bitstamp_changed(id=2**64),
               bitstamp_changed(channel="live_trades_"),
               bitstamp_changed(channel="live_trades_eth-usd")),
        (b"[" * 100_000, "malformed_json"),
        (b'{"event":"trade","channel":"\xff"}', "malformed_json"),
    ],
    "bybit": [
        (b'{"topic":"publicTrade.BTCUSDT","data":[', "malformed_json"),
        (b"[]", "bad_type"),
        (
            b'{"success":false,"ret_msg":"error:handler not found","conn_id":"2324d924",'
            b'"req_id":"","op":"subscribe"}',
            "exchange_error",
        ),
        *cases("missing_field", bybit_changed(i=None), bybit_changed(T=None), bybit_changed(v=None),
               bybit_changed(s=None)),
        *cases("bad_type", bybit_changed(i=2290000000090712223),  # text ids: a number is not one
               bybit_changed(i=["x"]), bybit_changed(p=[1]), bybit_changed(T="soon"),
               bybit_changed(s=7)),
        *cases("bad_value", bybit_changed(i=""), bybit_changed(i="f" * 65), bybit_changed(S="buy"),
               bybit_changed(v="0"), bybit_changed(p="-16578.50"), bybit_changed(p="NaN"),
               bybit_changed(v="1e16"), bybit_changed(T=0), bybit_changed(T=2**64)),
        (b"[" * 100_000, "malformed_json"),
        (b'{"topic":"publicTrade.\xff"}', "malformed_json"),
    ],
    "coinbase": [
        (b'{"type":"match",', "malformed_json"),
        (b"[]", "bad_type"),
        (
            b'{"type":"error","message":"Failed to subscribe","reason":"BTC-XYZ is not a valid '
            b'product"}',
            "exchange_error",
        ),
        *cases("missing_field", coinbase_changed(time=None), coinbase_changed(trade_id=None)),
        *cases("bad_type", coinbase_changed(trade_id="abc"), coinbase_changed(price=[1]),
               coinbase_changed(product_id=7)),
        *cases("bad_value", coinbase_changed(side="both"), coinbase_changed(size="0"),
               coinbase_changed(price="-0.7902"), coinbase_changed(price="NaN"),
               coinbase_changed(time="yesterday"),
               coinbase_changed(time="2021-04-17T16:44:06.669388"),  # naive: no Z
               coinbase_changed(time="1969-12-31T23:59:59.000Z"), coinbase_changed(trade_id=-3),
               coinbase_changed(trade_id=2**64)),
        (b"[" * 100_000, "malformed_json"),
        (b'{"type":"match","product_id":"\xc3\x28"}', "malformed_json"),
        ('{"type":"match","product_id":"\ud800"}', "malformed_json"),
    ],
    "kraken": [
        (b'{"channel":"trade","type":"update","data":[', "malformed_json"),
        (b'"trade"', "bad_type"),
        *cases("bad_type", kraken_changed(price="0.5147"),  # v2 prices are JSON numbers
               kraken_changed(trade_id=1.5)),
        *cases("missing_field", kraken_changed(qty=None), kraken_changed(trade_id=None),
               kraken_changed(symbol=None)),
        *cases("bad_value", kraken_changed(qty=0), kraken_changed(price=-0.5),
               kraken_changed(side="short"), kraken_changed(timestamp="2023-09-25 07:49:36"),
               kraken_changed(trade_id=-1), kraken_changed(trade_id=2**64)),
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
    "okx": [
        (b'{"arg":{"channel":"trades"},"data":[', "malformed_json"),
        (b"pon", "malformed_json"),
        (b"[]", "bad_type"),
        (
            b'{"event":"error","code":"60012","msg":"Invalid request: {\\"op\\": \\"subscribe\\"}",'
            b'"connId":"a4d3ae55"}',
            "exchange_error",
        ),
        *cases("missing_field", okx_changed(tradeId=None), okx_changed(ts=None),
               okx_changed(px=None)),
        *cases("bad_type", okx_changed(tradeId="338476375a"),  # OKX ids are decimal integers
               okx_changed(tradeId=[1]), okx_changed(px="thirty"), okx_changed(instId=5),
               okx_changed(ts="soon")),
        *cases("bad_value", okx_changed(side="long"), okx_changed(sz="0"),
               okx_changed(px="-30227.6"), okx_changed(px="NaN"), okx_changed(sz="1e16"),
               okx_changed(instId=""), okx_changed(ts="0"), okx_changed(tradeId="-1"),
               okx_changed(tradeId=str(2**64))),
        (b"[" * 100_000, "malformed_json"),
        (b'{"arg":{"channel":"trades"},"data":[{"instId":"\xff"}]}', "malformed_json"),
    ],
}
BAD_BARS: dict[str, list[tuple[bytes, str]]] = {
    "binance": [
        (b'{"code":-1121,"msg":"Invalid symbol."}', "exchange_error"),
        (b"[[1633998240000,", "malformed_json"),
        (b'{"rows":[]}', "bad_type"),
        (b'[[1633998240000,"1","1","1","1"]]', "missing_field"),
        (b'[["1633998240000","1","1","1","1","1",0,"0",1,"0","0","0"]]', "bad_type"),
        (b'[[1633998240000,"x","1","1","1","1",0,"0",1,"0","0","0"]]', "bad_value"),
        (b'[[1633998240000,"1","1","1","1","1",0,"0",1.5,"0","0","0"]]', "bad_type"),
        (b'[[1633998240000,"1","0.5","1","1","1",0,"0",1,"0","0","0"]]', "bad_value"),
        (b'[[1633998240000,"1","1","1","1","inf",0,"0",1,"0","0","0"]]', "bad_value"),
        (b'[[1633998240000,"1","1","1","1",' + b"9" * 400 + b',0,"0",1,"0","0","0"]]', "bad_value"),
        (
            b'[[1633998240000,"1","1","1","1","1",0,"0",' + b"9" * 30 + b',"0","0","0"]]',
            "bad_value",
        ),
    ],
    "bitstamp": [
        (
            b'{"code":"validation-error","errors":[{"field":"limit","message":'
            b'"Must be between 1 and 1000.","code":"validation-error"}]}',
            "exchange_error",
        ),
        (b'{"status":"error","reason":"Invalid pair"}', "exchange_error"),
        (b'{"data": {"ohlc": [', "malformed_json"),
        (b"[]", "bad_type"),
        (b"{}", "missing_field"),
        (b'{"data":{"pair":"BTC/USD"}}', "bad_type"),
        (b'{"data":{"ohlc":[[1656868680,"1","1","1","1","1"]]}}', "bad_type"),
        *cases("missing_field", bitstamp_ohlc(volume=None), bitstamp_ohlc(timestamp=None)),
        *cases("bad_type", bitstamp_ohlc(timestamp=[1]), bitstamp_ohlc(open=True)),
        *cases("bad_value", bitstamp_ohlc(timestamp="1656868680.12345"),
               bitstamp_ohlc(timestamp="1656868690"), bitstamp_ohlc(high="INVALID"),
               bitstamp_ohlc(open="19200"),  # open above high
               bitstamp_ohlc(volume="-1"), bitstamp_ohlc(low="0")),
    ],
    "bybit": [
        (
            b'{"retCode":10001,"retMsg":"Not supported symbols","result":{},"time":1}',
            "exchange_error",
        ),
        (b'{"retCode":0,"result":', "malformed_json"),
        (b"[]", "bad_type"),
        (b'{"retMsg":"OK","result":{"list":[]}}', "missing_field"),
        (b'{"retCode":0,"retMsg":"OK","result":{}}', "missing_field"),
        (b'{"retCode":0,"retMsg":"OK","result":{"list":{}}}', "bad_type"),
        (bybit_klines([BYBIT_ROW[:5]]), "missing_field"),
        (b'{"retCode":0,"retMsg":"OK","result":{"list":["x"]}}', "bad_type"),
        (bybit_klines([with_cells(BYBIT_ROW, c0=True)]), "bad_type"),
        *cases("bad_value", bybit_klines([with_cells(BYBIT_ROW, c0="1670889630000")]),
               bybit_klines([with_cells(BYBIT_ROW, c0="soon")]),
               bybit_klines([with_cells(BYBIT_ROW, c1="x")]),
               bybit_klines([with_cells(BYBIT_ROW, c1="17300")]),  # open above high
               bybit_klines([with_cells(BYBIT_ROW, c5="-1")]),
               bybit_klines([with_cells(BYBIT_ROW, c3="0")]),
               bybit_klines([with_cells(BYBIT_ROW, c2="1e400")])),
    ],
    "coinbase": [
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
    "kraken": [
        (b'{"error":["EQuery:Unknown asset pair"]}', "exchange_error"),
        (b'{"error":[],"result":', "malformed_json"),
        (b"[]", "bad_type"),
        (b'{"error":[]}', "missing_field"),
        (b'{"error":[],"result":{"last":5}}', "bad_type"),
        (kraken_ohlc('[1762777200,"1","1","1","1","1","1"]'), "missing_field"),
        *cases("bad_type", kraken_ohlc('["1762777200","1","1","1","1","1","1",3]'),
               kraken_ohlc('[1762777200,"1","1","1","1","1","1",true]')),
        *cases("bad_value", kraken_ohlc('[1762777200,"one","1","1","1","1","1",3]'),
               kraken_ohlc('[1762777230,"1","1","1","1","1","1",3]'),
               kraken_ohlc('[1762777200,"2","1","1","1","1","1",3]'),
               kraken_ohlc('[1762777200,"1","1","1","1","1","nan",3]'),
               kraken_ohlc('[1762777200,"1","1","1","1","1","1",-3]'),
               kraken_ohlc('[1762777200,"1","1","1","1","1",' + "9" * 400 + ",3]"),
               kraken_ohlc("[" + "6" * 30 + ',"1","1","1","1","1","1",3]')),
    ],
    "okx": [
        (b'{"code":"51001","msg":"Instrument ID does not exist","data":[]}', "exchange_error"),
        (b'{"code":"0","msg":"","data":[', "malformed_json"),
        (b"[]", "bad_type"),
        (b'{"msg":"","data":[]}', "missing_field"),
        (b'{"code":"0","msg":"","data":{}}', "bad_type"),
        (okx_candles(OKX_ROW[:8]), "missing_field"),
        *cases("bad_type", okx_candles(with_cells(OKX_ROW, c0=1.5)),
               okx_candles(with_cells(OKX_ROW, c1=None)), b'{"code":"0","msg":"","data":["x"]}'),
        *cases("bad_value", okx_candles(with_cells(OKX_ROW, c8="2")),
               okx_candles(with_cells(OKX_ROW, c8=1)),
               okx_candles(with_cells(OKX_ROW, c0=str(OKX_M + 30_000))),
               okx_candles(with_cells(OKX_ROW, c0="soon")),
               okx_candles(with_cells(OKX_ROW, c1="x")),
               okx_candles(with_cells(OKX_ROW, c1="5")),  # open above high
               okx_candles(with_cells(OKX_ROW, c5="-1")), okx_candles(with_cells(OKX_ROW, c3="0"))),
    ],
}


KRAKEN_TRADE_ROW = '["105433.60000","0.00027625",1762795433.9717445,"b","l","",10218208]'


def kraken_trades_page(row: str) -> bytes:
    """A ``/0/public/Trades`` answer of a real trade and ``row``."""
    return f'{{"error":[],"result":{{"XBTUSDT":[{KRAKEN_TRADE_ROW},{row}],"last":"1"}}}}'.encode()


BAD_KRAKEN_TRADES_PAGES: list[tuple[bytes, str]] = [
    (b'{"error":["EQuery:Unknown asset pair"]}', "exchange_error"),
    (b'{"error":["EGeneral:Too many requests"],"result":{}}', "exchange_error"),
    (b'{"error":[],"result":{"XBTUSDT":[', "malformed_json"),
    (b'"trades"', "bad_type"),
    (b'{"error":[]}', "missing_field"),
    (b'{"error":[],"result":{"XBTUSDT":[]}}', "missing_field"),
    (b'{"error":[],"result":{"XBTUSDT":[],"last":"17628200359822777540000"}}', "bad_value"),
    (b'{"error":[],"result":{"XBTUSDT":[],"last":1.5}}', "bad_type"),
    (b'{"error":[],"result":{"XBTUSDT":[],"last":-5}}', "bad_value"),
    (b'{"error":[],"result":{"last":"1"}}', "bad_type"),
    (b'{"error":[],"result":{"A":[],"B":[],"last":"1"}}', "bad_type"),
    (b'{"error":[],"result":{"XBTUSDT":{},"last":"1"}}', "bad_type"),
    (kraken_trades_page('["1","1",1762795433.9,"b","l",""]'), "missing_field"),  # pre-2023
    *cases("bad_type", kraken_trades_page('"row"'),
           kraken_trades_page('[1,null,1762795433.9,"b","l","",1]'),
           kraken_trades_page('["1","1","1762795433.9","b","l","",1]'),
           kraken_trades_page('["1","1",true,"b","l","",1]'),
           kraken_trades_page('["1","1",1762795433.9,"b","l","","1"]')),
    *cases("bad_value", kraken_trades_page('["x","1",1762795433.9,"b","l","",1]'),
           kraken_trades_page('["0","1",1762795433.9,"b","l","",1]'),
           kraken_trades_page('["1","-1",1762795433.9,"b","l","",1]'),
           kraken_trades_page('["1","1e400",1762795433.9,"b","l","",1]'),
           kraken_trades_page('["1","1",-5,"b","l","",1]'),
           kraken_trades_page('["1","1",1e300,"b","l","",1]'),
           kraken_trades_page('["1","1",1762795433.9,"buy","l","",1]'),
           kraken_trades_page('["1","1",1762795433.9,["b"],"l","",1]'),
           kraken_trades_page('["1","1",1762795433.9,"b","l","",-1]'),
           kraken_trades_page('["1","1",1762795433.9,"b","l","",' + "9" * 20 + "]")),
]
# fmt: on


@pytest.mark.parametrize(("body", "reason"), BAD_KRAKEN_TRADES_PAGES)
def test_bad_kraken_trades_pages_raise_frame_error_with_reason(body: bytes, reason: str) -> None:
    assert_refused(lambda b: KRAKEN.parse_trades("BTC-USDT", b), body, reason)


REST_SYMBOL = {"binance": "BTCUSDT", "bitstamp": "BTCUSD", "bybit": "BTCUSDT",
               "coinbase": "BTC-USD", "kraken": "BTC-USDT", "okx": "BTC-USDT"}  # fmt: skip


@pytest.mark.parametrize(
    ("venue", "frame", "reason"),
    [(venue, frame, reason) for venue, cases in BAD_FRAMES.items() for frame, reason in cases],
)
def test_bad_frames_raise_frame_error_with_reason(
    venue: str, frame: bytes | str, reason: str
) -> None:
    error = assert_refused(get_exchange(venue).parse, frame, reason)
    assert 0 < len(error.detail) <= 200


@pytest.mark.parametrize(
    ("venue", "body", "reason"),
    [(venue, body, reason) for venue, cases in BAD_BARS.items() for body, reason in cases],
)
def test_bad_rest_answers_raise_frame_error_with_reason(
    venue: str, body: bytes, reason: str
) -> None:
    assert_refused(lambda b: get_exchange(venue).parse_bars(REST_SYMBOL[venue], b), body, reason)


def test_the_unchanged_frames_and_rows_parse() -> None:
    """What the cases above change is valid as it is, so each case tests its change."""
    assert len(BINANCE.parse(binance_changed())) == 1
    assert len(BITSTAMP.parse(bitstamp_changed())) == 1
    assert len(BYBIT.parse(bybit_changed())) == 1
    assert len(COINBASE.parse(coinbase_changed())) == 1
    assert len(OKX.parse(okx_changed())) == 1
    assert len(BITSTAMP.parse_bars("BTCUSD", bitstamp_ohlc())) == 1
    assert len(BYBIT.parse_bars("BTCUSDT", bybit_klines([BYBIT_ROW]))) == 1
    assert KRAKEN.parse_bars("BTC-USDT", kraken_ohlc(KRAKEN_ROW))[0].trades == 3
    assert len(KRAKEN.parse_trades("BTC-USDT", kraken_trades_page(KRAKEN_TRADE_ROW))[0]) == 2
    assert len(OKX.parse_bars("BTC-USDT", okx_candles(OKX_ROW))) == 1


GOOD_OKX, GOOD_BYBIT = OKX_PUSH["data"][0], BYBIT_PUSH["data"][0]


@pytest.mark.parametrize(
    ("venue", "two_trades", "second_bad"),
    [
        ("bybit", bybit_push(GOOD_BYBIT, GOOD_BYBIT | {"i": "x2"}),
         bybit_push(GOOD_BYBIT, GOOD_BYBIT | {"i": "x2", "v": "-1"})),
        ("kraken", kraken_changed(), kraken_changed(qty=-1.0)),
        ("okx", okx_push(GOOD_OKX, GOOD_OKX | {"tradeId": "338476376"}),
         okx_push(GOOD_OKX, GOOD_OKX | {"tradeId": "338476376", "sz": "-1"})),
    ],
)  # fmt: skip
def test_one_bad_trade_rejects_the_whole_frame(
    venue: str, two_trades: str, second_bad: str
) -> None:
    parse = get_exchange(venue).parse
    assert len(parse(two_trades)) == 2
    with pytest.raises(FrameError):
        parse(second_bad)  # the first, valid trade is not returned alone


# frames a venue sends besides trades (acks, pongs, other channels): each parses to nothing
IGNORED: dict[str, tuple[list[bytes | str], list[str]]] = {  # the frames, their ids
    "binance": (
        [
            b'{"result":null,"id":1}',
            b'{"result":["btcusdt@trade"],"id":3}',
            b'{"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000",'
            b'"A":"40.66000000"}',
            b'{"stream":"bnbusdt@depth5","data":{"lastUpdateId":160,"bids":[["0.0024","10"]],'
            b'"asks":[["0.0026","100"]]}}',
            b'[{"e":"24hrMiniTicker","E":1672515782136,"s":"BNBBTC","c":"0.0025"}]',
            b'{"e":"depthUpdate","E":1,"s":"BNBBTC","U":1,"u":2,"b":[],"a":[]}',
            b'{"e":"kline","E":1,"s":"BNBBTC","k":{"t":1672515780000,"T":1672515839999,"s":"BNBBTC",'
            b'"i":"5m","f":1,"L":2,"o":"1","c":"1","h":"1","l":"1","v":"1","n":2,"x":true}}',
        ],
        ["ack", "list-ack", "bookTicker", "depth5", "array-stream", "depthUpdate", "kline_5m"],
    ),
    "bitstamp": (
        [
            # message shapes from Bitstamp's WebSocket v2 documentation
            b'{"event":"bts:heartbeat","channel":"","data":{"status":"success"}}',
            b'{"event":"bts:unsubscription_succeeded","channel":"live_trades_btcusd","data":{}}',
            b'{"event":"order_created","channel":"live_orders_btcusd","data":{"id":1}}',
            # a trade event of a channel that is not a live_trades one
            b'{"event":"trade","channel":"private-my_trades_btcusd","data":{"id":1}}',
        ],
        ["heartbeat", "unsubscribed", "live-orders", "private-trades"],
    ),
    "bybit": (
        [
            # message shapes from Bybit's v5 WebSocket documentation (connect page)
            b'{"success":true,"ret_msg":"pong","conn_id":"0970e817-426e-429a-a679-ff7f55e0b16a",'
            b'"op":"ping"}',
            b'{"success":true,"ret_msg":"subscribe","conn_id":"2324d924-aa4d-45b0-a858-7b8be29ab52b",'
            b'"req_id":"10001","op":"subscribe"}',
            b'{"topic":"orderbook.1.BTCUSDT","type":"snapshot","ts":1672304484978,"data":{"s":"BTCUSDT",'
            b'"b":[["16493.50","0.006"]],"a":[["16611.00","0.029"]],"u":18521288,"seq":7961638724}}',
            b'{"topic":"tickers.BTCUSDT","ts":1673853746003,"type":"snapshot","cs":2588407389,'
            b'"data":{"symbol":"BTCUSDT","lastPrice":"21109.77"}}',
            bybit_push(),
        ],
        ["pong", "subscribe-ack", "orderbook", "tickers", "empty-push"],
    ),
    "coinbase": (
        [
            # shapes from the Exchange WebSocket channel documentation (docs.cdp.coinbase.com)
            b'{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]}]}',
            b'{"type":"status","products":[],"currencies":[]}',
            b'{"type":"received","time":"2014-11-07T08:19:27.028459Z","product_id":"BTC-USD",'
            b'"sequence":10,"order_id":"d50ec984","size":"1.34","price":"502.1","side":"buy",'
            b'"order_type":"limit"}',
        ],
        ["subscriptions", "status", "full-channel-received"],
    ),
    "kraken": (
        [
            b'{"channel":"book","type":"update","data":[{"symbol":"MATIC/USD","bids":[{"price":0.5666,'
            b'"qty":0}],"asks":[],"checksum":2439117997,"timestamp":"2023-10-06T17:35:55.440295Z"}]}',
            b'{"channel":"ticker","type":"snapshot","data":[{"symbol":"ALGO/USD","bid":0.10025,'
            b'"bid_qty":740.0,"ask":0.10036,"ask_qty":1361.4,"last":0.10035}]}',
            b'{"method":"pong","req_id":101,"time_in":"2023-09-24T14:10:23.799685Z",'
            b'"time_out":"2023-09-24T14:10:23.799703Z"}',
            b'{"channel":"trade","type":"update","data":[]}',
        ],
        ["book", "ticker", "pong", "empty-trade-list"],
    ),
    "okx": (
        [
            b"pong",
            "pong",
            b'{"event":"subscribe","arg":{"channel":"trades","instId":"BTC-USDT"},"connId":"a4d3ae55"}',
            b'{"event":"unsubscribe","arg":{"channel":"trades","instId":"BTC-USDT"},"connId":"a4d3ae55"}',
            b'{"event":"channel-conn-count","channel":"trades","connCount":"2","connId":"a4d3ae55"}',
            b'{"event":"notice","code":"64009","msg":"something else","connId":"a4d3ae55"}',
            b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[]}',
        ],
        ["pong", "pong-text", "ack", "unsubscribed", "conn-count", "other-notice", "empty-push"],
    ),
}


@pytest.mark.parametrize(
    ("venue", "frame"),
    [
        pytest.param(venue, frame, id=f"{venue}-{name}")
        for venue, (frames, ids) in IGNORED.items()
        for frame, name in zip(frames, ids, strict=True)
    ],
)
def test_acks_and_other_channels_give_nothing(venue: str, frame: bytes | str) -> None:
    assert get_exchange(venue).parse(frame) == []


# --- what every venue does alike ------------------------------------------------------------


@pytest.mark.parametrize("venue", VENUES)
def test_the_registry_returns_the_venues_instance(venue: str) -> None:
    assert get_exchange(venue) is INSTANCES[venue]
    assert INSTANCES[venue].name == venue


# per venue: a symbol and a channel it serves, channels it does not, symbols it cannot read
SUBSCRIPTIONS = {
    "binance": ("BTCUSDT", "trade", ["depth"], ["BTC/USDT", ""]),
    "bitstamp": ("BTCUSD", "live_trades", ["diff_order_book"], ["BTC-USD", "btcusd"]),
    "bybit": ("BTCUSDT", "publicTrade", ["trade"], ["BTC-USDT", "btcusdt", ""]),
    "coinbase": ("BTC-USD", "matches", ["level2"], ["BTCUSD", "btc-usd"]),
    "kraken": ("BTC-USD", "trade", ["book"], ["BTC/USD", "XBTUSD"]),
    "okx": ("BTC-USDT", "trades", ["books"], ["BTCUSDT", "btc-usdt", "BTC-USD-SWAP"]),
}
BAD_SUBSCRIPTIONS = [
    case
    for venue, (symbol, channel, other_channels, bad_symbols) in SUBSCRIPTIONS.items()
    for case in [
        *((venue, [symbol], [c]) for c in other_channels),
        (venue, [symbol], []),  # no channel at all
        *((venue, [s], [channel]) for s in bad_symbols),
    ]
]
# every venue but Binance (1,024 streams a connection, tests/unit/test_exchange_binance.py)
HUNDRED_A_CONNECTION = {
    "bitstamp": "C{}USD", "bybit": "C{}USDT", "coinbase": "C{}-USD", "kraken": "K{}-USD",
    "okx": "C{}-USDT",
}  # fmt: skip


@pytest.mark.parametrize("venue", sorted(HUNDRED_A_CONNECTION))
def test_250_symbols_make_3_connections_of_at_most_100_in_order(venue: str) -> None:
    symbols = [HUNDRED_A_CONNECTION[venue].format(i) for i in range(250)]
    channel = SUBSCRIPTIONS[venue][1]
    plans = get_exchange(venue).connections("ws://127.0.0.1:9", symbols, [channel])
    assert [len(p.symbols) for p in plans] == [100, 100, 50]
    assert [s for p in plans for s in p.symbols] == symbols


@pytest.mark.parametrize("venue", VENUES)
@pytest.mark.parametrize("at_ms", [5, 1_656_868_680_000], ids=["unaligned", "minute"])
def test_an_empty_range_is_no_bars_request(venue: str, at_ms: int) -> None:
    with pytest.raises(ValueError):
        get_exchange(venue).bars_request(SUBSCRIPTIONS[venue][0], at_ms, at_ms)


@pytest.mark.parametrize(("venue", "symbols", "channels"), BAD_SUBSCRIPTIONS)
def test_a_bad_subscription_is_a_start_up_error(
    venue: str, symbols: list[str], channels: list[str]
) -> None:
    exchange = get_exchange(venue)
    with pytest.raises(ValueError):
        exchange.connections(exchange.default_ws_url, symbols, channels)
