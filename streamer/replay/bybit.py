"""The Bybit v5 spot dialect of the replay exchange: ``publicTrade`` pushes and the kline REST.

* WebSocket ``/v5/public/spot`` (``wss://stream.bybit.com/v5/public/spot``). The client sends
  ``{"op":"subscribe","args":["publicTrade.BTCUSDT",...]}`` (at most 10 args on spot;
  ``unsubscribe`` likewise, an optional ``req_id`` is echoed), answered as Bybit's v5 docs show::

    {"success":true,"ret_msg":"subscribe","conn_id":"...","op":"subscribe"}

  A request with an unknown topic or symbol, or more than 10 args, subscribes nothing and is
  answered ``{"success":false,"ret_msg":"Invalid symbol :[publicTrade.BTCXYZ]",...}``. The
  keepalive ``{"op":"ping"}`` is answered ``{"success":true,"ret_msg":"pong","conn_id":"...",
  "op":"ping"}``; Bybit asks for one every 20 s and closes a connection whose client sent
  nothing for 10 minutes (``client_idle_timeout_s``, which the server enforces). ``conn_id``
  is one per replay server here. Each trade is one push, in the
  documented shape (``tests/fixtures/ws/bybit_v5_doc.jsonl``; no v5 recording exists)::

    {"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":[{
     "T":1672304486865,"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50",
     "i":"2290000000061666327","BT":false,"seq":1783284617}]}

  ``S`` is the taker's side; ``i`` is text (digits on spot), ``seq`` the trade id here. The
  documented sample's ``L`` (tick direction) is left out: Bybit documents it for perpetuals
  and futures only.
* REST ``GET /v5/market/kline?category=spot&symbol=&interval=1&start=&end=&limit=``:
  ``{"retCode":0,"retMsg":"OK","result":{"symbol":"BTCUSDT","category":"spot","list":[[start,
  open, high, low, close, volume, turnover],...]},"retExtInfo":{},"time":ms}``, all strings,
  NEWEST FIRST: the newest ``limit`` (default 200, at most 1000) minutes opening in
  ``[start, end]`` (both inclusive; without ``end``, up to now). A range that reaches the
  minute still running gets it as far as it has traded, unfinished and unmarked; minutes
  without trades are flat rows with volume 0. Errors are HTTP 200 with ``retCode`` set
  (``10001``). Per IP, at most 600 requests within any 5 s: the one over it, and every request
  for the 10 minutes after, is answered HTTP 403 ``access too frequent`` (the body is the
  replay's: Bybit documents only the status and the message).
* Connections: at most 500 within any 5 minutes per IP; more are answered HTTP 429 at the
  handshake (Bybit documents the limit, not the answer).

Symbols: Bybit's ``BTCUSDT`` is the replayed symbol as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Set
from typing import Any

from streamer.core.types import MINUTE_MS
from streamer.replay.data import TradeRow
from streamer.replay.dialect import Channels, ControlOutcome, DialectBase, dumps, spoil_trade
from streamer.replay.limits import RequestLimit, VenueRules
from streamer.replay.minutes import Minute, minutes, plain
from streamer.replay.routes import Refused, RestReply, RestRequest, RestRoute, int_param

PUBLIC_TRADE = "publicTrade"
WS_PATH = "/v5/public/spot"
ARGS_PER_REQUEST = 10  # spot
KLINE_DEFAULT = 200
KLINE_MAX = 1000
INTERVALS = frozenset({"1", "3", "5", "15", "30", "60", "120", "240", "360", "720"} | set("DWM"))
CONN_ID = "7a5e0a3c-3f6c-4b6e-9d1b-000000000001"
IDLE_TIMEOUT_S = 600.0  # a connection whose client sent nothing (no ping) for 10 minutes


def topic(symbol: str) -> str:
    """The topic of one symbol's trades, also the replay's stream name: ``publicTrade.BTCUSDT``."""
    return f"{PUBLIC_TRADE}.{symbol}"


def trade_json(symbol: str, t: TradeRow) -> str:
    side = "Sell" if t.buyer_is_maker else "Buy"
    return (
        f'{{"topic":"publicTrade.{symbol}","type":"snapshot","ts":{t.ts_ms},"data":[{{'
        f'"T":{t.ts_ms},"s":"{symbol}","S":"{side}","v":"{t.qty}","p":"{t.price}",'
        f'"i":"{t.trade_id}","BT":false,"seq":{t.trade_id}}}]}}'
    )


def kline_row(minute: Minute) -> list[str]:
    """``[start, open, high, low, close, volume, turnover]``."""
    return [*minute.text_row(), plain(minute.quote_volume)]


def _int_param(params: dict[str, str], name: str) -> int | None:
    return int_param(params, name, "Invalid parameter: {name}")


class BybitDialect(DialectBase):
    """Bybit spot (v5), as ``stream.bybit.com/v5/public/spot`` and ``api.bybit.com`` serve
    it, for ``symbols`` (the replayed symbols, e.g. ``BTCUSDT``)."""

    ws_path = WS_PATH
    rules = VenueRules(
        client_idle_timeout_s=IDLE_TIMEOUT_S,
        request_limits=(RequestLimit(600, 5.0, status=403, ban_s=600.0),),
        connection_limit=RequestLimit(500, 300.0),
    )

    def __init__(self, symbols: Iterable[str]) -> None:
        self.symbols = frozenset(symbols)
        self.topics = frozenset(topic(s) for s in self.symbols)
        self.rest_routes: Mapping[str, RestRoute] = {
            "/v5/market/time": RestRoute(self.rest_time),
            "/v5/market/kline": RestRoute(self.rest_kline, throttled=True),
        }

    # WebSocket

    def channels(self, symbol: str) -> Channels:
        return Channels(trades=((topic(symbol), trade_json),), klines=())

    def spoil(self, event: dict[str, Any], variant: int) -> None:
        """1 wrong types (a numeric id, a price object), 2 a negative price."""
        trade = event["data"][0]
        spoil_trade(trade, variant, {"i": int(trade["i"]), "p": {"p": 1}}, "p")

    def control(self, message: str | bytes, streams: Set[str], framing: int) -> ControlOutcome:
        """``ping``, ``subscribe`` and ``unsubscribe``, each request answered whole."""
        try:
            request = json.loads(message)
        except ValueError:
            return ControlOutcome([self._answer(False, "Invalid request: not JSON", "", None)])
        if not isinstance(request, dict):
            return ControlOutcome([self._answer(False, "Invalid request", "", None)])
        op, req_id = request.get("op"), request.get("req_id")
        if not isinstance(req_id, str):
            req_id = None
        if op == "ping":
            return ControlOutcome([self._answer(True, "pong", "ping", req_id)])
        if op not in ("subscribe", "unsubscribe"):
            return ControlOutcome([self._answer(False, f"Invalid op: {op}", str(op), req_id)])
        args = request.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            return ControlOutcome([self._answer(False, "Invalid args", op, req_id)])
        if len(args) > ARGS_PER_REQUEST:
            return ControlOutcome([self._answer(False, "args size >10", op, req_id)])
        bad = [a for a in args if a not in self.topics]
        if bad:
            message_text = f"Invalid symbol :[{','.join(bad)}]"
            return ControlOutcome([self._answer(False, message_text, op, req_id)])
        reply = self._answer(True, op, op, req_id)
        if op == "subscribe":
            return ControlOutcome([reply], subscribe=list(args))
        return ControlOutcome([reply], unsubscribe=list(args))

    @staticmethod
    def _answer(success: bool, ret_msg: str, op: str, req_id: str | None) -> str:
        body: dict[str, Any] = {"success": success, "ret_msg": ret_msg, "conn_id": CONN_ID}
        if req_id is not None:
            body["req_id"] = req_id
        body["op"] = op
        return dumps(body)

    # REST

    @staticmethod
    def _reply(now_ms: int, code: int, msg: str, result: dict[str, Any]) -> RestReply:
        body = {"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": now_ms}
        return RestReply(200, body)

    def rest_kline(self, request: RestRequest) -> RestReply:
        """The newest ``limit`` minutes opening in ``[start, end]``, newest first."""
        params = request.params
        now = request.now_ms
        symbol = params.get("symbol", "")
        try:
            if params.get("category") not in ("spot", "linear", "inverse"):
                raise Refused("Invalid category")
            if params["category"] != "spot" or symbol not in self.symbols:
                raise Refused("Not supported symbols")
            interval = params.get("interval", "")
            if interval not in INTERVALS:
                raise Refused("Invalid period!")
            if interval != "1":
                raise Refused("the replay exchange serves interval=1 only")
            start, end = _int_param(params, "start"), _int_param(params, "end")
            limit = _int_param(params, "limit")
            limit = KLINE_DEFAULT if limit is None else limit
            if not 1 <= limit <= KLINE_MAX:
                raise Refused("Invalid parameter: limit")
        except Refused as exc:
            return self._reply(now, 10001, str(exc), {})
        current = now - now % MINUTE_MS
        high = current if end is None else min(current, end)
        low = max(start or 0, high - high % MINUTE_MS - (limit - 1) * MINUTE_MS)
        source = request.timeline.sources[symbol]
        rows = [kline_row(m) for m in minutes(request.timeline, source, low, high, now)]
        rows.reverse()
        return self._reply(now, 0, "OK", {"symbol": symbol, "category": "spot", "list": rows})

    def rest_time(self, request: RestRequest) -> RestReply:
        now = request.now_ms
        result = {"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)}
        return self._reply(now, 0, "OK", result)

    def rest_not_found(self, path: str) -> RestReply:
        return RestReply(404, {"retCode": 404, "retMsg": "Not Found", "result": {}})

    def rest_throttled(self, status: int) -> RestReply:
        if status == 403:  # the IP limit
            return RestReply(status, {"retCode": 403, "retMsg": "access too frequent"})
        body = {"retCode": 10006, "retMsg": "Too many visits!", "result": {}, "retExtInfo": {}}
        return RestReply(status, body)
