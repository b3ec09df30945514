"""Bitstamp ``live_trades_<pair>`` channels and REST OHLC v2.

``bitstamp.jsonl`` holds real frames recorded by cryptofeed on ``wss://ws.bitstamp.net/``
(every ``live_trades`` ack and trade of the recording plus a few order-book frames;
tests/fixtures/ws/README.md). No Bitstamp REST response was recorded here: ``OHLC_BODY`` is the
three-minute ``/api/v2/ohlc/btcusd/`` response in marianogappa/crypto-candles'
``candles/bitstamp/api_klines_test.go`` (MIT; BTC/USD 2022-07-03 17:18-17:20 UTC, in the layout
Bitstamp documents), and the paging test serves real Bybit spot minutes
(``bybit_spot_BTCUSDT_1m_20221213.csv``) in Bitstamp's layout.
"""

from __future__ import annotations

import json

import pytest
from support.parsers import BYBIT_MINUTES, csv_rows, parse_recording, recorded_frames, serve_pages

from streamer.core.bars import BarAggregator
from streamer.core.exchanges.base import Reconnect
from streamer.core.exchanges.bitstamp import BITSTAMP, KEEPALIVE_MESSAGE
from streamer.core.paging import RestPager
from streamer.core.types import MINUTE_MS, Bar, Trade

FRAMES = recorded_frames("bitstamp.jsonl")


# --- real recorded frames -------------------------------------------------------------------


def test_taker_side_is_the_newer_order_and_values_match_every_frame() -> None:
    """``type`` 0 is a taker buy: in every recorded trade the buy order is the newer (larger
    id) exactly when ``type`` is 0. Numbers and strings of the frame agree with the trade."""
    for line in FRAMES:
        frame = json.loads(line)
        if frame["event"] != "trade":
            continue
        (trade,) = BITSTAMP.parse(line)
        data = frame["data"]
        assert isinstance(trade, Trade)
        assert (trade.taker_side == "buy") == (data["buy_order_id"] > data["sell_order_id"])
        assert trade.price == data["price"] == float(data["price_str"])
        assert trade.qty == data["amount"] == float(data["amount_str"])
        assert trade.ts_ms // 1000 == int(data["timestamp"]) and trade.trade_id == data["id"]
    assert BITSTAMP.parse(FRAMES[-1].decode()) == BITSTAMP.parse(FRAMES[-1])


def test_recorded_trades_make_one_exact_bar() -> None:
    agg = BarAggregator("bitstamp")
    for t in parse_recording(BITSTAMP, "bitstamp.jsonl")[0]:
        assert agg.add(t) == []
    assert agg.on_clock(1641343680000 + MINUTE_MS + 2000) == [
        Bar("bitstamp", "ETHUSD", 1641343680000, 3805.44, 3805.44, 3800.53, 3800.8, 34.91894724, 10)
    ]


def test_request_reconnect_asks_for_a_new_connection() -> None:
    notice = b'{"event":"bts:request_reconnect","channel":"","data":""}'
    assert BITSTAMP.parse(notice) == [Reconnect("request_reconnect")]


def test_keepalive_is_the_heartbeat_event() -> None:
    assert json.loads(KEEPALIVE_MESSAGE) == {"event": "bts:heartbeat"}


# --- connections ----------------------------------------------------------------------------


def test_one_subscribe_message_per_pair() -> None:
    symbols = [f"C{i}USD" for i in range(250)]
    plans = BITSTAMP.connections("ws://127.0.0.1:9", symbols, ["live_trades"])
    assert [len(p.subscribe) for p in plans] == [100, 100, 50]


# --- REST OHLC ------------------------------------------------------------------------------

M = 1656868680000  # 2022-07-03 17:18 UTC
OHLC_BODY = b"""{"data": {"pair": "BTC/USD", "ohlc": [
 {"high": "19122.76", "timestamp": "1656868680", "volume": "0.02005000", "low": "19111.99",
  "close": "19111.99", "open": "19122.76"},
 {"high": "19122.79", "timestamp": "1656868740", "volume": "0.91282000", "low": "19113.03",
  "close": "19113.03", "open": "19122.79"},
 {"high": "19122.30", "timestamp": "1656868800", "volume": "0.04470000", "low": "19120.33",
  "close": "19121.32", "open": "19122.30"}]}}"""


def test_parse_bars() -> None:
    assert BITSTAMP.parse_bars("BTCUSD", OHLC_BODY) == [
        Bar("bitstamp", "BTCUSD", M, 19122.76, 19122.76, 19111.99, 19111.99, 0.02005, 0),
        Bar(
            "bitstamp", "BTCUSD", M + MINUTE_MS, 19122.79, 19122.79, 19113.03, 19113.03, 0.91282, 0
        ),
        Bar(
            "bitstamp", "BTCUSD", M + 2 * MINUTE_MS, 19122.3, 19122.3, 19120.33, 19121.32, 0.0447, 0
        ),
    ]
    assert BITSTAMP.parse_bars("BTCUSD", b'{"data":{"pair":"BTC/USD","ohlc":[]}}') == []


def bitstamp_answer(store: list[dict[str, str]], params: dict[str, str], use_end: bool) -> bytes:
    """``limit`` rows up to ``end`` (what Bitstamp documents when both bounds are given) or
    from ``start``, oldest first."""
    start, end, limit = int(params["start"]), int(params["end"]), int(params["limit"])
    if use_end:
        rows = [r for r in store if int(r["timestamp"]) <= end][-limit:]
    else:
        rows = [r for r in store if int(r["timestamp"]) >= start][:limit]
    return json.dumps({"data": {"pair": "BTC/USDT", "ohlc": rows}}).encode()


@pytest.mark.parametrize("use_end", [False, True], ids=["from-start", "up-to-end"])
def test_paging_gives_every_minute_once(use_end: bool) -> None:
    minutes = csv_rows(BYBIT_MINUTES)
    store = [
        {"timestamp": str(int(m["open_time_ms"]) // 1000), "open": m["open"], "high": m["high"],
         "low": m["low"], "close": m["close"], "volume": m["volume"]}
        for m in minutes
    ]  # fmt: skip
    start = int(minutes[0]["open_time_ms"])
    pager = RestPager(BITSTAMP, "BTCUSDT", start + 20 * MINUTE_MS, start + 180 * MINUTE_MS)
    bars = serve_pages(pager, lambda params: bitstamp_answer(store, params, use_end))
    assert [b.open_time_ms for b in bars] == [int(m["open_time_ms"]) for m in minutes[20:180]]
    first = minutes[20]
    assert bars[0] == Bar(
        "bitstamp",
        "BTCUSDT",
        start + 20 * MINUTE_MS,
        float(first["open"]),
        float(first["high"]),
        float(first["low"]),
        float(first["close"]),
        float(first["volume"]),
        0,
    )
