"""The Coinbase, Kraken, OKX, Bybit and Bitstamp dialects of the replay exchange, without sockets.

Each dialect must speak its venue as the venue does: the frame shapes of the real recordings
(``tests/fixtures/ws/coinbase_pro.jsonl``) or, where no recording exists (Kraken v2), of the
venue's documentation (``kraken_v2_doc.jsonl``) and a real REST response
(``kraken_rest_ohlc_XBTUSDT.json``); acknowledgements and error frames; heartbeats; and the REST
page limits and quirks the streamer must cope with. Where it matters, the streamer's own parser
reads what the dialect wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from streamer.core.bars import BarAggregator
from streamer.core.exchanges.base import FrameError, Reconnect, TradeIdMark
from streamer.core.exchanges.bitstamp import BITSTAMP
from streamer.core.exchanges.bitstamp import KEEPALIVE_MESSAGE as BITSTAMP_KEEPALIVE
from streamer.core.exchanges.bybit import BYBIT
from streamer.core.exchanges.bybit import KEEPALIVE_MESSAGE as BYBIT_KEEPALIVE
from streamer.core.exchanges.coinbase import COINBASE
from streamer.core.exchanges.kraken import KRAKEN
from streamer.core.exchanges.okx import KEEPALIVE_MESSAGE as OKX_KEEPALIVE
from streamer.core.exchanges.okx import OKX
from streamer.core.paging import RestPager, read_page
from streamer.core.retry import Throttled
from streamer.core.timefmt import iso_seconds
from streamer.core.types import MINUTE_MS, Bar, Side, Trade
from streamer.replay.bitstamp import BitstampDialect
from streamer.replay.bitstamp import trade_json as bitstamp_trade_json
from streamer.replay.bybit import CONN_ID as BYBIT_CONN_ID
from streamer.replay.bybit import BybitDialect
from streamer.replay.bybit import trade_json as bybit_trade_json
from streamer.replay.cli import WS_PATHS, add_arguments, venue_symbol
from streamer.replay.coinbase import MAX_CANDLES, CoinbaseDialect, match_json
from streamer.replay.data import (
    Source,
    TradeRow,
    bundled_kline_paths,
    bundled_trade_paths,
    load_source,
)
from streamer.replay.dialect import MALFORMED_VARIANTS
from streamer.replay.faults import Faults, SentStats
from streamer.replay.kraken import OHLC_ROWS, KrakenDialect, trade_json
from streamer.replay.limits import RequestRate, VenueRules, WeightPerMinute
from streamer.replay.okx import OkxDialect
from streamer.replay.okx import trade_json as okx_trade_json
from streamer.replay.rest import RestLogEntry, answer, match_route
from streamer.replay.routes import RestReply, RestRequest
from streamer.replay.server import ReplayServer
from streamer.replay.timeline import Timeline

WS = Path(__file__).resolve().parent.parent / "fixtures" / "ws"
CLOCK = 1_700_000_000.123456  # the wall clock of Kraken's time_in / time_out


def fixture_frames(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (WS / name).read_text().splitlines() if line]


def trades_source(recording: str, symbol: str, minutes: int | None = None) -> Source:
    source = load_source(next(p for p in bundled_trade_paths() if recording in p.name), symbol)
    return (
        source if minutes is None else dataclasses.replace(source, klines=source.klines[:minutes])
    )


def kline_source(symbol: str) -> Source:
    return load_source(next(p for p in bundled_kline_paths() if "BTCUSDT" in p.name), symbol)


def parse_error(exchange: Any, text: str) -> FrameError:
    """What the streamer's parser of ``exchange`` raises on ``text``."""
    with pytest.raises(FrameError) as raised:
        exchange.parse(text)
    return raised.value


def bars_error(exchange: Any, symbol: str, body: Any) -> FrameError:
    """What the streamer's bars parser raises on the REST answer ``body``."""
    with pytest.raises(FrameError) as raised:
        exchange.parse_bars(symbol, json.dumps(body).encode())
    return raised.value


def rest(handler: Any, source: Source, now_ms: int, query: str, **path: str) -> tuple[int, Any]:
    timeline = Timeline([source], None, False)
    reply: RestReply = handler(RestRequest(query, now_ms, timeline, path))
    return reply.status, json.loads(json.dumps(reply.body))  # as the client would read it


# --- Coinbase: the feed -----------------------------------------------------------------------

COINBASE_FRAMES = fixture_frames("coinbase_pro.jsonl")
RECORDED_MATCH = next(f for f in COINBASE_FRAMES if f["type"] == "match")
RECORDED_SUBSCRIPTIONS = [f for f in COINBASE_FRAMES if f["type"] == "subscriptions"]


coinbase = functools.partial(CoinbaseDialect, ("BTC-USD", "ETH-USD"))


def test_coinbase_match_has_the_recorded_shape() -> None:
    for _, text in sample_trades("coinbase"):
        assert list(json.loads(text)) == list(RECORDED_MATCH)  # same fields, same order


def test_coinbase_subscribe_is_acknowledged_with_every_subscription_of_the_connection() -> None:
    dialect = coinbase()
    first = dialect.control(
        '{"type":"subscribe","product_ids":["BTC-USD"],"channels":["matches"]}', set(), 0
    )
    assert first.subscribe == ["matches:BTC-USD"]
    [ack] = first.replies
    assert json.loads(ack) == {
        "type": "subscriptions",
        "channels": [{"name": "matches", "product_ids": ["BTC-USD"]}],
    }
    # the second lists the first's too, as the recorded acknowledgements do
    second = dialect.control(
        '{"type":"subscribe","channels":[{"name":"heartbeat","product_ids":["ETH-USD","BTC-USD"]}]}',
        set(first.subscribe),
        0,
    )
    assert sorted(second.subscribe) == ["heartbeat:BTC-USD", "heartbeat:ETH-USD"]
    listed = json.loads(second.replies[0])
    assert listed == {
        "type": "subscriptions",
        "channels": [
            {"name": "matches", "product_ids": ["BTC-USD"]},
            {"name": "heartbeat", "product_ids": ["BTC-USD", "ETH-USD"]},
        ],
    }
    recorded_shape = {(k, type(v)) for f in RECORDED_SUBSCRIPTIONS for k, v in f.items()}
    assert {(k, type(v)) for k, v in listed.items()} <= recorded_shape
    assert (
        {tuple(c) for c in listed["channels"]}
        == {("name", "product_ids")}
        == {tuple(c) for f in RECORDED_SUBSCRIPTIONS for c in f["channels"]}
    )
    assert COINBASE.parse(second.replies[0]) == []
    # what the streamer sends is accepted as it is
    [plan] = COINBASE.connections("ws://x", ["BTC-USD"], ["matches"])
    accepted = dialect.control(plan.subscribe[0], set(), 0)
    assert sorted(accepted.subscribe) == ["heartbeat:BTC-USD", "matches:BTC-USD"]


def test_coinbase_unsubscribe_answers_what_is_left() -> None:
    streams = {"matches:BTC-USD", "matches:ETH-USD", "heartbeat:BTC-USD"}
    outcome = coinbase().control(
        '{"type":"unsubscribe","product_ids":["ETH-USD"],"channels":["matches"]}', streams, 0
    )
    assert outcome.unsubscribe == ["matches:ETH-USD"]
    assert json.loads(outcome.replies[0])["channels"] == [
        {"name": "matches", "product_ids": ["BTC-USD"]},
        {"name": "heartbeat", "product_ids": ["BTC-USD"]},
    ]
    everything = coinbase().control('{"type":"unsubscribe","channels":["heartbeat"]}', streams, 0)
    assert everything.unsubscribe == ["heartbeat:BTC-USD"]


def test_coinbase_heartbeats_one_per_subscribed_product_with_its_newest_trade_id() -> None:
    dialect = coinbase()
    streams = {"matches:BTC-USD", "matches:ETH-USD", "heartbeat:BTC-USD", "heartbeat:ETH-USD"}
    now = 1_582_329_601_000
    beats = dialect.heartbeats(streams, now, 0, {"BTC-USD": 42377943, "ETH-USD": 7})
    assert [json.loads(b) for b in beats] == [
        {
            "type": "heartbeat",
            "sequence": 42377943,
            "last_trade_id": 42377943,
            "product_id": "BTC-USD",
            "time": "2020-02-22T00:00:01.000000Z",
        },
        {
            "type": "heartbeat",
            "sequence": 7,
            "last_trade_id": 7,
            "product_id": "ETH-USD",
            "time": "2020-02-22T00:00:01.000000Z",
        },
    ]
    # the documented field order (docs.cdp.coinbase.com, as in test_exchange_coinbase)
    assert list(json.loads(beats[0])) == ["type", "sequence", "last_trade_id", "product_id", "time"]
    assert COINBASE.parse(beats[0]) == [TradeIdMark("BTC-USD", 42377943, now)]
    # matches alone: no heartbeats, however quiet the product
    assert dialect.heartbeats({"matches:BTC-USD"}, now, 10**6, {"BTC-USD": 1}) == []
    assert dialect.heartbeat_every_ms == 1000


def test_coinbase_serves_the_feed_at_the_root_only() -> None:
    assert coinbase().open("/", "") is not None and coinbase().open("", "") is not None
    assert coinbase().open("/ws", "") is None


# --- Coinbase: candles ------------------------------------------------------------------------

CANDLES = CoinbaseDialect(["BTC-USDT"]).rest_routes["/products/{product_id}/candles"].handler


def candles(source: Source, now_ms: int, **params: str) -> tuple[int, Any]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return rest(CANDLES, source, now_ms, query, product_id=source.symbol)


def test_coinbase_candles_serve_at_most_300_minutes_a_request() -> None:
    source = kline_source("BTC-USDT")
    first = source.first_open_ms
    now = first + 400 * MINUTE_MS
    # 300 minutes, end inclusive: what the streamer asks for
    end = first + MAX_CANDLES * MINUTE_MS - 1000
    status, rows = candles(
        source, now, granularity="60", start=iso_seconds(first), end=iso_seconds(end)
    )
    assert status == 200 and len(rows) == MAX_CANDLES
    request = COINBASE.bars_request("BTC-USDT", first, first + 400 * MINUTE_MS)
    status, rows = candles(source, now, **request.params)
    assert status == 200 and len(rows) == MAX_CANDLES
    # one minute more is refused whole, with Coinbase's message
    status, body = candles(
        source,
        now,
        granularity="60",
        start=iso_seconds(first),
        end=iso_seconds(first + MAX_CANDLES * MINUTE_MS),
    )
    assert status == 400
    assert body == {
        "message": "granularity too small for the requested time range. Count of aggregations "
        "requested exceeds 300"
    }
    bars_error(COINBASE, "BTC-USDT", body)


def test_coinbase_candles_are_newest_first_with_the_recorded_values() -> None:
    source = kline_source("BTC-USDT")
    first = source.first_open_ms
    status, rows = candles(
        source,
        first + 100 * MINUTE_MS,
        granularity="60",
        start=iso_seconds(first),
        end=iso_seconds(first + 9 * MINUTE_MS),
    )
    assert status == 200
    assert [r[0] for r in rows] == [(first + i * MINUTE_MS) // 1000 for i in range(9, -1, -1)]
    for row, kline in zip(rows[::-1], source.klines[:10], strict=True):
        want = [kline.low, kline.high, kline.open, kline.close, kline.volume]
        assert row[1:] == [float(x) for x in want]  # [time, low, high, open, close, volume]
    bars = COINBASE.parse_bars("BTC-USDT", json.dumps(rows).encode())
    assert [b.open_time_ms for b in bars] == [first + i * MINUTE_MS for i in range(10)]


def test_coinbase_candles_leave_out_minutes_without_trades() -> None:
    source = trades_source("kraken", "BTC-USDT")  # a thin market: many minutes have no trade
    first = source.first_open_ms
    status, rows = candles(
        source,
        source.end_ms,
        granularity="60",
        start=iso_seconds(first),
        end=iso_seconds(first + 59 * MINUTE_MS),
    )
    traded = [k.open_time_ms // 1000 for k in source.klines[:60] if k.trades]
    assert status == 200 and len(traded) < 50
    assert sorted(r[0] for r in rows) == traded


def test_coinbase_candles_include_the_running_minute_as_far_as_it_traded() -> None:
    source = kline_source("BTC-USDT")  # four trades a minute, at +0, +15, +30 and +45 s
    minute = source.first_open_ms + 20 * MINUTE_MS
    now = minute + 31_000
    status, rows = candles(
        source,
        now,
        granularity="60",
        start=iso_seconds(minute - MINUTE_MS),
        end=iso_seconds(minute),
    )
    assert status == 200 and [r[0] for r in rows] == [minute // 1000, minute // 1000 - 60]
    trades = source.minute_trades(20)[:3]  # those before now
    assert rows[0][5] == float(sum(Decimal(t.qty) for t in trades))
    assert rows[0][5] < float(source.klines[20].volume)


def test_coinbase_candles_ignore_start_or_end_alone_and_refuse_bad_requests() -> None:
    source = kline_source("BTC-USDT")
    now = source.first_open_ms + 1000 * MINUTE_MS + 5_000
    current = now - now % MINUTE_MS
    status, rows = candles(source, now, granularity="60", start=iso_seconds(source.first_open_ms))
    assert status == 200 and len(rows) == MAX_CANDLES  # the most recent 300, start ignored
    assert rows[0][0] == current // 1000
    assert candles(source, now, granularity="61") == (400, {"message": "Unsupported granularity"})
    assert candles(source, now)[0] == 400
    assert candles(source, now, granularity="300")[0] == 400  # served: 60 only
    status, _ = candles(
        source,
        now,
        granularity="60",
        start=iso_seconds(current),
        end=iso_seconds(current - MINUTE_MS),
    )
    assert status == 400
    missing = rest(CANDLES, source, now, "granularity=60", product_id="BTC-XYZ")
    assert missing == (404, {"message": "NotFound"})


# --- the REST shell's routing and throttling (pure) ------------------------------------------


@dataclasses.dataclass
class Exchange:
    timeline: Timeline
    now_ms: int
    faults: Faults = dataclasses.field(default_factory=Faults)
    sent: SentStats = dataclasses.field(default_factory=SentStats)
    rest_log: list[RestLogEntry] = dataclasses.field(default_factory=list)
    rules: VenueRules = dataclasses.field(default_factory=VenueRules)
    weight: WeightPerMinute | None = None
    request_rates: list[RequestRate] = dataclasses.field(default_factory=list)

    def clock_ms(self) -> int:
        return self.now_ms


def test_rest_routes_match_path_segments_and_throttle_with_the_venues_body() -> None:
    source = kline_source("BTC-USDT")
    exchange = Exchange(Timeline([source], None, False), source.first_open_ms + 10 * MINUTE_MS)
    dialect = CoinbaseDialect(["BTC-USDT"])
    routes = dialect.rest_routes
    assert match_route(routes, "/products/BTC-USDT/candles") == (
        routes["/products/{product_id}/candles"],
        {"product_id": "BTC-USDT"},
    )
    assert match_route(routes, "/products/BTC-USDT/candles/x") is None
    assert match_route(routes, "/products//candles") is None
    ok = answer(dialect, exchange, "/products/BTC-USDT/candles", "granularity=60")
    assert ok.status == 200 and len(ok.body) == 10
    exchange.faults.rest_429, exchange.faults.retry_after_s = 1, 7
    throttled = answer(dialect, exchange, "/products/BTC-USDT/candles", "granularity=60")
    assert (throttled.status, throttled.body) == (429, {"message": "Public rate limit exceeded"})
    assert throttled.headers == {"Retry-After": "7"}
    assert answer(dialect, exchange, "/nope", "").status == 404
    kraken = KrakenDialect(["BTC-USDT"])
    exchange.faults.rest_418 = 1
    banned = answer(kraken, exchange, "/0/public/OHLC", "pair=XBTUSDT")
    assert (banned.status, banned.body) == (418, {"error": ["EGeneral:Too many requests"]})


# --- Kraken: the feed (v2) --------------------------------------------------------------------

KRAKEN_DOC = fixture_frames("kraken_v2_doc.jsonl")
DOC_ACK, DOC_SNAPSHOT, DOC_UPDATE, DOC_HEARTBEAT, DOC_STATUS, DOC_UNSUBSCRIBED = KRAKEN_DOC


kraken = functools.partial(KrakenDialect, ("BTC-USD", "ETH-USD"), wall_time=lambda: CLOCK)


def test_kraken_greets_a_v2_connection_with_its_status_and_serves_no_v1() -> None:
    opening = kraken().open("/v2", "")
    assert opening is not None and opening.streams == []
    [status] = [json.loads(text) for text in opening.greeting]
    assert list(status) == list(DOC_STATUS)
    assert list(status["data"][0]) == list(DOC_STATUS["data"][0])
    assert status["data"][0]["system"] == "online" and status["type"] == "update"
    assert KRAKEN.parse(opening.greeting[0]) == []
    assert kraken().open("/", "") is None  # v1 is not served


def test_kraken_acknowledges_each_symbol_of_a_subscribe() -> None:
    dialect = kraken()
    [plan] = KRAKEN.connections("ws://x/v2", ["BTC-USD", "ETH-USD"], ["trade"])
    message = json.loads(plan.subscribe[0]) | {"req_id": 7}
    outcome = dialect.control(json.dumps(message), set(), 0)
    assert outcome.subscribe == ["trade:BTC/USD", "trade:ETH/USD"]
    acks = [json.loads(r) for r in outcome.replies]
    assert [a["result"] for a in acks] == [
        {"channel": "trade", "snapshot": False, "symbol": "BTC/USD"},
        {"channel": "trade", "snapshot": False, "symbol": "ETH/USD"},
    ]
    for ack in acks:
        assert set(ack) == set(DOC_ACK) | {"req_id"}
        assert (ack["method"], ack["success"], ack["req_id"]) == ("subscribe", True, 7)
        assert ack["time_in"] == ack["time_out"] == "2023-11-14T22:13:20.123000Z"
    assert all(KRAKEN.parse(r) == [] for r in outcome.replies)


def test_kraken_answers_a_bad_symbol_with_an_error_and_subscribes_the_rest() -> None:
    outcome = kraken().control(
        '{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/XYZ","BTC/USD"]}}',
        set(),
        0,
    )
    assert outcome.subscribe == ["trade:BTC/USD"]
    error, ack = (json.loads(r) for r in outcome.replies)
    assert error == {
        "error": "Currency pair not supported BTC/XYZ",
        "method": "subscribe",
        "success": False,
        "symbol": "BTC/XYZ",
        "time_in": "2023-11-14T22:13:20.123000Z",
        "time_out": "2023-11-14T22:13:20.123000Z",
    }
    assert ack["result"] == {"channel": "trade", "snapshot": True, "symbol": "BTC/USD"}
    error = parse_error(KRAKEN, outcome.replies[0])
    assert error.reason == "exchange_error"


def test_kraken_ping_and_unsubscribe() -> None:
    dialect = kraken()
    [pong] = dialect.control('{"method":"ping","req_id":101}', set(), 0).replies
    assert json.loads(pong) == {
        "method": "pong",
        "req_id": 101,
        "time_in": "2023-11-14T22:13:20.123000Z",
        "time_out": "2023-11-14T22:13:20.123000Z",
    }
    assert KRAKEN.parse(pong) == []
    gone = dialect.control(
        '{"method":"unsubscribe","params":{"channel":"trade","symbol":["BTC/USD","ETH/USD"]}}',
        {"trade:BTC/USD"},
        0,
    )
    assert gone.unsubscribe == ["trade:BTC/USD"]
    ack, missing = (json.loads(r) for r in gone.replies)
    assert set(ack) == set(DOC_UNSUBSCRIBED)
    assert ack["result"] == DOC_UNSUBSCRIBED["result"] | {"symbol": "BTC/USD"}
    assert (missing["success"], missing["error"]) == (False, "Subscription Not Found")


def test_kraken_heartbeats_a_subscribed_connection_after_a_quiet_second() -> None:
    dialect = kraken()
    streams = {"trade:BTC/USD"}
    assert [json.loads(b) for b in dialect.heartbeats(streams, 0, 1000, {})] == [DOC_HEARTBEAT]
    assert dialect.heartbeats(streams, 0, 999, {}) == []  # a trade went out this second
    assert dialect.heartbeats(set(), 0, 10**6, {}) == []  # nothing subscribed yet
    assert KRAKEN.parse(dialect.heartbeats(streams, 0, 1000, {})[0]) == []
    assert dialect.heartbeat_every_ms == 1000


def test_kraken_trade_has_the_v2_shape() -> None:
    samples = sample_trades("kraken")
    assert samples
    for row, text in samples:
        parsed = json.loads(text)
        assert [list(parsed), list(parsed["data"][0])] == [
            list(DOC_UPDATE),
            list(DOC_UPDATE["data"][0]),
        ]
        assert parsed["data"][0]["price"] == float(row.price)  # a JSON number, as in v2


# --- Kraken: REST -----------------------------------------------------------------------------

REAL_OHLC = json.loads((WS / "kraken_rest_ohlc_XBTUSDT.json").read_text())


def ohlc(source: Source, now_ms: int, query: str) -> tuple[int, Any]:
    return rest(KrakenDialect([source.symbol]).rest_ohlc, source, now_ms, query)


def test_kraken_ohlc_serves_only_the_720_most_recent_minutes_the_last_one_not_final() -> None:
    source = kline_source("BTC-USDT")  # four trades a minute, at +0, +15, +30 and +45 s
    current = source.first_open_ms + 1000 * MINUTE_MS
    now = current + 31_000
    status, body = ohlc(source, now, "pair=XBTUSDT&interval=1&since=0")
    assert status == 200 and body["error"] == []
    rows = body["result"]["XBTUSDT"]
    # whatever since asks: the 720 most recent, oldest first
    assert len(rows) == OHLC_ROWS
    assert [r[0] for r in rows] == [
        (current - i * MINUTE_MS) // 1000 for i in range(OHLC_ROWS - 1, -1, -1)
    ]
    # the last row is the running minute, as far as it has traded: three of its four trades
    index = source.index_at(current)
    last = rows[-1]
    assert last[7] == 3 and source.klines[index].trades == 4
    assert Decimal(last[6]) == sum(Decimal(t.qty) for t in source.minute_trades(index)[:3])
    # "last" is the newest closed minute, the row before it
    assert body["result"]["last"] == rows[-2][0]
    # the closed rows are the recorded klines
    for row in rows[:-1]:
        kline = source.klines[source.index_at(row[0] * 1000)]
        assert row[1:5] == [kline.open, kline.high, kline.low, kline.close]
        assert Decimal(row[6]) == Decimal(kline.volume) and row[7] == kline.trades
    # the streamer keeps the closed ones only
    bars = KRAKEN.parse_bars("BTC-USDT", json.dumps(body).encode())
    assert len(bars) == OHLC_ROWS - 1 and bars[-1].open_time_ms == current - MINUTE_MS


def test_kraken_ohlc_rows_have_the_real_responses_shape() -> None:
    source = trades_source("kraken", "BTC-USDT")
    status, body = ohlc(source, source.first_open_ms + 30 * MINUTE_MS, "pair=XBTUSDT&interval=1")
    assert status == 200
    real = REAL_OHLC["result"]["XBTUSDT"]
    assert list(body) == list(REAL_OHLC) and list(body["result"]) == list(REAL_OHLC["result"])
    assert {tuple(type(c) for c in r) for r in body["result"]["XBTUSDT"]} == {
        tuple(type(c) for c in r) for r in real
    }
    # a minute without trades: flat at the previous close, as Kraken serves it
    flat = next(r for r in real if r[7] == 0)
    rows = body["result"]["XBTUSDT"]
    quiet = [r for r in rows if r[7] == 0]
    assert quiet and all(r[5:] == flat[5:] for r in quiet)
    by_time = {r[0]: r for r in rows}
    for row in quiet:
        before = by_time.get(row[0] - 60)
        if before is not None:
            assert row[1] == row[2] == row[3] == row[4] == before[4]


def test_kraken_ohlc_volume_is_the_exact_decimal_sum() -> None:
    # 2025-11-10 17:47: sixteen real Kraken trades; a float fsum would say 0.20853481999999998
    source = trades_source("kraken", "BTC-USDT")
    minute = 1762796820000
    trades = source.minute_trades(source.index_at(minute))
    assert len(trades) == 16 and repr(math.fsum(float(t.qty) for t in trades)) != "0.20853482"
    status, body = ohlc(source, minute + 5 * MINUTE_MS, f"pair=XBTUSDT&since={minute // 1000 - 1}")
    assert status == 200
    row = body["result"]["XBTUSDT"][0]
    assert (row[0], row[6], row[7]) == (minute // 1000, "0.20853482", 16)


def test_kraken_ohlc_since_pairs_and_errors() -> None:
    source = kline_source("BTC-USD")
    current = source.first_open_ms + 100 * MINUTE_MS
    since = (current - 5 * MINUTE_MS) // 1000
    status, body = ohlc(source, current, f"pair=XBTUSD&interval=1&since={since}")
    # keyed by Kraken's internal name; rows after since, the running minute last
    assert [r[0] for r in body["result"]["XXBTZUSD"]] == [since + 60 * i for i in range(1, 6)]
    status, internal = ohlc(source, current, f"pair=XXBTZUSD&since={since}")
    assert internal == body
    for query, error in [
        ("pair=BTCUSD", "EQuery:Unknown asset pair"),
        ("pair=XBTUSD&interval=2", "EGeneral:Invalid arguments:interval"),
        ("pair=XBTUSD&since=x", "EGeneral:Invalid arguments:since"),
        ("interval=1", "EGeneral:Invalid arguments:pair"),
    ]:
        status, body = ohlc(source, current, query)
        assert (status, body) == (200, {"error": [error]})  # Kraken errors are HTTP 200
        bars_error(KRAKEN, "BTC-USD", body)


def test_kraken_trades_page_after_since_up_to_now() -> None:
    source = trades_source("kraken", "BTC-USDT")
    dialect = KrakenDialect(["BTC-USDT"])
    first = source.trades[0]
    now = source.trades[30].ts_ms  # trades[30] and later have not been sent yet
    status, body = rest(dialect.rest_trades, source, now, "pair=XBTUSDT&since=0&count=10")
    rows = body["result"]["XBTUSDT"]
    assert [r[6] for r in rows] == [t.trade_id for t in source.trades[:10]]
    assert rows[0] == [first.price, first.qty, first.ts_ms / 1000, "b", "m", "", first.trade_id]
    assert body["result"]["last"] == str(source.trades[9].ts_ms * 1_000_000)
    status, body = rest(
        dialect.rest_trades, source, now, f"pair=XBTUSDT&since={body['result']['last']}"
    )
    assert status == 200
    later = [r[6] for r in body["result"]["XBTUSDT"]]
    # after the tenth trade's time: those of the same millisecond are past too
    assert later and later[0] > source.trades[9].trade_id
    assert later[-1] == max(t.trade_id for t in source.trades if t.ts_ms < now)


# --- the command line -------------------------------------------------------------------------


def test_replay_server_command_speaks_the_venue_asked_for() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).venue == "binance"
    assert parser.parse_args(["--venue", "kraken"]).venue == "kraken"
    with pytest.raises(SystemExit):
        parser.parse_args(["--venue", "nasdaq"])
    # off Binance, the bundled Binance klines go by the venue's symbol
    assert [venue_symbol(v, "BTCUSDT") for v in ("binance", "coinbase", "kraken")] == [
        "BTCUSDT",
        "BTC-USDT",
        "BTC-USDT",
    ]
    server = ReplayServer([kline_source("BTC-USDT")], dialect="kraken")
    assert isinstance(server.dialect, KrakenDialect) and server.dialect.pairs["XBTUSDT"]
    assert isinstance(ReplayServer([kline_source("BTC-USD")], dialect="coinbase").dialect,
                      CoinbaseDialect)  # fmt: skip
    with pytest.raises(ValueError, match="unknown venue"):
        ReplayServer([kline_source("BTC-USD")], dialect="nasdaq")


# --- OKX, Bybit, Bitstamp: what they share ----------------------------------------------------


def serve_pages(dialect: Any, exchange: Any, source: Source, start: int, end: int, now: int) -> Any:
    """The streamer's ``RestPager`` over ``dialect``'s REST, as the backfill drives it: the bars
    and the number of pages."""
    timeline = Timeline([source], None, False)
    pager = RestPager(exchange, source.symbol, start, end)
    while (request := pager.next_request()) is not None:
        found = match_route(dialect.rest_routes, request.path)
        assert found is not None, request.path
        route, path_params = found
        query = urlencode(request.params)
        reply: RestReply = route.handler(RestRequest(query, now, timeline, path_params))
        body = json.dumps(reply.body).encode()
        pager.accept(read_page(exchange, source.symbol, reply.status, body, None, "replay"))
    return pager.bars(), pager.pages


def aggregated(source: Source, exchange: str) -> dict[int, Bar]:
    """The pure aggregator's bar of every minute with trades."""
    agg = BarAggregator(exchange, grace_ms=0)
    bars: list[Bar] = []
    for _, trades in source.minutes():
        for t in trades:
            bars += agg.add(parsed_trade(exchange, source.symbol, t, t.trade_id))
    bars += agg.flush()
    return {b.open_time_ms: b for b in bars}


def ohlcv(bar: Bar) -> tuple[float, ...]:
    return (bar.open, bar.high, bar.low, bar.close, bar.volume)


def parsed_trade(exchange: str, symbol: str, row: TradeRow, trade_id: int | str) -> Trade:
    """What the streamer's parser should make of ``row`` (ids: the venue's type)."""
    taker: Side = "sell" if row.buyer_is_maker else "buy"
    return Trade(exchange, symbol, trade_id, row.ts_ms, float(row.price), float(row.qty), taker)


# --- OKX: the feed ----------------------------------------------------------------------------

OKX_FRAMES = fixture_frames("okx.jsonl")
RECORDED_OKX_TRADE = next(
    f for f in OKX_FRAMES if "data" in f and f["arg"] == {"channel": "trades", "instId": "BTC-USDT"}
)
RECORDED_OKX_ACK = next(f for f in OKX_FRAMES if f.get("event") == "subscribe")


okx = functools.partial(OkxDialect, ("BTC-USDT", "ETH-USDT"))


def test_okx_trade_push_has_the_recorded_shape() -> None:
    for _, text in sample_trades("okx"):
        frame = json.loads(text)
        assert list(frame) == list(RECORDED_OKX_TRADE)
        assert frame["arg"] == RECORDED_OKX_TRADE["arg"]
        [trade] = frame["data"]
        assert list(trade) == list(RECORDED_OKX_TRADE["data"][0])
        assert all(isinstance(v, str) for v in trade.values())  # every value a string


def test_okx_acknowledges_each_arg_and_refuses_the_unknown_ones() -> None:
    dialect = okx()
    [plan] = OKX.connections("ws://x", ["BTC-USDT", "ETH-USDT"], ["trades"])
    outcome = dialect.control(plan.subscribe[0], set(), 0)
    assert outcome.subscribe == ["trades:BTC-USDT", "trades:ETH-USDT"]
    acks = [json.loads(r) for r in outcome.replies]
    assert acks == [
        {"event": "subscribe", "arg": {"channel": "trades", "instId": s}}
        for s in ("BTC-USDT", "ETH-USDT")
    ]
    assert [list(a) for a in acks] == [list(RECORDED_OKX_ACK)] * 2  # the recorded layout
    assert all(OKX.parse(r) == [] for r in outcome.replies)
    # an unknown instrument or channel: an error for that arg, the others still taken
    mixed = dialect.control(
        '{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-XYZ"},'
        '{"channel":"books","instId":"BTC-USDT"},{"channel":"trades","instId":"BTC-USDT"}]}',
        set(),
        0,
    )
    assert mixed.subscribe == ["trades:BTC-USDT"]
    unknown, books, ack = (json.loads(r) for r in mixed.replies)
    assert unknown == {
        "event": "error",
        "code": "60018",
        "msg": "Wrong URL or channel:trades,instId:BTC-XYZ doesn't exist.",
    }
    assert books["code"] == "60018" and ack["event"] == "subscribe"
    error = parse_error(OKX, mixed.replies[0])
    assert error.reason == "exchange_error" and "60018" in error.detail


def test_okx_unsubscribe_ping_idle_close_and_service_notice() -> None:
    dialect = okx()
    gone = dialect.control(
        '{"op":"unsubscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}',
        {"trades:BTC-USDT"},
        0,
    )
    assert gone.unsubscribe == ["trades:BTC-USDT"]
    assert json.loads(gone.replies[0]) == {
        "event": "unsubscribe",
        "arg": {"channel": "trades", "instId": "BTC-USDT"},
    }
    # the feed's keepalive is answered with the text pong, which parses to nothing
    assert dialect.control(OKX_KEEPALIVE, set(), 0).replies == ["pong"]
    assert dialect.control(b"ping", set(), 0).replies == ["pong"]
    assert OKX.parse("pong") == []
    # what the server enforces: 30 s without a client message, closed with 4004
    assert dialect.rules.client_idle_timeout_s == 30.0 > OKX.rules.keepalive_interval_s
    assert dialect.rules.idle_close == (4004, "No data received in 30s")
    assert OKX.parse(dialect.shutdown_notice(0)) == [Reconnect("service_upgrade")]
    assert dialect.open("/ws/v5/public", "") is not None
    assert dialect.open("/ws/v5/business", "") is None and dialect.open("/", "") is None


# --- OKX: candles -----------------------------------------------------------------------------

HISTORY = OkxDialect(["BTC-USDT"]).rest_routes["/api/v5/market/history-candles"].handler
RECENT = OkxDialect(["BTC-USDT"]).rest_routes["/api/v5/market/candles"].handler


def okx_candles(handler: Any, source: Source, now_ms: int, **params: str) -> tuple[int, Any]:
    return rest(handler, source, now_ms, urlencode({"instId": source.symbol, **params}))


def test_okx_history_candles_are_newest_first_the_running_minute_unconfirmed() -> None:
    source = kline_source("BTC-USDT")  # four trades a minute, at +0, +15, +30 and +45 s
    current = source.first_open_ms + 150 * MINUTE_MS
    now = current + 31_000
    status, body = okx_candles(HISTORY, source, now, bar="1m")
    assert status == 200 and (body["code"], body["msg"]) == ("0", "")
    rows = body["data"]
    # at most 100 rows, the newest first: the running minute, then the closed ones
    assert [int(r[0]) for r in rows] == [current - i * MINUTE_MS for i in range(100)]
    assert [r[8] for r in rows] == ["0"] + ["1"] * 99
    assert all(isinstance(c, str) for r in rows for c in r) and {len(r) for r in rows} == {9}
    index = source.index_at(current)
    trades = source.minute_trades(index)[:3]  # those before now
    assert Decimal(rows[0][5]) == sum(Decimal(t.qty) for t in trades)
    for row in rows[1:]:
        kline = source.klines[source.index_at(int(row[0]))]
        assert row[1:6] == [kline.open, kline.high, kline.low, kline.close, kline.volume]
        assert row[6] == row[7]  # volCcy and volCcyQuote: the quote volume, for spot
    # the streamer keeps the confirmed rows, oldest first
    bars = OKX.parse_bars("BTC-USDT", json.dumps(body).encode())
    assert [b.open_time_ms for b in bars] == [int(r[0]) for r in rows[:0:-1]]


def test_okx_history_candles_page_between_before_and_after_exclusive() -> None:
    source = kline_source("BTC-USDT")
    first = source.first_open_ms
    now = first + 1000 * MINUTE_MS
    before, after = first + 10 * MINUTE_MS, first + 20 * MINUTE_MS
    status, body = okx_candles(HISTORY, source, now, after=str(after), before=str(before))
    assert status == 200
    assert [int(r[0]) for r in body["data"]] == [first + i * MINUTE_MS for i in range(19, 10, -1)]
    # a range wider than the page: the NEWEST rows of it
    _, body = okx_candles(HISTORY, source, now, after=str(first + 500 * MINUTE_MS),
                          before=str(first - 1), limit="30")  # fmt: skip
    assert [int(r[0]) for r in body["data"]] == [first + i * MINUTE_MS for i in range(499, 469, -1)]
    # what the streamer asks for gets the page's minutes
    request = OKX.bars_request("BTC-USDT", first, first + 1000 * MINUTE_MS)
    _, body = okx_candles(HISTORY, source, now, **request.params)
    assert [int(r[0]) for r in body["data"]] == [first + i * MINUTE_MS for i in range(99, -1, -1)]


def test_okx_candles_serve_300_of_the_latest_1440_minutes_and_errors_are_codes() -> None:
    source = kline_source("BTC-USDT")
    current = source.first_open_ms + 3000 * MINUTE_MS
    status, body = okx_candles(RECENT, source, current, limit="300")
    assert len(body["data"]) == 300 and int(body["data"][0][0]) == current
    old = str(current - 1400 * MINUTE_MS)
    status, body = okx_candles(RECENT, source, current, after=old, limit="300")
    assert len(body["data"]) == 39  # the minutes older than 1,440 are not served
    for handler, params, code in [
        (HISTORY, {"limit": "101"}, "51000"),
        (RECENT, {"limit": "301"}, "51000"),
        (HISTORY, {"bar": "5m"}, "51000"),
        (HISTORY, {"after": "x"}, "51000"),
        (HISTORY, {"instId": "BTC-XYZ"}, "51001"),
        (HISTORY, {"instId": ""}, "50014"),
    ]:
        status, body = okx_candles(handler, source, current, **params)
        assert (status, body["code"], body["data"]) == (200, code, [])  # OKX errors: HTTP 200
        assert bars_error(OKX, "BTC-USDT", body).reason == "exchange_error"


def test_okx_quiet_minutes_are_flat_rows_at_the_close_before() -> None:
    source = trades_source("kraken", "BTC-USDT")
    now = source.first_open_ms + 60 * MINUTE_MS
    _, body = okx_candles(HISTORY, source, now, after=str(now - MINUTE_MS))
    rows = {int(r[0]): r for r in body["data"]}
    quiet = [k.open_time_ms for k in source.klines[:58] if not k.trades]
    assert len(quiet) > 10
    for minute in quiet:
        if minute - MINUTE_MS in rows:
            close = rows[minute - MINUTE_MS][4]
            assert rows[minute][1:6] == [close, close, close, close, "0"]


# --- Bybit: the feed --------------------------------------------------------------------------

[BYBIT_DOC] = fixture_frames("bybit_v5_doc.jsonl")


bybit = functools.partial(BybitDialect, ("BTCUSDT", "ETHUSDT"))


def test_bybit_trade_push_has_the_documented_shape() -> None:
    for row, text in sample_trades("bybit"):
        frame = json.loads(text)
        assert list(frame) == list(BYBIT_DOC)
        [trade] = frame["data"]
        # the documented fields in their order, without L (perpetuals and futures only)
        assert list(trade) == [k for k in BYBIT_DOC["data"][0] if k != "L"]
        assert {k: type(v) for k, v in trade.items()} == {
            k: type(v) for k, v in BYBIT_DOC["data"][0].items() if k != "L"
        }
        assert trade["i"] == str(row.trade_id)  # spot ids: digits, as text


def bybit_success(ret_msg: str, op: str) -> dict[str, Any]:
    """Bybit's answer to a request it took."""
    return {"success": True, "ret_msg": ret_msg, "conn_id": BYBIT_CONN_ID, "op": op}


def test_bybit_acknowledges_what_the_streamer_subscribes() -> None:
    symbols = [f"S{i}USDT" for i in range(12)]
    dialect = BybitDialect(symbols)
    [plan] = BYBIT.connections("ws://x", symbols, ["publicTrade"])
    assert len(plan.subscribe) == 2  # 10 topics, then 2: what Bybit spot allows
    streams: set[str] = set()
    for message in plan.subscribe:
        outcome = dialect.control(message, streams, 0)
        [ack] = outcome.replies
        assert json.loads(ack) == bybit_success("subscribe", "subscribe")
        assert BYBIT.parse(ack) == []
        streams |= set(outcome.subscribe)
    assert streams == {f"publicTrade.{s}" for s in symbols}


def test_bybit_answers_the_keepalive_ping_and_unsubscribe() -> None:
    dialect = bybit()
    [pong] = dialect.control(BYBIT_KEEPALIVE, set(), 0).replies
    assert json.loads(pong) == bybit_success("pong", "ping")
    assert BYBIT.parse(pong) == []
    [echoed] = dialect.control('{"op":"ping","req_id":"7"}', set(), 0).replies
    assert json.loads(echoed)["req_id"] == "7"
    gone = dialect.control(
        '{"op":"unsubscribe","args":["publicTrade.BTCUSDT"]}', {"publicTrade.BTCUSDT"}, 0
    )
    assert gone.unsubscribe == ["publicTrade.BTCUSDT"]
    assert json.loads(gone.replies[0])["success"] is True
    assert dialect.open("/v5/public/spot", "") is not None
    assert dialect.open("/v5/public/linear", "") is None


# --- Bybit: klines ----------------------------------------------------------------------------

KLINE = BybitDialect(["BTCUSDT"]).rest_routes["/v5/market/kline"].handler


def bybit_kline(source: Source, now_ms: int, **params: str) -> tuple[int, Any]:
    query = {"category": "spot", "symbol": source.symbol, "interval": "1", **params}
    return rest(KLINE, source, now_ms, urlencode(query))


def test_bybit_kline_is_newest_first_the_running_minute_unfinished() -> None:
    source = kline_source("BTCUSDT")  # four trades a minute, at +0, +15, +30 and +45 s
    current = source.first_open_ms + 300 * MINUTE_MS
    now = current + 31_000
    status, body = bybit_kline(source, now)
    assert status == 200 and (body["retCode"], body["retMsg"]) == (0, "OK")
    assert list(body) == ["retCode", "retMsg", "result", "retExtInfo", "time"]
    result = body["result"]
    assert (result["symbol"], result["category"]) == ("BTCUSDT", "spot")
    rows = result["list"]
    # 200 rows by default, the newest first, the running minute at the head and unmarked
    assert [int(r[0]) for r in rows] == [current - i * MINUTE_MS for i in range(200)]
    assert {len(r) for r in rows} == {7} and all(isinstance(c, str) for r in rows for c in r)
    running = source.klines[source.index_at(current)]
    assert Decimal(rows[0][5]) == sum(
        Decimal(t.qty) for t in source.minute_trades(source.index_at(current))[:3]
    )
    assert Decimal(rows[0][5]) < Decimal(running.volume)  # a partial bar, nothing says so
    for row in rows[1:]:
        kline = source.klines[source.index_at(int(row[0]))]
        assert row[1:6] == [kline.open, kline.high, kline.low, kline.close, kline.volume]
    bars = BYBIT.parse_bars("BTCUSDT", json.dumps(body).encode())
    assert [b.open_time_ms for b in bars] == [int(r[0]) for r in rows[::-1]]


def test_bybit_kline_bounds_are_inclusive_and_a_long_range_gets_its_newest_minutes() -> None:
    source = kline_source("BTCUSDT")
    first = source.first_open_ms
    now = first + 3000 * MINUTE_MS
    status, body = bybit_kline(source, now, start=str(first), end=str(first + 5 * MINUTE_MS))
    assert status == 200
    assert [int(r[0]) for r in body["result"]["list"]] == [
        first + i * MINUTE_MS for i in range(5, -1, -1)
    ]
    _, body = bybit_kline(
        source, now, start=str(first), end=str(first + 2000 * MINUTE_MS), limit="1000"
    )
    assert [int(r[0]) for r in body["result"]["list"]] == [
        first + i * MINUTE_MS for i in range(2000, 1000, -1)
    ]
    request = BYBIT.bars_request("BTCUSDT", first, first + 2000 * MINUTE_MS)
    _, body = rest(KLINE, source, now, urlencode(request.params))
    assert [int(r[0]) for r in body["result"]["list"]][-1] == first
    assert len(body["result"]["list"]) == 1000


def test_bybit_kline_errors_are_retcodes() -> None:
    source = kline_source("BTCUSDT")
    now = source.first_open_ms + 100 * MINUTE_MS
    for params, ret_msg in [
        ({"symbol": "BTCXYZ"}, "Not supported symbols"),
        ({"category": "linear"}, "Not supported symbols"),
        ({"category": ""}, "Invalid category"),
        ({"interval": "2"}, "Invalid period!"),
        ({"limit": "1001"}, "Invalid parameter: limit"),
        ({"start": "x"}, "Invalid parameter: start"),
    ]:
        status, body = bybit_kline(source, now, **params)
        assert (status, body["retCode"], body["retMsg"], body["result"]) == (
            200, 10001, ret_msg, {}
        )  # fmt: skip
        assert bars_error(BYBIT, "BTCUSDT", body).reason == "exchange_error"


# --- Bitstamp: the feed -----------------------------------------------------------------------

BITSTAMP_FRAMES = fixture_frames("bitstamp.jsonl")
RECORDED_BITSTAMP_TRADE = next(f for f in BITSTAMP_FRAMES if f["event"] == "trade")
RECORDED_BITSTAMP_ACK = next(
    f for f in BITSTAMP_FRAMES if f["event"] == "bts:subscription_succeeded"
)


bitstamp = functools.partial(BitstampDialect, ("BTCUSD", "ETHUSD"))


def test_bitstamp_trade_has_the_recorded_shape() -> None:
    recorded = RECORDED_BITSTAMP_TRADE["data"]
    for row, text in sample_trades("bitstamp"):
        frame = json.loads(text)
        assert list(frame) == list(RECORDED_BITSTAMP_TRADE)
        data = frame["data"]
        assert list(data) == list(recorded)
        assert {k: type(v) for k, v in data.items() if k != "price"} == {
            k: type(v) for k, v in recorded.items() if k != "price"
        }
        assert frame["channel"] == "live_trades_btcusd" and frame["event"] == "trade"
        assert Decimal(data["amount_str"]) == Decimal(row.qty)
        assert len(data["amount_str"].partition(".")[2]) == 8  # as recorded: 0.07920000
        # the taker's order is the newer one, as in the recording
        taker, maker = ("sell", "buy") if data["type"] else ("buy", "sell")
        assert data[f"{taker}_order_id"] > data[f"{maker}_order_id"]


def test_bitstamp_acknowledges_each_subscription_as_recorded() -> None:
    dialect = bitstamp()
    [plan] = BITSTAMP.connections("ws://x", ["BTCUSD", "ETHUSD"], ["live_trades"])
    streams: set[str] = set()
    for message in plan.subscribe:
        outcome = dialect.control(message, streams, 0)
        [ack] = (json.loads(r) for r in outcome.replies)
        assert list(ack) == list(RECORDED_BITSTAMP_ACK)
        assert (ack["event"], ack["data"]) == ("bts:subscription_succeeded", {})
        assert BITSTAMP.parse(outcome.replies[0]) == []
        streams |= set(outcome.subscribe)
    assert streams == {"live_trades_btcusd", "live_trades_ethusd"}
    gone = dialect.control(
        '{"event":"bts:unsubscribe","data":{"channel":"live_trades_btcusd"}}', streams, 0
    )
    assert gone.unsubscribe == ["live_trades_btcusd"]
    assert json.loads(gone.replies[0]) == {
        "event": "bts:unsubscription_succeeded",
        "channel": "live_trades_btcusd",
        "data": {},
    }


def test_bitstamp_answers_the_heartbeat_and_announces_reconnects() -> None:
    dialect = bitstamp()
    [reply] = dialect.control(BITSTAMP_KEEPALIVE, set(), 0).replies
    assert json.loads(reply) == {
        "event": "bts:heartbeat",
        "channel": "",
        "data": {"status": "success"},
    }
    assert BITSTAMP.parse(reply) == []
    assert BITSTAMP.parse(dialect.shutdown_notice(0)) == [Reconnect("request_reconnect")]
    assert dialect.rules.max_connection_age_s == 90 * 86_400
    assert dialect.open("/", "") is not None and dialect.open("/v1", "") is None


# --- Bitstamp: OHLC ---------------------------------------------------------------------------

BITSTAMP_OHLC = BitstampDialect(["BTCUSDT"]).rest_routes["/api/v2/ohlc/{pair}/"].handler
CRYPTO_CANDLES_ROW = ["high", "timestamp", "volume", "low", "close", "open"]  # that response's


def bitstamp_ohlc(source: Source, now_ms: int, **params: str) -> tuple[int, Any]:
    query = urlencode({"step": "60", **params})
    return rest(BITSTAMP_OHLC, source, now_ms, query, pair=source.symbol.lower())


def test_bitstamp_ohlc_is_oldest_first_with_the_running_minute_unless_excluded() -> None:
    source = kline_source("BTCUSDT")  # four trades a minute, at +0, +15, +30 and +45 s
    current = source.first_open_ms + 300 * MINUTE_MS
    now = current + 31_000
    status, body = bitstamp_ohlc(source, now, limit="100")
    assert status == 200 and list(body) == ["data"] and body["data"]["pair"] == "BTC/USDT"
    rows = body["data"]["ohlc"]
    assert [int(r["timestamp"]) * 1000 for r in rows] == [
        current - i * MINUTE_MS for i in range(99, -1, -1)
    ]
    assert {tuple(r) for r in rows} == {tuple(CRYPTO_CANDLES_ROW)}
    assert all(isinstance(v, str) for r in rows for v in r.values())
    running = source.minute_trades(source.index_at(current))[:3]
    assert Decimal(rows[-1]["volume"]) == sum(Decimal(t.qty) for t in running)
    for row in rows[:-1]:
        kline = source.klines[source.index_at(int(row["timestamp"]) * 1000)]
        assert [row[k] for k in ("open", "high", "low", "close")] == [
            kline.open, kline.high, kline.low, kline.close
        ]  # fmt: skip
        assert Decimal(row["volume"]) == Decimal(kline.volume)
        assert len(row["volume"].partition(".")[2]) >= 8
    status, body = bitstamp_ohlc(source, now, limit="100", exclude_current_candle="true")
    assert int(body["data"]["ohlc"][-1]["timestamp"]) * 1000 == current - MINUTE_MS


def test_bitstamp_ohlc_end_wins_over_start() -> None:
    source = kline_source("BTCUSDT")
    first = source.first_open_ms
    now = first + 3000 * MINUTE_MS

    def times(**params: str) -> list[int]:
        status, body = bitstamp_ohlc(source, now, **params)
        assert status == 200
        return [(int(r["timestamp"]) * 1000 - first) // MINUTE_MS for r in body["data"]["ohlc"]]

    start, end = str(first // 1000), str((first + 500 * MINUTE_MS) // 1000)
    assert times(start=start, end=end, limit="5") == [496, 497, 498, 499, 500]  # end wins
    assert times(start=start, limit="5") == [0, 1, 2, 3, 4]
    assert times(end=end, limit="3") == [498, 499, 500]
    # what the streamer asks for is the same page whichever bound is used
    request = BITSTAMP.bars_request("BTCUSDT", first, first + 2000 * MINUTE_MS)
    params = {k: v for k, v in request.params.items() if k != "step"}
    assert times(**params) == list(range(1000))


def test_bitstamp_ohlc_errors() -> None:
    source = kline_source("BTCUSDT")
    now = source.first_open_ms + 100 * MINUTE_MS
    for params, status_reason in [
        ({"limit": "0"}, (400, "Invalid limit parameter.")),
        ({"limit": "1001"}, (400, "Invalid limit parameter.")),
        ({}, (400, "Invalid limit parameter.")),
        ({"limit": "5", "step": "61"}, (400, "Invalid step parameter.")),
        ({"limit": "5", "end": "x"}, (400, "Invalid end parameter.")),
    ]:
        status, body = bitstamp_ohlc(source, now, **params)
        assert (status, body) == (status_reason[0], {"status": "error", "reason": status_reason[1]})
        bars_error(BITSTAMP, "BTCUSDT", body)
    status, body = rest(BITSTAMP_OHLC, source, now, "step=60&limit=5", pair="btcxyz")
    assert (status, body) == (404, {"status": "error", "reason": "Invalid currency pair."})


# --- the command line, new venues -------------------------------------------------------------


def test_replay_server_command_speaks_okx_bybit_and_bitstamp() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for venue in ("okx", "bybit", "bitstamp"):
        assert parser.parse_args(["--venue", venue]).venue == venue
    assert [venue_symbol(v, "BTCUSDT") for v in ("okx", "bybit", "bitstamp")] == [
        "BTC-USDT",
        "BTCUSDT",
        "BTCUSDT",
    ]
    assert WS_PATHS["okx"] == "/ws/v5/public" and WS_PATHS["bybit"] == "/v5/public/spot"
    for venue, cls, symbol in [
        ("okx", OkxDialect, "BTC-USDT"),
        ("bybit", BybitDialect, "BTCUSDT"),
        ("bitstamp", BitstampDialect, "BTCUSDT"),
    ]:
        server = ReplayServer([kline_source(symbol)], dialect=venue)
        assert isinstance(server.dialect, cls)
    okx_server = ReplayServer([kline_source("BTC-USDT")], dialect="okx")
    assert okx_server.client_idle_timeout_s == 30.0
    short = ReplayServer([kline_source("BTC-USDT")], dialect="okx", client_idle_timeout_s=1.0)
    assert short.client_idle_timeout_s == 1.0
    assert ReplayServer([kline_source("BTCUSDT")], dialect="bybit").client_idle_timeout_s == 600.0


@pytest.mark.parametrize(
    ("dialect", "exchange", "symbol", "path"),
    [
        (OkxDialect(["BTC-USDT"]), OKX, "BTC-USDT", "/api/v5/market/history-candles"),
        (BybitDialect(["BTCUSDT"]), BYBIT, "BTCUSDT", "/v5/market/kline"),
        (BitstampDialect(["BTCUSDT"]), BITSTAMP, "BTCUSDT", "/api/v2/ohlc/btcusdt/"),
    ],
    ids=["okx", "bybit", "bitstamp"],
)
def test_okx_bybit_bitstamp_throttle_their_bars_route_with_retry_after(
    dialect: Any, exchange: Any, symbol: str, path: str
) -> None:
    source = kline_source(symbol)
    replay = Exchange(Timeline([source], None, False), source.first_open_ms + 10 * MINUTE_MS)
    replay.faults.rest_429, replay.faults.retry_after_s = 1, 7
    request = exchange.bars_request(symbol, source.first_open_ms, replay.now_ms)
    assert request.path == path
    throttled = answer(dialect, replay, path, urlencode(request.params))
    assert (throttled.status, throttled.headers) == (429, {"Retry-After": "7"})
    with pytest.raises(Throttled) as raised:
        body = json.dumps(throttled.body).encode()
        read_page(exchange, symbol, throttled.status, body, "7", "replay")
    assert raised.value.retry_after_s == 7
    ok = answer(dialect, replay, path, urlencode(request.params))
    assert ok.status == 200
    bars = read_page(exchange, symbol, 200, json.dumps(ok.body).encode(), None, "replay")
    assert len(bars) == 10
    assert answer(dialect, replay, "/nope", "").status == 404


# --- every venue: what the dialects share -----------------------------------------------------


# venue -> how its dialect encodes a trade, the recording and symbol of the sample trades
SAMPLES: dict[str, tuple[Any, str, str]] = {
    "coinbase": (match_json, "tardis", "BTC-USD"),
    "kraken": (trade_json, "kraken", "BTC-USDT"),
    "okx": (okx_trade_json, "tardis", "BTC-USDT"),
    "bybit": (bybit_trade_json, "tardis", "BTCUSDT"),
    "bitstamp": (bitstamp_trade_json, "tardis", "BTCUSD"),
}


def sample_trades(venue: str) -> list[tuple[TradeRow, str]]:
    """Recorded trades, each with the frame the venue's dialect sends for it: the first 20 of
    a minute; on Kraken, every trade of 30 minutes of its own (thin) recording."""
    encode, recording, symbol = SAMPLES[venue]
    if venue == "kraken":
        source = trades_source(recording, symbol, 30)
        rows = [t for _, trades in source.minutes() for t in trades]
    else:
        rows = trades_source(recording, symbol, 1).minute_trades(0)[:20]
    return [(row, encode(symbol, row)) for row in rows]


@pytest.mark.parametrize("venue", SAMPLES)
def test_a_trade_frame_parses_back_exactly(venue: str) -> None:
    exchange = VENUES[venue][1]
    _, _, symbol = SAMPLES[venue]
    for row, text in sample_trades(venue):
        trade_id = str(row.trade_id) if venue == "bybit" else row.trade_id  # Bybit's: text
        assert exchange.parse(text) == [parsed_trade(venue, symbol, row, trade_id)]


@pytest.mark.parametrize(
    ("exchange", "dialect", "encode", "recording", "symbol"),
    [
        (COINBASE, coinbase, match_json, "tardis", "BTC-USD"),
        (KRAKEN, kraken, trade_json, "kraken", "BTC-USD"),
        (OKX, okx, okx_trade_json, "tardis", "BTC-USDT"),
        (BYBIT, bybit, bybit_trade_json, "tardis", "BTCUSDT"),
        (BITSTAMP, bitstamp, bitstamp_trade_json, "tardis", "BTCUSD"),
    ],
    ids=["coinbase", "kraken", "okx", "bybit", "bitstamp"],
)
def test_malformed_variants_are_what_the_parser_rejects(
    exchange: Any, dialect: Any, encode: Any, recording: str, symbol: str
) -> None:
    frame = encode(symbol, trades_source(recording, symbol, 1).minute_trades(0)[0])
    reasons = []
    for variant in range(MALFORMED_VARIANTS):
        reasons.append(parse_error(exchange, dialect().malformed(frame, variant)).reason)
    assert reasons == ["malformed_json", "bad_type", "bad_value"]


@pytest.mark.parametrize(
    ("dialect", "exchange", "recording", "symbol", "minutes", "pages"),
    [
        # a range that reaches the running minute: its unconfirmed row is left out
        (OkxDialect, OKX, "tardis", "BTC-USDT", 110, 3),
        (BybitDialect, BYBIT, "tardis", "BTCUSDT", 110, None),
        (BitstampDialect, BITSTAMP, "kraken", "BTCUSDT", 200, 1),  # quiet minutes: flat rows
    ],
    ids=["okx", "bybit", "bitstamp"],
)
def test_backfill_over_the_dialect_gives_the_aggregators_closed_bars(
    dialect: Any, exchange: Any, recording: str, symbol: str, minutes: int, pages: int | None
) -> None:
    # the streamer's pager: every closed minute is exactly the pure aggregator's bar
    source = trades_source(recording, symbol)
    first = source.first_open_ms
    now = first + minutes * MINUTE_MS + 30_000
    closed = now - now % MINUTE_MS  # what the streamer asks for: closed minutes
    start, end = {
        "okx": (first, now + MINUTE_MS),
        "bybit": (0, closed),
        "bitstamp": (first, closed),
    }[exchange.name]
    bars, served = serve_pages(dialect([symbol]), exchange, source, start, end, now)
    expected = aggregated(source, exchange.name)  # quiet minutes flat at the close before, too
    assert [b.open_time_ms for b in bars] == sorted(t for t in expected if t < closed)
    assert all(ohlcv(b) == ohlcv(expected[b.open_time_ms]) for b in bars)
    if pages is not None:
        assert served == pages
    if exchange is BITSTAMP:
        assert sum(b.volume == 0 for b in bars) > 50
        assert len(bars) == (closed - first) // MINUTE_MS


BAD = "Bad subscription string."  # Bitstamp's answer to an unknown channel or pair
# venue -> requests it refuses whole: (id, the request, what its one reply says)
REFUSALS: dict[str, list[tuple[str, str, str]]] = {
    "coinbase": [
        ("product", '{"type":"subscribe","product_ids":["BTC-USD","BTC-XYZ"],'
         '"channels":["matches"]}', "BTC-XYZ is not a valid product"),
        ("channel", '{"type":"subscribe","product_ids":["BTC-USD"],'
         '"channels":["matches","tickers"]}', "tickers is not a valid channel"),
        ("no-channels", '{"type":"subscribe","product_ids":["BTC-USD"]}', "No channels provided"),
        ("no-products", '{"type":"subscribe","channels":["matches"]}',
         "No product ids provided for matches"),
        ("type", '{"type":"subscribes","product_ids":["BTC-USD"],"channels":["matches"]}',
         "Type has to be either subscribe or unsubscribe"),
        ("json", '{"type":"subscribe",', "malformed JSON"),
    ],
    "kraken": [
        ("channel", '{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"]}}',
         "Channel"),
        ("no-symbol", '{"method":"subscribe","params":{"channel":"trade"}}',
         "Missing field: symbol"),
        ("snapshot", '{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD"],'
         '"snapshot":"no"}}', "snapshot"),
        ("symbol-not-list",
         '{"method":"subscribe","params":{"channel":"trade","symbol":"BTC/USD"}}', "symbol"),
        ("params", '{"method":"subscribe"}', "Missing params"),
        ("method", '{"method":"sub"}', "Method not supported"),
        ("req_id", '{"method":"ping","req_id":"1"}', "req_id"),
        ("not-object", "[1]", "Invalid request"),
        ("json", '{"method":', "Invalid JSON"),
    ],
    "okx": [  # a request that is not valid: 60012
        ("json", '{"op":"subscribe"', "60012"),
        ("op", '{"op":"sub","args":[{"channel":"trades","instId":"BTC-USDT"}]}', "60012"),
        ("no-args", '{"op":"subscribe","args":[]}', "60012"),
        ("arg-not-object", '{"op":"subscribe","args":["trades"]}', "60012"),
        ("not-object", "[1]", "60012"),
    ],
    "bybit": [
        ("symbol", '{"op":"subscribe","args":["publicTrade.BTCUSDT","publicTrade.BTCXYZ"]}',
         "Invalid symbol :[publicTrade.BTCXYZ]"),
        ("topic", '{"op":"subscribe","args":["orderbook.1.BTCUSDT"]}',
         "Invalid symbol :[orderbook.1.BTCUSDT]"),
        ("too-many", json.dumps({"op": "subscribe", "args": ["publicTrade.BTCUSDT"] * 11}),
         "args size >10"),
        ("args", '{"op":"subscribe","args":"publicTrade.BTCUSDT"}', "Invalid args"),
        ("op", '{"op":"sub","args":["publicTrade.BTCUSDT"]}', "Invalid op: sub"),
        ("json", '{"op":', "Invalid request: not JSON"),
    ],
    "bitstamp": [
        ("pair", '{"event":"bts:subscribe","data":{"channel":"live_trades_btcxyz"}}', BAD),
        ("channel", '{"event":"bts:subscribe","data":{"channel":"order_book_btcusd"}}', BAD),
        ("no-channel", '{"event":"bts:subscribe","data":{}}', BAD),
        ("json", '{"event":"bts:subscribe",', "Incorrect JSON format."),
        ("not-object", '"bts:subscribe"', "Incorrect JSON format."),
        ("event", '{"event":"subscribe","data":{"channel":"live_trades_btcusd"}}', "Bad event."),
    ],
}  # fmt: skip
VENUES: dict[str, tuple[Any, Any]] = {  # venue -> its dialect, the streamer's parser
    "coinbase": (coinbase, COINBASE),
    "kraken": (kraken, KRAKEN),
    "okx": (okx, OKX),
    "bybit": (bybit, BYBIT),
    "bitstamp": (bitstamp, BITSTAMP),
}


def refusal(venue: str, said: str) -> dict[str, Any]:
    """The venue's error reply that says ``said`` (Kraken's and Bybit's: what it has to hold)."""
    return {
        "coinbase": {"type": "error", "message": "Failed to subscribe", "reason": said},
        "kraken": {"success": False},
        "okx": {"event": "error", "code": said},
        "bybit": {"success": False, "ret_msg": said, "conn_id": BYBIT_CONN_ID},
        "bitstamp": {"event": "bts:error", "channel": "", "data": {"code": None, "message": said}},
    }[venue]


@pytest.mark.parametrize(
    ("venue", "message", "said"),
    [
        pytest.param(v, m, said, id=f"{v}-{i}")
        for v, cases in REFUSALS.items()
        for i, m, said in cases
    ],
)
def test_a_bad_request_is_refused_whole_with_the_venues_error_frame(
    venue: str, message: str, said: str
) -> None:
    dialect, exchange = VENUES[venue]
    outcome = dialect().control(message, set(), 0)
    assert outcome.subscribe == [] and outcome.unsubscribe == []
    [reply] = outcome.replies
    body = json.loads(reply)
    expected = refusal(venue, said)
    if venue in ("coinbase", "bitstamp"):
        assert body == expected
    else:
        assert body.items() >= expected.items()
    if venue == "kraken":
        assert said in body["error"]
        return  # the streamer's parser need not read these
    error = parse_error(exchange, reply)
    assert error.reason == "exchange_error" and said in error.detail


# --- OKX and Bybit: their REST limits per IP --------------------------------------------------


def limited(dialect: Any, source: Source) -> Exchange:
    """A replay exchange that enforces ``dialect``'s rules, the clock at minute 300."""
    return Exchange(
        Timeline([source], None, False),
        source.first_open_ms + 300 * MINUTE_MS,
        rules=dialect.rules,
        request_rates=[RequestRate(rule) for rule in dialect.rules.request_limits],
    )


def test_okx_answers_429_50011_past_20_history_candles_and_40_candles_requests() -> None:
    dialect = OkxDialect(["BTC-USDT"])
    source = kline_source("BTC-USDT")
    replay = limited(dialect, source)
    query = urlencode({"instId": "BTC-USDT", "limit": "1"})
    for path, limit in [("/api/v5/market/history-candles", 20), ("/api/v5/market/candles", 40)]:
        statuses = [answer(dialect, replay, path, query).status for _ in range(limit)]
        assert statuses == [200] * limit  # well within 2 s: each limit counts on its own
        refused = answer(dialect, replay, path, query)
        assert (refused.status, refused.body) == (
            429, {"code": "50011", "msg": "Too Many Requests", "data": []}
        )  # fmt: skip
        with pytest.raises(Throttled):  # what the streamer's backfill waits on and retries
            read_page(OKX, "BTC-USDT", 429, json.dumps(refused.body).encode(), None, "replay")
    assert replay.sent.rest_throttled == 2


def test_bybit_answers_403_past_600_requests_in_5_s_and_bans_every_path() -> None:
    dialect = BybitDialect(["BTCUSDT"])
    replay = limited(dialect, kline_source("BTCUSDT"))
    statuses = [answer(dialect, replay, "/v5/market/time", "").status for _ in range(600)]
    assert statuses == [200] * 600
    refused = answer(dialect, replay, "/v5/market/time", "")
    assert (refused.status, refused.body) == (
        403,
        {"retCode": 403, "retMsg": "access too frequent"},
    )
    kline = "category=spot&symbol=BTCUSDT&interval=1&limit=1"
    assert answer(dialect, replay, "/v5/market/kline", kline).status == 403  # the IP is banned
    assert replay.sent.rest_throttled == 2
    [rule] = dialect.rules.request_limits
    assert (rule.per_s, rule.ban_s, rule.paths) == (5.0, 600.0, frozenset())  # 10 minutes
    # the streamer paces its backfill far inside the limit
    assert 5.0 / BYBIT.min_request_interval_s <= rule.limit


def test_okx_and_bybit_limit_connection_requests_above_the_feeds_pace() -> None:
    for dialect, exchange, limit, per_s in [
        (OkxDialect(["BTC-USDT"]), OKX, 3, 1.0),
        (BybitDialect(["BTCUSDT"]), BYBIT, 500, 300.0),
    ]:
        rule = dialect.rules.connection_limit
        assert (rule.limit, rule.per_s, rule.status) == (limit, per_s, 429)
        assert exchange.connect_attempts_per_s * per_s <= limit  # the feed's spacing keeps within
