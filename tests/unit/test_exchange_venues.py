"""What every venue has, with its exact values, one table a kind: the trades of its recorded
frames, its subscribe messages, its first page of REST bars and its rules. What only one venue
has is in tests/unit/test_exchange_<venue>.py (the fixtures are described there)."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import pytest
from support.parsers import parse_recording, qty_by_symbol, subscribe_messages

from streamer.core.exchanges import get_exchange, names
from streamer.core.exchanges.base import VenueRules
from streamer.core.exchanges.bitstamp import KEEPALIVE_MESSAGE as BITSTAMP_KEEPALIVE
from streamer.core.exchanges.bybit import KEEPALIVE_MESSAGE as BYBIT_KEEPALIVE
from streamer.core.exchanges.okx import KEEPALIVE_MESSAGE as OKX_KEEPALIVE
from streamer.core.rest_limits import RestWeight
from streamer.core.types import MINUTE_MS, Trade

# --- real recorded frames -------------------------------------------------------------------

RECORDED = [  # the recording, its trades, the frames that gave nothing, its first and last trade
    pytest.param(
        "binance", "binance_us.jsonl", 11, 10,
        Trade("binance", "OMGBUSD", 425085, 1633998288467, 13.8048, 2.1, "buy"),
        Trade("binance", "OMGBUSD", 425095, 1633998301807, 13.7604, 10.0, "sell"),
        id="binance",  # 3 depth + 3 bookTicker frames (other channels) and 4 klines still open
    ),
    pytest.param(
        "bitstamp", "bitstamp.jsonl", 10, 15,
        Trade("bitstamp", "ETHUSD", 216000477, 1641343699596, 3805.44, 0.0792, "buy"),
        Trade("bitstamp", "ETHUSD", 216000506, 1641343721269, 3800.8, 2.73248242, "sell"),
        id="bitstamp",  # 12 subscription acks, 3 diff_order_book frames
    ),
    pytest.param(
        "coinbase", "coinbase_pro.jsonl", 107, 9,  # 97 match + 10 last_match
        # the first frame is a last_match: the maker sold, so the taker bought
        Trade("coinbase", "BAND-GBP", 881613, 1618677810244, 14.7775, 0.04, "buy"),
        Trade("coinbase", "SKL-USD", 1568319, 1618677846669, 0.7902, 18.0, "sell"),
        id="coinbase",  # 3 subscriptions, 3 ticker, 3 l2update
    ),
    pytest.param(
        "okx", "okx.jsonl", 74, 9,
        Trade("okx", "BTC-USD-220527", 7849, 1652459199958, 30218.8, 1.0, "buy"),
        Trade("okx", "BTC-USDT", 338476375, 1652459235576, 30227.6, 0.00000088, "buy"),
        id="okx",  # 3 subscribe acks, 3 tickers, 3 books pushes
    ),
]  # fmt: skip


# per symbol, the trades of a recording and their quantity (summed exactly); per taker side,
# the trades
RECORDED_TOTALS = [
    pytest.param("binance", "binance_us.jsonl", {"OMGBUSD": (11, "383.37")},
                 {"buy": 2, "sell": 9}, id="binance"),
    pytest.param("bitstamp", "bitstamp.jsonl", {"ETHUSD": (10, "34.91894724")},
                 {"buy": 1, "sell": 9}, id="bitstamp"),
    pytest.param(
        "coinbase", "coinbase_pro.jsonl",
        {"SKL-USD": (53, "48069.6"), "DASH-BTC": (16, "15.767"), "SKL-BTC": (9, "6763.4"),
         "BAND-BTC": (9, "210.67"), "NMR-EUR": (9, "4.936"), "BAND-GBP": (5, "36.04"),
         "SKL-GBP": (2, "1343.2"), "NU-GBP": (2, "875.131"), "YFI-BTC": (1, "0.000007"),
         "CRV-EUR": (1, "400")},
        {"sell": 54, "buy": 53},  # maker side "buy" on 54 matches -> 54 taker sells
        id="coinbase",
    ),
    pytest.param(
        "okx", "okx.jsonl",
        {"BTC-USDT": (69, "3.48657495"), "BTC-USD-220527": (4, "35"), "UNI-USD-SWAP": (1, "100")},
        {"buy": 48, "sell": 26}, id="okx",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("venue", "recording", "count", "empty", "first", "last"), RECORDED)
def test_recorded_frames_give_exact_trades(
    venue: str, recording: str, count: int, empty: int, first: Trade, last: Trade
) -> None:
    trades, _, nothing = parse_recording(get_exchange(venue), recording)
    assert len(trades) == count and nothing == empty
    assert trades[0] == first
    assert trades[-1] == last


@pytest.mark.parametrize(("venue", "recording", "by_symbol", "by_side"), RECORDED_TOTALS)
def test_recorded_trades_by_symbol_and_side(
    venue: str, recording: str, by_symbol: dict[str, tuple[int, str]], by_side: dict[str, int]
) -> None:
    trades = parse_recording(get_exchange(venue), recording)[0]
    assert Counter(t.symbol for t in trades) == {s: n for s, (n, _) in by_symbol.items()}
    assert qty_by_symbol(trades) == {s: Decimal(qty) for s, (_, qty) in by_symbol.items()}
    assert Counter(t.taker_side for t in trades) == by_side


# --- connections ----------------------------------------------------------------------------

SUBSCRIBE = [  # the venue's URL, two symbols on one channel, the messages of their connection
    pytest.param(
        "bitstamp", "wss://ws.bitstamp.net", ["BTCUSD", "ETHEUR"], ["live_trades"],
        [{"event": "bts:subscribe", "data": {"channel": "live_trades_btcusd"}},
         {"event": "bts:subscribe", "data": {"channel": "live_trades_etheur"}}],
        id="bitstamp-one-message-a-pair",
    ),
    pytest.param(
        "bybit", "wss://stream.bybit.com/v5/public/spot", ["BTCUSDT", "ETHUSDT"], ["publicTrade"],
        [{"op": "subscribe", "args": ["publicTrade.BTCUSDT", "publicTrade.ETHUSDT"]}],
        id="bybit",
    ),
    pytest.param(
        "coinbase", "wss://ws-feed.exchange.coinbase.com", ["BTC-USD", "ETH-USD"], ["matches"],
        [{"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"],
          "channels": ["matches", "heartbeat"]}],
        id="coinbase-with-heartbeats",
    ),
    pytest.param(
        "kraken", "wss://ws.kraken.com/v2", ["BTC-USD", "ETH-EUR"], ["trade"],
        [{"method": "subscribe",
          "params": {"channel": "trade", "symbol": ["BTC/USD", "ETH/EUR"], "snapshot": False}}],
        id="kraken-wire-symbols-no-snapshot",
    ),
    pytest.param(
        "okx", "wss://ws.okx.com:8443/ws/v5/public", ["BTC-USDT", "ETH-USDT"], ["trades"],
        [{"op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USDT"},
                                      {"channel": "trades", "instId": "ETH-USDT"}]}],
        id="okx",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("venue", "url", "symbols", "channels", "messages"), SUBSCRIBE)
def test_subscribe_messages(
    venue: str, url: str, symbols: list[str], channels: list[str], messages: list[Any]
) -> None:
    assert subscribe_messages(get_exchange(venue), url, symbols, channels) == messages


# --- the first page of REST bars ------------------------------------------------------------

BINANCE_M = 1747699200000  # 2025-05-20 00:00 UTC
BITSTAMP_M = 1656868680000  # 2022-07-03 17:18 UTC
BYBIT_M = 1670889600000  # 2022-12-13 00:00 UTC
COINBASE_M = 1513468800000  # 2017-12-17 00:00 UTC
KRAKEN_M = 1762777020000  # 2025-11-10 12:17 UTC
OKX_M = 1597026360000  # 2020-08-10 02:26 UTC

BARS_REQUESTS = [  # a range within one page: the request's path and query
    pytest.param(
        "binance", "BTCUSDT", BINANCE_M, BINANCE_M + 90 * MINUTE_MS, "/api/v3/klines",
        f"symbol=BTCUSDT&interval=1m&startTime={BINANCE_M}&endTime=1747704599999&limit=1000",
        id="binance-one-page-inclusive-end",
    ),
    pytest.param(
        "bitstamp", "BTCUSD", BITSTAMP_M, BITSTAMP_M + 3 * MINUTE_MS, "/api/v2/ohlc/btcusd/",
        "step=60&start=1656868680&end=1656868800&limit=3&exclude_current_candle=true",
        id="bitstamp-exactly-the-page-minutes",
    ),
    pytest.param(
        "bybit", "BTCUSDT", BYBIT_M, BYBIT_M + 90 * MINUTE_MS, "/v5/market/kline",
        f"category=spot&symbol=BTCUSDT&interval=1&start={BYBIT_M}"
        f"&end={BYBIT_M + 90 * MINUTE_MS - 1}&limit=1000",
        id="bybit-inclusive-end",
    ),
    pytest.param(
        "coinbase", "BTC-USD", COINBASE_M, COINBASE_M + 90 * MINUTE_MS,
        "/products/BTC-USD/candles",
        "granularity=60&start=2017-12-17T00:00:00Z&end=2017-12-17T01:29:59Z",
        id="coinbase-inclusive-end",
    ),
    pytest.param(
        "kraken", "BTC-USDT", KRAKEN_M, 1762778580000, "/0/public/OHLC",
        "pair=XBTUSDT&interval=1&since=1762777019",
        id="kraken-since-a-second-early",
    ),
    pytest.param(
        "okx", "BTC-USDT", OKX_M, OKX_M + 30 * MINUTE_MS, "/api/v5/market/history-candles",
        f"instId=BTC-USDT&bar=1m&after={OKX_M + 30 * MINUTE_MS - 1}&before={OKX_M - 1}&limit=100",
        id="okx-bounded-on-both-sides",
    ),
]  # fmt: skip
LONG_RANGES = [  # a range of many pages: where the first page ends
    ("bitstamp", "BTCUSD", BITSTAMP_M, 5000,
     {"end": str((BITSTAMP_M + 999 * MINUTE_MS) // 1000), "limit": "1000"}),
    ("bybit", "BTCUSDT", BYBIT_M, 5000, {"end": str(BYBIT_M + 1000 * MINUTE_MS - 1)}),
    ("coinbase", "BTC-USD", COINBASE_M, 1000, {"end": "2017-12-17T04:59:59Z"}),  # 300 minutes
    ("okx", "BTC-USDT", OKX_M, 1000, {"after": str(OKX_M + 100 * MINUTE_MS - 1)}),
]  # fmt: skip
PAGE_BARS = {"binance": 1000, "bitstamp": 1000, "bybit": 1000, "coinbase": 300, "kraken": 720,
             "okx": 100}  # fmt: skip


@pytest.mark.parametrize(("venue", "symbol", "start_ms", "end_ms", "path", "query"), BARS_REQUESTS)
def test_bars_request_of_a_short_range(
    venue: str, symbol: str, start_ms: int, end_ms: int, path: str, query: str
) -> None:
    request = get_exchange(venue).bars_request(symbol, start_ms, end_ms)
    assert request.path == path
    assert request.params == dict(parse_qsl(query, strict_parsing=True))


@pytest.mark.parametrize(("venue", "symbol", "start_ms", "minutes", "params"), LONG_RANGES)
def test_bars_request_of_a_long_range_asks_for_one_page(
    venue: str, symbol: str, start_ms: int, minutes: int, params: dict[str, str]
) -> None:
    request = get_exchange(venue).bars_request(symbol, start_ms, start_ms + minutes * MINUTE_MS)
    assert {key: request.params[key] for key in params} == params


@pytest.mark.parametrize("venue", names())
def test_a_page_holds_the_venues_bars(venue: str) -> None:
    assert get_exchange(venue).max_bars_per_request == PAGE_BARS[venue]


# --- rules ----------------------------------------------------------------------------------

RULES = {
    "binance": VenueRules(
        rest_weight=RestWeight("X-MBX-USED-WEIGHT-1M", 6000, 2), max_client_messages_per_s=5
    ),
    "bitstamp": VenueRules(keepalive_message=BITSTAMP_KEEPALIVE, keepalive_interval_s=20.0),
    "bybit": VenueRules(keepalive_message=BYBIT_KEEPALIVE, keepalive_interval_s=20.0),
    "coinbase": VenueRules(sequential_trade_ids=True, omits_quiet_minutes=True),
    "kraken": VenueRules(sequential_trade_ids=True, bars_depth_minutes=720),
    "okx": VenueRules(keepalive_message=OKX_KEEPALIVE, keepalive_interval_s=20.0),
}


@pytest.mark.parametrize("venue", names())
def test_the_venues_rules(venue: str) -> None:
    assert get_exchange(venue).rules == RULES[venue]
