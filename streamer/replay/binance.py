"""The Binance spot dialect of the replay exchange: streams, events, control messages, REST.

* WebSocket: raw streams ``/ws/<stream>[/<stream>...]`` and ``/ws`` (then ``SUBSCRIBE``),
  combined streams ``/stream?streams=a/b`` and ``/stream``; methods ``SUBSCRIBE``,
  ``UNSUBSCRIBE``, ``LIST_SUBSCRIPTIONS``, ``SET_PROPERTY``/``GET_PROPERTY`` (``combined``).
  Streams ``<sym>@trade``, ``<sym>@aggTrade`` (one aggTrade per trade: ``a = f = l`` = the trade
  id) and ``<sym>@kline_1m`` (the closed kline, ``x: true``, when its minute ends in replay
  time). The first trade of the bundled spot recording, as sent (one line)::

    {"e":"trade","E":1610064000278,"s":"BTCUSDT","t":553287559,"p":"39432.48",
     "q":"0.000263","T":1610064000278,"m":true,"M":true}

  and on a combined stream ``{"stream":"btcusdt@trade","data":{...}}``.
* REST: ``GET /api/v3/klines`` (Binance semantics and error codes, closed minutes only: the
  server never leaks the future), ``/api/v3/ping``, ``/api/v3/time`` (``serverTime`` is the
  replay clock).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Set
from typing import Any
from urllib.parse import parse_qs

from streamer.core.types import MINUTE_MS
from streamer.replay.data import Kline, TradeRow
from streamer.replay.dialect import Channels, ControlOutcome, DialectBase, Opening, dumps
from streamer.replay.limits import VenueRules
from streamer.replay.routes import RestReply, RestRequest, RestRoute

RAW = 0  # framings: bare events (/ws), or wrapped with their stream name (/stream)
COMBINED = 1
REST_DEFAULT_LIMIT = 500
REST_MAX_LIMIT = 1000

_STREAM_KINDS = {"trade": "trade", "aggtrade": "aggTrade", "kline_1m": "kline_1m"}


def normalize_stream(name: str) -> str:
    """``BTCUSDT@aggtrade`` -> ``btcusdt@aggTrade``; unknown kinds pass through lower-cased (they
    are accepted, like Binance does, and never carry data)."""
    symbol, _, kind = name.partition("@")
    return f"{symbol.lower()}@{_STREAM_KINDS.get(kind.lower(), kind.lower())}"


def trade_json(symbol: str, t: TradeRow) -> str:
    m = "true" if t.buyer_is_maker else "false"
    return (
        f'{{"e":"trade","E":{t.ts_ms},"s":"{symbol}","t":{t.trade_id},"p":"{t.price}",'
        f'"q":"{t.qty}","T":{t.ts_ms},"m":{m},"M":true}}'
    )


def agg_trade_json(symbol: str, t: TradeRow) -> str:
    m = "true" if t.buyer_is_maker else "false"
    return (
        f'{{"e":"aggTrade","E":{t.ts_ms},"s":"{symbol}","a":{t.trade_id},"p":"{t.price}",'
        f'"q":"{t.qty}","f":{t.trade_id},"l":{t.trade_id},"T":{t.ts_ms},"m":{m},"M":true}}'
    )


def kline_json(symbol: str, k: Kline) -> str:
    return (
        f'{{"e":"kline","E":{k.open_time_ms + MINUTE_MS},"s":"{symbol}","k":{{'
        f'"t":{k.open_time_ms},"T":{k.close_time_ms},"s":"{symbol}","i":"1m",'
        f'"f":{k.first_trade_id},"L":{k.last_trade_id},"o":"{k.open}","c":"{k.close}",'
        f'"h":"{k.high}","l":"{k.low}","v":"{k.volume}","n":{k.trades},"x":true,'
        f'"q":"{k.quote_volume}","V":"{k.taker_buy_volume}","Q":"{k.taker_buy_quote_volume}",'
        f'"B":"0"}}}}'
    )


def _error(request_id: Any, code: int, msg: str) -> ControlOutcome:
    return ControlOutcome([dumps({"error": {"code": code, "msg": msg}, "id": request_id})])


def _result(request_id: Any, result: Any = None, **changes: Any) -> ControlOutcome:
    return ControlOutcome([dumps({"result": result, "id": request_id})], **changes)


class _RestError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


def _int_param(params: dict[str, str], name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not text.isdigit() or len(text) > 20:
        raise _RestError(
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    return int(text)


def _klines(params: dict[str, str], request: RestRequest) -> list[list[int | str]]:
    symbol = params.get("symbol", "")
    if not symbol:
        raise _RestError(
            -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
        )
    timeline = request.timeline
    source = timeline.sources.get(symbol)
    if source is None:
        raise _RestError(-1121, "Invalid symbol.")
    if params.get("interval") != "1m":
        raise _RestError(-1120, "Invalid interval.")
    start, end = _int_param(params, "startTime"), _int_param(params, "endTime")
    limit = _int_param(params, "limit")
    limit = REST_DEFAULT_LIMIT if limit is None else limit
    if not 1 <= limit <= REST_MAX_LIMIT:
        raise _RestError(-1130, "Data sent for parameter 'limit' is not valid.")
    if start is not None and end is not None and start > end:
        raise _RestError(-1023, "Start time is greater than end time.")
    newest_open = request.now_ms - MINUTE_MS  # the last minute that has closed
    high = newest_open if end is None else min(end, newest_open)
    if start is not None:
        klines = list(itertools.islice(timeline.klines_up(source, start, high), limit))
    else:
        klines = list(itertools.islice(timeline.klines_down(source, high), limit))[::-1]
    return [k.rest_row() for k in klines]


def rest_klines(request: RestRequest) -> RestReply:
    """``GET /api/v3/klines``: startTime given, the oldest ``limit`` from it; otherwise the
    newest ``limit`` up to endTime (inclusive), oldest first."""
    try:
        return RestReply(200, _klines(request.params, request))
    except _RestError as exc:
        return RestReply(400, {"code": exc.code, "msg": exc.msg})


def rest_ping(request: RestRequest) -> RestReply:
    return RestReply(200, {})


def rest_time(request: RestRequest) -> RestReply:
    return RestReply(200, {"serverTime": request.now_ms})


_THROTTLED = {
    429: "Too many requests; current limit is 6000 request weight per 1 MINUTE.",
    418: "Way too many requests; IP banned.",
}


class BinanceDialect(DialectBase):
    """Binance spot, as ``stream.binance.com:9443`` and ``api.binance.com`` serve it."""

    rules = VenueRules(
        max_client_messages_per_s=5,
        max_connection_age_s=86_400.0,
        request_weights={"/api/v3/ping": 1, "/api/v3/time": 1, "/api/v3/klines": 2},
        weight_limit_per_minute=6000,
        weight_header="X-MBX-USED-WEIGHT-1M",
    )

    def shutdown_notice(self, now_ms: int) -> str:
        """Sent before the server goes away: clients should reconnect at once."""
        return dumps({"e": "serverShutdown", "E": now_ms})

    rest_routes: Mapping[str, RestRoute] = {
        "/api/v3/ping": RestRoute(rest_ping),
        "/api/v3/time": RestRoute(rest_time),
        "/api/v3/klines": RestRoute(rest_klines, throttled=True),
    }

    def channels(self, symbol: str) -> Channels:
        name = symbol.lower()
        return Channels(
            trades=((f"{name}@trade", trade_json), (f"{name}@aggTrade", agg_trade_json)),
            klines=((f"{name}@kline_1m", kline_json),),
        )

    def frames(self, stream: str, event: str) -> tuple[str, ...]:
        """(RAW, COMBINED)."""
        return event, f'{{"stream":"{stream}","data":{event}}}'

    def spoil(self, event: dict[str, Any], variant: int) -> None:
        """1 wrong types, 2 NaN price."""
        body: dict[str, Any] = event["k"] if event.get("e") == "kline" else event
        if variant == 1:
            for key in ("t", "a", "T", "E"):
                if key in body:
                    body[key] = "not-a-number"
            body["p" if "p" in body else "c"] = {"price": 1}
            body["q" if "q" in body else "v"] = None
        else:
            body["p" if "p" in body else "c"] = "NaN"

    def open(self, path: str, query: str) -> Opening | None:
        if path in ("/stream", "/stream/"):
            streams = [s for q in parse_qs(query).get("streams", []) for s in q.split("/") if s]
            return Opening([normalize_stream(s) for s in streams], COMBINED)
        if path == "/ws" or path.startswith("/ws/"):
            streams = [s for s in path.removeprefix("/ws").split("/") if s]
            return Opening([normalize_stream(s) for s in streams], RAW)
        return None

    def control(self, message: str | bytes, streams: Set[str], framing: int) -> ControlOutcome:
        """Answer one client request the way Binance's stream server does."""
        try:
            request = json.loads(message)
        except ValueError as exc:
            return _error(None, 3, f"Invalid JSON: {exc}")
        if not isinstance(request, dict):
            return _error(None, 2, "Invalid request: expected an object")
        request_id = request.get("id")
        params = request.get("params", [])
        method = request.get("method")
        if not isinstance(params, list):
            return _error(request_id, 1, "Invalid value type: expected an array for params")
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) and "@" in p for p in params):
                return _error(request_id, 2, "Invalid request: streams must be '<symbol>@<kind>'")
            names = [normalize_stream(p) for p in params]
            if method == "SUBSCRIBE":
                return _result(request_id, subscribe=names)
            return _result(request_id, unsubscribe=names)
        if method == "LIST_SUBSCRIPTIONS":
            return _result(request_id, sorted(streams))
        if method == "SET_PROPERTY" and len(params) == 2 and params[0] == "combined":
            if not isinstance(params[1], bool):
                return _error(request_id, 1, "Invalid value type: expected Boolean")
            return _result(request_id, framing=COMBINED if params[1] else RAW)
        if method == "GET_PROPERTY" and params == ["combined"]:
            return _result(request_id, framing == COMBINED)
        return _error(request_id, 2, f"Invalid request: unknown method or property {method!r}")

    def rest_not_found(self, path: str) -> RestReply:
        return RestReply(404, {"code": -1, "msg": f"Unknown path {path}"})

    def rest_throttled(self, status: int) -> RestReply:
        return RestReply(status, {"code": -1003, "msg": _THROTTLED[status]})


BINANCE = BinanceDialect()
