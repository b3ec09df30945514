"""Binance spot protocol: real recorded frames, documented samples, limits, REST klines.

Fixtures (tests/fixtures/ws/README.md): ``binance_us.jsonl`` and ``binance_spot.jsonl`` are real
combined-stream frames recorded by cryptofeed; ``binance_trade_doc.jsonl`` is the ``@trade``
payload from Binance's documentation (no recording of that stream exists).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from support.parsers import csv_rows, json_array, parse_recording, recorded_frames

from streamer.core.exchanges.base import FrameError
from streamer.core.exchanges.binance import BINANCE
from streamer.core.types import Bar, Trade

# --- real recorded frames -------------------------------------------------------------------


def test_recorded_binance_us_frames_give_exact_trades_and_the_closed_kline() -> None:
    trades, bars, _ = parse_recording(BINANCE, "binance_us.jsonl")
    assert [t.trade_id for t in trades] == list(range(425085, 425096))
    # m (buyer is maker) true -> the taker sold: 425087 onwards all have m=true
    assert [t.taker_side for t in trades] == ["buy"] * 2 + ["sell"] * 9
    # five kline frames, only one with x=true: the minute 10:24 UTC closed with 14 trades
    assert bars == [
        Bar("binance", "OMGBUSD", 1633998240000, 13.7212, 13.8076, 13.7212, 13.7664, 536.51, 14)
    ]
    assert bars[0].complete is True


def test_recorded_binance_spot_frames() -> None:
    trades, bars, empty = parse_recording(BINANCE, "binance_spot.jsonl")
    assert trades == [
        Trade("binance", "NKNUSDT", 15683430, 1633998523963, 0.3528, 58.0, "buy"),
        Trade("binance", "LRCBTC", 9213679, 1633998534486, 6.38e-06, 177.0, "buy"),
    ]
    assert bars == []  # both klines were still open (x=false)
    assert empty == 8


def test_raw_stream_form_of_a_recorded_frame_parses_like_the_combined_one() -> None:
    for line in recorded_frames("binance_us.jsonl"):
        wrapper = json.loads(line)
        raw = json.dumps(wrapper["data"], separators=(",", ":"))
        assert BINANCE.parse(raw) == BINANCE.parse(line)
        assert BINANCE.parse(raw.encode()) == BINANCE.parse(line.decode())


def test_documented_trade_stream_sample_raw_and_combined() -> None:
    (doc,) = recorded_frames("binance_trade_doc.jsonl")
    expected = [Trade("binance", "BNBBTC", 12345, 1672515782136, 0.001, 100.0, "sell")]
    combined = b'{"stream":"bnbbtc@trade","data":' + doc + b"}"
    assert BINANCE.parse(doc) == expected
    assert BINANCE.parse(combined) == expected
    assert BINANCE.parse(combined.decode()) == expected
    # key order is Binance's habit, not a rule: reordered frames take the slow path
    reordered = json.dumps({"data": json.loads(doc), "stream": "bnbbtc@trade"}, indent=1)
    assert BINANCE.parse(reordered) == expected


def test_trade_time_not_event_time_and_aggtrade_id_field() -> None:
    frame = {"e": "aggTrade", "E": 99, "s": "BTCUSDT", "a": 7, "p": "1", "q": "2"}
    frame |= {"f": 100, "l": 105, "T": 42, "m": False, "M": True}
    (trade,) = BINANCE.parse(json.dumps(frame))
    assert isinstance(trade, Trade)
    assert (trade.trade_id, trade.ts_ms) == (7, 42)


# --- rejected frames ------------------------------------------------------------------------


def closed_kline(**k: Any) -> str:
    kline = {"t": 1633998240000, "T": 1633998299999, "s": "OMGBUSD", "i": "1m", "f": 1, "L": 2}
    kline |= {"o": "2", "c": "2", "h": "3", "l": "1", "v": "5", "n": 3, "x": True} | k
    return json.dumps({"e": "kline", "E": 1, "s": "OMGBUSD", "k": kline})


@pytest.mark.parametrize(
    "changes",
    [{"t": 1633998240001}, {"h": "1.5"}, {"l": "2.5"}, {"v": "-1"}, {"n": -1}, {"o": "0"}],
    ids=["unaligned-minute", "high-below-open", "low-above-close", "neg-volume", "neg-n", "zero"],
)
def test_inconsistent_closed_kline_is_rejected(changes: dict[str, Any]) -> None:
    assert BINANCE.parse(closed_kline()) == [
        Bar("binance", "OMGBUSD", 1633998240000, 2.0, 3.0, 1.0, 2.0, 5.0, 3)
    ]
    with pytest.raises(FrameError) as caught:
        BINANCE.parse(closed_kline(**changes))
    assert caught.value.reason == "bad_value"


def test_every_truncation_of_a_real_frame_is_malformed_json() -> None:
    line = recorded_frames("binance_us.jsonl")[0]
    for end in range(len(line)):
        with pytest.raises(FrameError) as caught:
            BINANCE.parse(line[:end])
        assert caught.value.reason == "malformed_json"


# --- connections ----------------------------------------------------------------------------


def test_2500_symbols_make_3_connections_of_at_most_1024_streams() -> None:
    symbols = [f"SYM{i}USDT" for i in range(2500)]
    plans = BINANCE.connections("wss://stream.binance.com:9443/", symbols, ["trade"])

    assert [len(plan.symbols) for plan in plans] == [1024, 1024, 452]
    assert {plan.url for plan in plans} == {"wss://stream.binance.com:9443/stream"}
    assert [s for plan in plans for s in plan.symbols] == symbols
    for plan in plans:
        messages = [json.loads(message) for message in plan.subscribe]
        assert [m["method"] for m in messages] == ["SUBSCRIBE"] * len(messages)
        assert all(len(m["params"]) <= 200 for m in messages)
        assert len({m["id"] for m in messages}) == len(messages)
        streams = [p for m in messages for p in m["params"]]
        assert streams == [f"{s.lower()}@trade" for s in plan.symbols]
    assert [len(plan.subscribe) for plan in plans] == [6, 6, 3]


def test_all_channels_of_a_symbol_share_its_connection() -> None:
    symbols = [f"S{i}USDT" for i in range(1100)]
    plans = BINANCE.connections(BINANCE.default_ws_url, symbols, ["aggTrade", "kline_1m"])
    assert [len(plan.symbols) for plan in plans] == [512, 512, 76]
    first = json.loads(plans[0].subscribe[0])
    assert first == {
        "method": "SUBSCRIBE",
        "params": [f"s{i}usdt@{c}" for i in range(100) for c in ("aggTrade", "kline_1m")],
        "id": 1,
    }


def test_connection_settings_follow_binance_limits() -> None:
    assert BINANCE.max_streams_per_connection == 1024
    assert BINANCE.max_connection_age_s == 86400.0
    assert 0 < BINANCE.connect_attempts_per_s <= 300 / 300  # 300 attempts per 5 min per IP
    assert BINANCE.connections("wss://x", [], ["trade"]) == []


# --- REST klines ----------------------------------------------------------------------------


def test_rest_row_of_the_recorded_closed_kline_equals_the_websocket_bar() -> None:
    # every column from the real kline message of binance_us.jsonl (t, o, h, l, c, v, T, q, n,
    # V, Q, B): the REST and the WebSocket form of one real minute must give the same bar
    row = [1633998240000, "13.72120000", "13.80760000", "13.72120000", "13.76640000"]
    row += ["536.51000000", 1633998299999, "7387.12073500", 14, "231.60000000", "3187.75743000"]
    row += ["0"]
    (ws_bar,) = parse_recording(BINANCE, "binance_us.jsonl")[1]
    assert BINANCE.parse_bars("OMGBUSD", json.dumps([row]).encode()) == [ws_bar]


def test_parse_bars_on_a_real_btcusdt_page() -> None:
    # o, h, l, c, v and open time are real (binance_spot BTCUSDT 2025-05-20); the close time is
    # derived, and quote volume / trade count / taker columns are placeholders (not recorded).
    rows = csv_rows("binance_spot_BTCUSDT_1m_20250520.csv")
    body = json_array(
        f'[{r["open_time_ms"]},"{r["open"]}","{r["high"]}","{r["low"]}","{r["close"]}",'
        f'"{r["volume"]}",{int(r["open_time_ms"]) + 59_999},"0",{i % 7},"0","0","0"]'
        for i, r in enumerate(rows)
    )

    bars = BINANCE.parse_bars("BTCUSDT", body)

    assert len(bars) == 240
    assert bars[0] == Bar(
        "binance", "BTCUSDT", 1747699200000, 105573.73, 105597.1, 105554.31, 105554.32, 10.82647, 0
    )
    assert bars[-1].open_time_ms == 1747699200000 + 239 * 60_000
    assert bars[-1] == Bar(
        "binance",
        "BTCUSDT",
        int(rows[-1]["open_time_ms"]),
        float(rows[-1]["open"]),
        float(rows[-1]["high"]),
        float(rows[-1]["low"]),
        float(rows[-1]["close"]),
        float(rows[-1]["volume"]),
        239 % 7,
    )
    assert sum(Decimal(repr(b.volume)) for b in bars) == sum(Decimal(r["volume"]) for r in rows)
    assert all(b.complete for b in bars)
