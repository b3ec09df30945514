"""The Bitstamp dialect of the replay exchange: ``live_trades_<pair>`` and the OHLC v2 REST.

* WebSocket ``/`` (``wss://ws.bitstamp.net``). The client sends one
  ``{"event":"bts:subscribe","data":{"channel":"live_trades_btcusd"}}`` per channel
  (``bts:unsubscribe`` likewise), answered as recorded (cryptofeed's ``bitstamp`` capture,
  2022-01-05)::

    {"event":"bts:subscription_succeeded","channel":"live_trades_ethusd","data":{}}

  An unknown channel or pair subscribes nothing and is answered
  ``{"event":"bts:error","channel":"","data":{"code":null,"message":"Bad subscription
  string."}}``; a message that is not JSON, ``... "Incorrect JSON format."``. The client's
  ``{"event":"bts:heartbeat"}`` is answered ``{"event":"bts:heartbeat","channel":"","data":
  {"status":"success"}}``. Each trade is one ``trade`` event, in the recorded shape::

    {"data":{"id":216000477,"timestamp":"1641343699","amount":0.0792,"amount_str":"0.07920000",
     "price":3805.44,"price_str":"3805.44","type":0,"microtimestamp":"1641343699596000",
     "buy_order_id":1443875737346049,"sell_order_id":1443875731320832},
     "channel":"live_trades_ethusd","event":"trade"}

  ``type`` is the taker's side (0 buy); ``amount_str`` has 8 decimals (every digit, if the
  recorded quantity has more); order ids are derived from the trade id, the taker's the newer,
  as in the recording. ``shutdown_notice``: ``bts:request_reconnect``. Connections are cut at
  90 days.
* REST ``GET /api/v2/ohlc/<pair>/?step=60&limit=&start=&end=&exclude_current_candle=``:
  ``{"data":{"pair":"BTC/USD","ohlc":[{"high","timestamp","volume","low","close","open"},...]}}``,
  all strings, OLDEST FIRST, ``limit`` (1 to 1000, required) rows: up to ``end`` when it is
  given (with ``start`` too, ``end`` wins, as Bitstamp documents), else from ``start``, else up
  to now. The minute still running is served as far as it has traded unless
  ``exclude_current_candle=true``; minutes without trades are flat rows with volume 0. Errors:
  ``{"status":"error","reason":...}`` with 400 or 404.

Symbols: the replayed symbol ``BTCUSD`` is ``btcusd`` on the wire and ``BTC/USD`` in the OHLC
answer's ``pair``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Set
from decimal import Decimal
from typing import Any

from streamer.core.types import MINUTE_MS
from streamer.replay.data import TradeRow
from streamer.replay.dialect import Channels, ControlOutcome, DialectBase, dumps, spoil_trade
from streamer.replay.limits import VenueRules
from streamer.replay.minutes import Minute, minutes
from streamer.replay.routes import Refused, RestReply, RestRequest, RestRoute, int_param

LIVE_TRADES = "live_trades_"
OHLC_MAX = 1000
STEPS = frozenset({60, 180, 300, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400, 259200})
_QUOTES = ("USDT", "USDC", "PYUSD", "USD", "EUR", "GBP", "BTC", "ETH")
_ORDER_IDS = 1_000_000_000_000_000  # where the derived order ids start
_EIGHT = Decimal("0.00000001")


def channel(symbol: str) -> str:
    """``BTCUSD`` -> ``live_trades_btcusd``, also the replay's stream name."""
    return f"{LIVE_TRADES}{symbol.lower()}"


def pair_name(symbol: str) -> str:
    """``BTCUSD`` -> ``BTC/USD``, as the OHLC answer names it."""
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return f"{symbol[: -len(quote)]}/{quote}"
    return symbol


def _eight(text: str) -> str:
    """A decimal with 8 decimals, as Bitstamp's ``*_str`` amounts, or every digit it has."""
    value = Decimal(text)
    return format(value.quantize(_EIGHT), "f") if value == value.quantize(_EIGHT) else text


def trade_json(symbol: str, t: TradeRow) -> str:
    taker = 1 if t.buyer_is_maker else 0
    older, newer = _ORDER_IDS + 2 * t.trade_id, _ORDER_IDS + 2 * t.trade_id + 1
    buy_id, sell_id = (older, newer) if taker else (newer, older)
    return (
        f'{{"data":{{"id":{t.trade_id},"timestamp":"{t.ts_ms // 1000}",'
        f'"amount":{float(t.qty)!r},"amount_str":"{_eight(t.qty)}",'
        f'"price":{float(t.price)!r},"price_str":"{t.price}","type":{taker},'
        f'"microtimestamp":"{t.ts_ms * 1000}","buy_order_id":{buy_id},"sell_order_id":{sell_id}'
        f'}},"channel":"{channel(symbol)}","event":"trade"}}'
    )


def _event(event: str, channel: str, data: Any) -> str:
    return dumps({"event": event, "channel": channel, "data": data})


def _error(message: str) -> ControlOutcome:
    return ControlOutcome([_event("bts:error", "", {"code": None, "message": message})])


def ohlc_row(minute: Minute) -> dict[str, str]:
    return {
        "high": minute.high,
        "timestamp": str(minute.open_time_ms // 1000),
        "volume": _eight(format(minute.volume, "f")),
        "low": minute.low,
        "close": minute.close,
        "open": minute.open,
    }


def _int_param(params: dict[str, str], name: str) -> int | None:
    return int_param(params, name, "Invalid {name} parameter.")


class BitstampDialect(DialectBase):
    """Bitstamp, as ``ws.bitstamp.net`` and ``www.bitstamp.net`` serve it, for ``symbols``
    (the replayed symbols, e.g. ``BTCUSD``)."""

    rules = VenueRules(max_connection_age_s=90 * 86_400.0)

    def __init__(self, symbols: Iterable[str]) -> None:
        self.channels_served = {channel(s): s for s in symbols}  # live_trades_btcusd -> BTCUSD
        self.pairs = {s.lower(): s for s in symbols}  # btcusd -> BTCUSD
        self.rest_routes: Mapping[str, RestRoute] = {
            "/api/v2/ohlc/{pair}/": RestRoute(self.rest_ohlc, throttled=True),
        }

    def shutdown_notice(self, now_ms: int) -> str:
        """Sent before maintenance: the connection is dropped within seconds."""
        return _event("bts:request_reconnect", "", "")

    # WebSocket

    def channels(self, symbol: str) -> Channels:
        return Channels(trades=((channel(symbol), trade_json),), klines=())

    def spoil(self, event: dict[str, Any], variant: int) -> None:
        """1 wrong types (an id that is no number, a price object), 2 a negative price."""
        wrong_types = {"id": "not-a-number", "price_str": {"price": 1}}
        spoil_trade(event["data"], variant, wrong_types, "price_str")

    def control(self, message: str | bytes, streams: Set[str], framing: int) -> ControlOutcome:
        """``bts:subscribe``, ``bts:unsubscribe`` and ``bts:heartbeat``."""
        try:
            request = json.loads(message)
        except ValueError:
            return _error("Incorrect JSON format.")
        if not isinstance(request, dict):
            return _error("Incorrect JSON format.")
        event = request.get("event")
        if event == "bts:heartbeat":
            return ControlOutcome([_event("bts:heartbeat", "", {"status": "success"})])
        if event not in ("bts:subscribe", "bts:unsubscribe"):
            return _error("Bad event.")
        data = request.get("data")
        name = data.get("channel") if isinstance(data, dict) else None
        if not isinstance(name, str) or name not in self.channels_served:
            return _error("Bad subscription string.")
        if event == "bts:subscribe":
            reply = _event("bts:subscription_succeeded", name, {})
            return ControlOutcome([reply], subscribe=[name])
        reply = _event("bts:unsubscription_succeeded", name, {})
        return ControlOutcome([reply], unsubscribe=[name])

    # REST

    def rest_ohlc(self, request: RestRequest) -> RestReply:
        """``limit`` minutes up to ``end``, else from ``start``, else up to now, oldest first."""
        params = request.params
        symbol = self.pairs.get(request.path_params.get("pair", ""))
        if symbol is None:
            return RestReply(404, {"status": "error", "reason": "Invalid currency pair."})
        try:
            step = _int_param(params, "step")
            if step not in STEPS:
                raise Refused("Invalid step parameter.")
            if step != 60:
                raise Refused("the replay exchange serves step=60 only")
            limit = _int_param(params, "limit")
            if limit is None or not 1 <= limit <= OHLC_MAX:
                raise Refused("Invalid limit parameter.")
            start, end = _int_param(params, "start"), _int_param(params, "end")
        except Refused as exc:
            return RestReply(400, {"status": "error", "reason": str(exc)})
        now = request.now_ms
        current = now - now % MINUTE_MS
        newest = current - MINUTE_MS if params.get("exclude_current_candle") == "true" else current
        span = (limit - 1) * MINUTE_MS
        if end is not None:  # end wins over start
            high = min(newest, end * 1000)
            low = high - high % MINUTE_MS - span
        elif start is not None:
            low = start * 1000
            high = min(newest, -(-low // MINUTE_MS) * MINUTE_MS + span)
        else:
            high, low = newest, newest - span
        source = request.timeline.sources[symbol]
        rows = [ohlc_row(m) for m in minutes(request.timeline, source, low, high, now)]
        return RestReply(200, {"data": {"pair": pair_name(symbol), "ohlc": rows}})

    def rest_not_found(self, path: str) -> RestReply:
        return RestReply(404, {"status": "error", "reason": "Not found."})

    def rest_throttled(self, status: int) -> RestReply:
        return RestReply(status, {"status": "error", "reason": "Rate limit exceeded."})
