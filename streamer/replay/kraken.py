"""The Kraken spot dialect of the replay exchange: WebSocket API v2 and the public REST API.

* WebSocket ``/v2`` (``wss://ws.kraken.com/v2``). On connect the server sends its ``status``
  message; requests are ``{"method":"subscribe","params":{"channel":"trade","symbol":
  ["BTC/USD"],"snapshot":false},"req_id":1}``, ``unsubscribe`` likewise, and ``ping``. Every
  request is answered per symbol, in the shapes of Kraken's v2 documentation (no v2 recording
  exists; the v1 capture has none of them)::

    {"method":"subscribe","result":{"channel":"trade","snapshot":false,"symbol":"BTC/USD"},
     "success":true,"time_in":"2023-09-25T09:21:10.428340Z","time_out":"..."}
    {"error":"Currency pair not supported BTC/XYZ","method":"subscribe","success":false,
     "symbol":"BTC/XYZ","time_in":"...","time_out":"..."}
    {"method":"pong","req_id":101,"time_in":"...","time_out":"..."}

  ``time_in``/``time_out`` are wall-clock times, as Kraken's are. Each trade goes out as one
  ``update`` of the ``trade`` channel (price and qty JSON numbers, ``side`` the taker's)::

    {"channel":"trade","type":"update","data":[{"symbol":"MATIC/USD","side":"sell",
     "price":0.5117,"qty":40.0,"ord_type":"market","trade_id":4665906,
     "timestamp":"2023-09-25T07:49:37.708706Z"}]}

  A connection with a subscription gets ``{"channel":"heartbeat"}`` for every second of replay
  time in which it was sent nothing else. Channels served: ``trade`` and ``heartbeat``. Not
  replayed: the ``snapshot`` of recent trades (a request asking for it is acknowledged with
  ``"snapshot":true`` but none is sent); the order type, which the recordings lack, is
  ``market``.
* REST ``GET /0/public/OHLC?pair=XBTUSD&interval=1&since=<s>``: ``{"error":[],"result":
  {"XXBTZUSD":[[time_s,"open","high","low","close","vwap","volume",count],...],"last":s}}``,
  oldest first: only the 720 most recent minutes, whatever ``since`` asks (rows after
  ``since``), minutes without trades as flat rows, and as the last row the minute still running
  (trades so far: not final); ``last`` is the newest closed minute. ``GET /0/public/Trades``
  (``[price, volume, time, "b"|"s", "m", "", trade_id]`` rows after ``since``, at most 1000,
  ``last`` in ns), ``/0/public/Time``. Errors come as HTTP 200 with ``error`` filled
  (``EQuery:Unknown asset pair``), as Kraken answers them.

Symbols: the replayed symbol ``BTC-USD`` is ``BTC/USD`` on the WebSocket and ``XBTUSD`` (or its
internal name ``XXBTZUSD``) over REST, where Kraken keeps its legacy asset codes.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Mapping, Set
from decimal import Decimal
from email.utils import formatdate
from typing import Any

from streamer.core.types import MINUTE_MS
from streamer.replay.data import TradeRow
from streamer.replay.dialect import Channels, ControlOutcome, DialectBase, dumps, iso_micros
from streamer.replay.minutes import Minute, minutes, trades_after
from streamer.replay.routes import Refused, RestReply, RestRequest, RestRoute

TRADE = "trade"
HEARTBEAT = "heartbeat"
OHLC_ROWS = 720  # the most recent minutes OHLC serves, whatever ``since`` asks
TRADES_PAGE = 1000
INTERVALS = frozenset({1, 5, 15, 30, 60, 240, 1440, 10080, 21600})  # what Kraken accepts
_REST_ASSET = {"BTC": "XBT", "DOGE": "XDG"}
# pairs whose internal REST name is not their altname (Kraken's legacy X/Z-prefixed names)
_INTERNAL = {
    "XBTUSD": "XXBTZUSD",
    "XBTEUR": "XXBTZEUR",
    "XBTGBP": "XXBTZGBP",
    "XBTJPY": "XXBTZJPY",
    "XBTCAD": "XXBTZCAD",
    "ETHUSD": "XETHZUSD",
    "ETHEUR": "XETHZEUR",
    "ETHXBT": "XETHXXBT",
    "LTCUSD": "XLTCZUSD",
    "XRPUSD": "XXRPZUSD",
}


def wire_symbol(symbol: str) -> str:
    """``BTC-USD`` -> ``BTC/USD`` (WebSocket v2)."""
    return symbol.replace("-", "/")


def rest_names(symbol: str) -> tuple[str, str]:
    """``BTC-USD`` -> (``XBTUSD``, ``XXBTZUSD``): the REST altname and the internal name that
    keys the result."""
    base, _, quote = symbol.partition("-")
    alt = _REST_ASSET.get(base, base) + _REST_ASSET.get(quote, quote)
    return alt, _INTERNAL.get(alt, alt)


def stream(channel: str, wire: str = "") -> str:
    """The replay's name for a subscription: ``trade:BTC/USD``, ``heartbeat``."""
    return f"{channel}:{wire}" if wire else channel


def trade_json(symbol: str, t: TradeRow) -> str:
    side = "sell" if t.buyer_is_maker else "buy"
    return (
        f'{{"channel":"trade","type":"update","data":[{{"symbol":"{wire_symbol(symbol)}",'
        f'"side":"{side}","price":{t.price},"qty":{t.qty},"ord_type":"market",'
        f'"trade_id":{t.trade_id},"timestamp":"{iso_micros(t.ts_ms)}"}}]}}'
    )


HEARTBEAT_JSON = '{"channel":"heartbeat"}'


def _volume(value: Decimal) -> str:
    """Kraken's 8-decimal volume text, or every digit if the exact sum has more."""
    text = format(value, "f")
    decimals = len(text.partition(".")[2])
    return format(value, ".8f") if decimals <= 8 else text


def ohlc_row(minute: Minute) -> list[int | str]:
    vwap = format(minute.vwap.quantize(Decimal("0.00000001")).normalize(), "f")
    return [
        minute.open_time_ms // 1000,
        minute.open,
        minute.high,
        minute.low,
        minute.close,
        vwap if minute.trades else "0.0",
        _volume(minute.volume),
        minute.trades,
    ]


def _number(params: dict[str, str], name: str, default: float) -> float:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        return float(text)
    except ValueError:
        raise Refused(f"EGeneral:Invalid arguments:{name}") from None


class KrakenDialect(DialectBase):
    """Kraken spot, as ``ws.kraken.com/v2`` and ``api.kraken.com`` serve it, for ``symbols``
    (the replayed symbols, e.g. ``BTC-USD``). ``wall_time``: the clock of ``time_in`` and
    ``time_out``."""

    heartbeat_every_ms = 1000
    ws_path = "/v2"

    def __init__(self, symbols: Iterable[str], wall_time: Callable[[], float] = time.time) -> None:
        self.symbols = {wire_symbol(s): s for s in symbols}  # BTC/USD -> BTC-USD
        self.pairs: dict[str, tuple[str, str]] = {}  # REST name -> (symbol, internal name)
        for symbol in self.symbols.values():
            alt, internal = rest_names(symbol)
            self.pairs[alt] = self.pairs[internal] = (symbol, internal)
        self.wall_time = wall_time
        self._connection_ids = itertools.count(1)
        self.rest_routes: Mapping[str, RestRoute] = {
            "/0/public/Time": RestRoute(self.rest_time),
            "/0/public/OHLC": RestRoute(self.rest_ohlc, throttled=True),
            "/0/public/Trades": RestRoute(self.rest_trades, throttled=True),
        }

    # WebSocket

    def channels(self, symbol: str) -> Channels:
        return Channels(trades=((stream(TRADE, wire_symbol(symbol)), trade_json),), klines=())

    def spoil(self, event: dict[str, Any], variant: int) -> None:
        """1 wrong types (v1-style string price, string id), 2 a negative price (JSON has no
        NaN)."""
        trade = event["data"][0]
        if variant == 1:
            trade["price"] = str(trade["price"])
            trade["trade_id"] = "not-a-number"
        else:
            trade["price"] = -trade["price"]

    def greeting(self) -> tuple[str, ...]:
        """The ``status`` message that opens every connection."""
        status = {
            "channel": "status",
            "data": [
                {
                    "api_version": "v2",
                    "connection_id": next(self._connection_ids),
                    "system": "online",
                    "version": "2.0.0",
                }
            ],
            "type": "update",
        }
        return (dumps(status),)

    def control(self, message: str | bytes, streams: Set[str], framing: int) -> ControlOutcome:
        """``subscribe``, ``unsubscribe`` (one answer per symbol) and ``ping``."""
        time_in = iso_micros(int(self.wall_time() * 1000))
        try:
            request = json.loads(message)
        except ValueError:
            return ControlOutcome([self._failure(time_in, None, "EGeneral:Invalid JSON")])
        if not isinstance(request, dict):
            return ControlOutcome([self._failure(time_in, None, "EGeneral:Invalid request")])
        method = request.get("method")
        req_id = request.get("req_id")
        if req_id is not None and (not isinstance(req_id, int) or isinstance(req_id, bool)):
            return ControlOutcome([self._failure(time_in, method, "req_id must be an integer")])
        if method == "ping":
            return ControlOutcome([self._answer(time_in, {"method": "pong"}, req_id)])
        if method not in ("subscribe", "unsubscribe"):
            return ControlOutcome(
                [self._failure(time_in, method, f"Method not supported: {method}", req_id)]
            )
        params = request.get("params")
        if not isinstance(params, dict):
            return ControlOutcome([self._failure(time_in, method, "Missing params", req_id)])
        channel = params.get("channel")
        if channel == HEARTBEAT:
            reply = self._answer(
                time_in,
                {"method": method, "result": {"channel": HEARTBEAT}, "success": True},
                req_id,
            )
            if method == "subscribe":
                return ControlOutcome([reply], subscribe=[stream(HEARTBEAT)])
            return ControlOutcome([reply], unsubscribe=[stream(HEARTBEAT)])
        if channel != TRADE:
            return ControlOutcome(
                [self._failure(time_in, method, f"Channel not supported: {channel}", req_id)]
            )
        return self._trade_request(time_in, method, params, streams, req_id)

    def _trade_request(
        self,
        time_in: str,
        method: str,
        params: dict[str, Any],
        streams: Set[str],
        req_id: int | None,
    ) -> ControlOutcome:
        symbols: list[Any] = params.get("symbol") or []
        snapshot = params.get("snapshot", True)
        problem = None
        if not isinstance(symbols, list) or not symbols:
            problem = "Missing field: symbol"
        elif not all(isinstance(s, str) for s in symbols):
            problem = "symbol: expected a list of strings"
        elif not isinstance(snapshot, bool):
            problem = "snapshot: expected a boolean"
        if problem is not None:
            return ControlOutcome([self._failure(time_in, method, problem, req_id)])
        replies: list[str] = []
        names: list[str] = []
        for wire in symbols:
            name = stream(TRADE, wire)
            if wire not in self.symbols:
                error = f"Currency pair not supported {wire}"
            elif method == "unsubscribe" and name not in streams:
                error = "Subscription Not Found"
            else:
                result: dict[str, Any] = {"channel": TRADE, "symbol": wire}
                if method == "subscribe":
                    result = {"channel": TRADE, "snapshot": snapshot, "symbol": wire}
                reply = {"method": method, "result": result, "success": True}
                replies.append(self._answer(time_in, reply, req_id))
                names.append(name)
                continue
            replies.append(self._failure(time_in, method, error, req_id, symbol=wire))
        if method == "subscribe":
            return ControlOutcome(replies, subscribe=names)
        return ControlOutcome(replies, unsubscribe=names)

    def _answer(self, time_in: str, body: dict[str, Any], req_id: int | None) -> str:
        body = dict(body)
        if req_id is not None:
            body["req_id"] = req_id
        body["time_in"] = time_in
        body["time_out"] = iso_micros(int(self.wall_time() * 1000))
        return dumps(body)

    def _failure(
        self,
        time_in: str,
        method: Any,
        error: str,
        req_id: int | None = None,
        *,
        symbol: str | None = None,
    ) -> str:
        body: dict[str, Any] = {"error": error}
        if isinstance(method, str):
            body["method"] = method
        body["success"] = False
        if symbol is not None:
            body["symbol"] = symbol
        return self._answer(time_in, body, req_id)

    def heartbeats(
        self, streams: Set[str], now_ms: int, quiet_ms: int, last_trade_ids: Mapping[str, int]
    ) -> list[str]:
        """A heartbeat for a second without other messages, once anything is subscribed."""
        return [HEARTBEAT_JSON] if streams and quiet_ms >= self.heartbeat_every_ms else []

    # REST

    def _pair(self, params: dict[str, str]) -> tuple[str, str]:
        pair = params.get("pair", "")
        if not pair:
            raise Refused("EGeneral:Invalid arguments:pair")
        found = self.pairs.get(pair.upper())
        if found is None:
            raise Refused("EQuery:Unknown asset pair")
        return found

    def rest_ohlc(self, request: RestRequest) -> RestReply:
        """The 720 most recent minutes (the last one still running) after ``since``."""
        params = request.params
        try:
            symbol, internal = self._pair(params)
            interval = _number(params, "interval", 1)
            if interval not in INTERVALS:
                raise Refused("EGeneral:Invalid arguments:interval")
            if interval != 1:
                raise Refused("EGeneral:Invalid arguments:the replay serves interval=1 only")
            since_s = _number(params, "since", 0)
        except Refused as exc:
            return RestReply(200, {"error": [str(exc)]})
        now = request.now_ms
        current = now - now % MINUTE_MS
        source = request.timeline.sources[symbol]
        window = minutes(
            request.timeline, source, current - (OHLC_ROWS - 1) * MINUTE_MS, current, now
        )
        rows = [ohlc_row(m) for m in window if m.open_time_ms / 1000 > since_s]
        last = (current - MINUTE_MS) // 1000
        return RestReply(200, {"error": [], "result": {internal: rows, "last": last}})

    def rest_trades(self, request: RestRequest) -> RestReply:
        """Up to ``count`` (1000) trades after ``since`` (seconds, or ns as ``last`` gives)."""
        params = request.params
        try:
            symbol, internal = self._pair(params)
            since = _number(params, "since", 0)
            count = int(_number(params, "count", TRADES_PAGE))
        except Refused as exc:
            return RestReply(200, {"error": [str(exc)]})
        since_ms = int(since // 1_000_000) if since >= 1e14 else int(since * 1000)
        source = request.timeline.sources[symbol]
        trades = list(
            itertools.islice(
                trades_after(request.timeline, source, since_ms, request.now_ms),
                max(1, min(count, TRADES_PAGE)),
            )
        )
        rows = [
            [t.price, t.qty, t.ts_ms / 1000, "s" if t.buyer_is_maker else "b", "m", "",
             t.trade_id]
            for t in trades
        ]  # fmt: skip
        last = str((trades[-1].ts_ms if trades else since_ms) * 1_000_000)
        return RestReply(200, {"error": [], "result": {internal: rows, "last": last}})

    def rest_time(self, request: RestRequest) -> RestReply:
        seconds = request.now_ms // 1000
        rfc = formatdate(seconds, usegmt=True)
        return RestReply(200, {"error": [], "result": {"unixtime": seconds, "rfc1123": rfc}})

    def rest_not_found(self, path: str) -> RestReply:
        return RestReply(404, {"error": ["EGeneral:Unknown method"]})

    def rest_throttled(self, status: int) -> RestReply:
        return RestReply(status, {"error": ["EGeneral:Too many requests"]})
