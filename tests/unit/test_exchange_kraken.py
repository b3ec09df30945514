"""Kraken WebSocket v2 and REST OHLC.

``kraken_spot_trade_v1.jsonl`` is a real recording, but of WebSocket v1 (arrays, no trade ids);
``kraken_v2_doc.jsonl`` holds the v2 samples from Kraken's documentation, the current format;
``kraken_rest_ohlc_XBTUSDT.json`` is the start of a real ``/0/public/OHLC`` response
(tests/fixtures/ws/README.md says which is which); ``/0/public/Trades`` pages are the real
recorded trades of tests/fixtures/kraken rendered as Kraken serves them.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from support.kraken_pages import load_rows, trades_body
from support.parsers import WS, recorded_frames, unsupported_frames

from streamer.core.exchanges.kraken import KRAKEN, rest_pair
from streamer.core.types import Bar, Trade

# --- v2, the current protocol (documentation samples) ---------------------------------------


def test_documented_v2_frames() -> None:
    ack, snapshot, update, heartbeat, status, unsubscribed = recorded_frames("kraken_v2_doc.jsonl")
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


# --- v1, the recorded protocol --------------------------------------------------------------


def test_recorded_v1_frames_are_ignored_or_rejected_as_unsupported() -> None:
    unsupported, ignored = unsupported_frames(KRAKEN, "kraken_spot_trade_v1.jsonl")
    assert all(json.loads(line)[-2] == "trade" for line in unsupported)
    # 30 heartbeats, 10 subscriptionStatus, 1 systemStatus; 8 trade arrays (11 trades)
    assert (len(ignored), len(unsupported)) == (41, 8)


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


# --- REST Trades (older than OHLC reaches) --------------------------------------------------

# The first rows and the cursor of the real /0/public/Trades answer the recorded trades come
# from (nautilus_trader's Kraken test data, http_trades.json): times to 100 ns.
REAL_TRADES_PAGE = b"""{"error":[],"result":{"XBTUSDT":[
["105433.60000","0.00027625",1762795433.9717445,"b","l","",10218208],
["105410.10000","0.00005000",1762795457.8467374,"b","m","",10218209],
["105383.80000","0.00012460",1762795473.9373446,"b","m","",10218210],
["105383.70000","0.00007235",1762795483.306824,"s","l","",10218212]],
"last":"1762820035982277754"}}"""


def test_trades_request_and_depth() -> None:
    request = KRAKEN.trades_request("BTC-USDT", 1_762_795_439_999_000_000)
    assert request.path == "/0/public/Trades"
    assert request.params == {"pair": "XBTUSDT", "since": "1762795439999000000", "count": "1000"}
    assert KRAKEN.trades_request("DOGE-USD", 0).params["pair"] == "XDGUSD"
    assert KRAKEN.rules.bars_depth_minutes == 720
    with pytest.raises(ValueError):
        KRAKEN.trades_request("BTC-USD", -1)


def test_parse_trades_of_a_real_page() -> None:
    trades, last = KRAKEN.parse_trades("BTC-USDT", REAL_TRADES_PAGE)
    assert last == 1_762_820_035_982_277_754
    # the same trades, times truncated to the ms, as the recording (and the WebSocket) has them
    assert trades == [
        Trade("kraken", "BTC-USDT", 10218208, 1762795433971, 105433.6, 0.00027625, "buy"),
        Trade("kraken", "BTC-USDT", 10218209, 1762795457846, 105410.1, 0.00005, "buy"),
        Trade("kraken", "BTC-USDT", 10218210, 1762795473937, 105383.8, 0.0001246, "buy"),
        Trade("kraken", "BTC-USDT", 10218212, 1762795483306, 105383.7, 0.00007235, "sell"),
    ]
    assert trades == [r.trade() for r in load_rows() if r.trade_id in {t.trade_id for t in trades}]


def test_parse_trades_of_every_recorded_trade() -> None:
    rows = load_rows()
    trades, last = KRAKEN.parse_trades("BTC-USDT", trades_body(rows, 7, pair_key="XXBTZUSD"))
    assert trades == [r.trade() for r in rows] and last == 7
    assert KRAKEN.parse_trades("BTC-USD", b'{"error":[],"result":{"XXBTZUSD":[],"last":5}}') == (
        [],
        5,
    )
