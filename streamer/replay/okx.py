"""The OKX dialect of the replay exchange: the v5 public ``trades`` channel and the candles REST.

* WebSocket ``/ws/v5/public`` (``wss://ws.okx.com:8443/ws/v5/public``). The client sends
  ``{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"},...]}`` (``unsubscribe``
  likewise); each arg is answered on its own, as recorded (cryptofeed's ``okx`` capture,
  2022-05-13: one ack per arg, no ``connId``)::

    {"event":"subscribe","arg":{"channel":"trades","instId":"BTC-USDT"}}

  An arg naming an unknown channel or instrument subscribes nothing and is answered
  ``{"event":"error","code":"60018","msg":"Wrong URL or channel:trades,instId:BTC-XYZ doesn't
  exist."}``, the args beside it are still taken; a message that is not a valid request is
  answered with code ``60012``. Each trade is one push, in the recorded shape::

    {"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",
     "tradeId":"338476307","px":"30236","sz":"0.0002","side":"buy","ts":"1652459224818"}]}

  ``side`` is the taker's. Keepalive: the text ``ping`` is answered ``pong``. A connection over
  which the client has sent nothing for 30 s is closed with 4004 ``No data received in 30s``
  (``client_idle_timeout_s``, which the server enforces). OKX documents the 30 s as a
  connection over which nothing was *pushed*; the replay counts what the client sent instead,
  which is stricter: a client passes only if it keeps the connection alive by itself, busy or
  quiet. At most 3 connection requests a second per IP; more are answered HTTP 429 at the
  handshake. ``shutdown_notice``: the 64008 notice OKX sends before a service upgrade.
* REST ``GET /api/v5/market/history-candles`` and ``/api/v5/market/candles``
  (``instId``, ``bar=1m``, ``after``, ``before``, ``limit``): ``{"code":"0","msg":"","data":
  [[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm],...]}``, all strings, NEWEST FIRST: the
  newest ``limit`` minutes with ``before < ts < after`` (both exclusive, as documented; without
  ``after``, up to now). At most 100 rows (history-candles) or 300 (candles, which serves only
  the latest 1,440 minutes) a request. The newest row may be the minute still running, as far
  as it has traded, with ``confirm`` ``"0"``; closed minutes have ``"1"``; minutes without
  trades are flat rows at the previous close with volume 0. Errors are HTTP 200 with the code
  filled (``51001`` unknown instrument, ``51000`` a bad parameter, ``50014`` a missing one).
  Per IP, at most 40 candles and 20 history-candles requests within any 2 s; more are
  answered HTTP 429 ``{"code":"50011","msg":"Too Many Requests","data":[]}``.

Symbols: OKX's instrument id ``BTC-USDT`` is the replayed symbol as it is.
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

TRADES = "trades"
WS_PATH = "/ws/v5/public"
HISTORY_CANDLES = 100  # rows a history-candles request may ask for (and its default)
CANDLES = 300  # rows a candles request may ask for
CANDLES_DEFAULT = 100
CANDLES_MINUTES = 1440  # how far back candles serves
IDLE_TIMEOUT_S = 30.0
HISTORY_PATH = "/api/v5/market/history-candles"
CANDLES_PATH = "/api/v5/market/candles"


def stream(inst_id: str) -> str:
    """The replay's name for the trades of one instrument: ``trades:BTC-USDT``."""
    return f"{TRADES}:{inst_id}"


def trade_json(inst_id: str, t: TradeRow) -> str:
    side = "sell" if t.buyer_is_maker else "buy"
    return (
        f'{{"arg":{{"channel":"trades","instId":"{inst_id}"}},"data":[{{"instId":"{inst_id}",'
        f'"tradeId":"{t.trade_id}","px":"{t.price}","sz":"{t.qty}","side":"{side}",'
        f'"ts":"{t.ts_ms}"}}]}}'
    )


def _error(code: str, msg: str) -> str:
    return dumps({"event": "error", "code": code, "msg": msg})


def candle_row(minute: Minute) -> list[str]:
    """``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]``: for spot, ``vol`` in the base
    currency, ``volCcy`` and ``volCcyQuote`` in the quote currency."""
    quote = plain(minute.quote_volume)
    return [*minute.text_row(), quote, quote, "1" if minute.final else "0"]


def _int_param(params: dict[str, str], name: str) -> int | None:
    return int_param(params, name, "Parameter {name} error", "51000")


class OkxDialect(DialectBase):
    """OKX spot, as ``ws.okx.com:8443/ws/v5/public`` and ``www.okx.com`` serve it, for
    ``symbols`` (the replayed instrument ids, e.g. ``BTC-USDT``)."""

    ws_path = WS_PATH
    rules = VenueRules(
        client_idle_timeout_s=IDLE_TIMEOUT_S,
        idle_close=(4004, "No data received in 30s"),
        request_limits=(
            RequestLimit(40, 2.0, frozenset({CANDLES_PATH})),
            RequestLimit(20, 2.0, frozenset({HISTORY_PATH})),
        ),
        connection_limit=RequestLimit(3, 1.0),
    )

    def __init__(self, symbols: Iterable[str]) -> None:
        self.symbols = frozenset(symbols)
        self.rest_routes: Mapping[str, RestRoute] = {
            HISTORY_PATH: RestRoute(self.rest_history_candles, True),
            CANDLES_PATH: RestRoute(self.rest_candles, True),
        }

    def shutdown_notice(self, now_ms: int) -> str:
        """What OKX sends about 30 s before it closes connections for a service upgrade."""
        return dumps(
            {
                "event": "notice",
                "code": "64008",
                "msg": "The connection will soon be closed for a service upgrade. "
                "Please reconnect.",
            }
        )

    # WebSocket

    def channels(self, symbol: str) -> Channels:
        return Channels(trades=((stream(symbol), trade_json),), klines=())

    def spoil(self, event: dict[str, Any], variant: int) -> None:
        """1 wrong types (an id that is no number, a price object), 2 a negative price."""
        wrong_types = {"tradeId": "not-a-number", "px": {"px": 1}}
        spoil_trade(event["data"][0], variant, wrong_types, "px")

    def control(self, message: str | bytes, streams: Set[str], framing: int) -> ControlOutcome:
        """``ping``, and ``subscribe`` / ``unsubscribe`` answered arg by arg."""
        if message in ("ping", b"ping"):
            return ControlOutcome(["pong"])
        text = message.decode(errors="replace") if isinstance(message, bytes) else message
        try:
            request = json.loads(text)
        except ValueError:
            return ControlOutcome([_error("60012", f"Invalid request: {text[:200]}")])
        op = request.get("op") if isinstance(request, dict) else None
        args = request.get("args") if isinstance(request, dict) else None
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list) or not args:
            return ControlOutcome([_error("60012", f"Invalid request: {text[:200]}")])
        replies: list[str] = []
        names: list[str] = []
        for arg in args:
            if not isinstance(arg, dict) or not isinstance(arg.get("channel"), str):
                replies.append(_error("60012", f"Invalid request: {text[:200]}"))
                continue
            channel, inst_id = arg["channel"], arg.get("instId")
            if channel != TRADES or inst_id not in self.symbols:
                msg = f"Wrong URL or channel:{channel},instId:{inst_id} doesn't exist."
                replies.append(_error("60018", msg))
                continue
            replies.append(dumps({"event": op, "arg": {"channel": channel, "instId": inst_id}}))
            names.append(stream(inst_id))
        if op == "subscribe":
            return ControlOutcome(replies, subscribe=names)
        return ControlOutcome(replies, unsubscribe=names)

    # REST

    def rest_history_candles(self, request: RestRequest) -> RestReply:
        return self._candles(request, HISTORY_CANDLES, HISTORY_CANDLES, None)

    def rest_candles(self, request: RestRequest) -> RestReply:
        return self._candles(request, CANDLES, CANDLES_DEFAULT, CANDLES_MINUTES)

    def _candles(
        self, request: RestRequest, max_rows: int, default_rows: int, recent: int | None
    ) -> RestReply:
        """The newest ``limit`` minutes between ``before`` and ``after``, newest first."""
        params = request.params
        try:
            inst_id = params.get("instId", "")
            if not inst_id:
                raise Refused("Parameter instId can not be empty.", "50014")
            if inst_id not in self.symbols:
                raise Refused("Instrument ID does not exist.", "51001")
            if params.get("bar", "1m") != "1m":
                raise Refused("Parameter bar error", "51000")  # the replay serves 1m only
            after, before = _int_param(params, "after"), _int_param(params, "before")
            limit = _int_param(params, "limit")
            limit = default_rows if limit is None else limit
            if not 1 <= limit <= max_rows:
                raise Refused("Parameter limit error", "51000")
        except Refused as exc:
            return RestReply(200, {"code": exc.code, "msg": exc.message, "data": []})
        now = request.now_ms
        current = now - now % MINUTE_MS
        high = current if after is None else min(current, after - 1)
        low = 0 if before is None else before + 1
        if recent is not None:
            low = max(low, current - (recent - 1) * MINUTE_MS)
        low = max(low, high - high % MINUTE_MS - (limit - 1) * MINUTE_MS)  # the newest limit
        source = request.timeline.sources[inst_id]
        rows = [candle_row(m) for m in minutes(request.timeline, source, low, high, now)]
        rows.reverse()
        return RestReply(200, {"code": "0", "msg": "", "data": rows})

    def rest_not_found(self, path: str) -> RestReply:
        return RestReply(404, {"code": "404", "msg": "Not Found", "data": []})

    def rest_throttled(self, status: int) -> RestReply:
        return RestReply(status, {"code": "50011", "msg": "Too Many Requests", "data": []})
