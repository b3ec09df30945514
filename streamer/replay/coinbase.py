"""The Coinbase Exchange dialect of the replay exchange: the feed's messages and the candles REST.

* WebSocket ``/`` (``wss://ws-feed.exchange.coinbase.com``). The client sends
  ``{"type":"subscribe","product_ids":[...],"channels":["matches",...]}`` (a channel may also be
  ``{"name":..., "product_ids":[...]}``); ``unsubscribe`` likewise. Each accepted message is
  answered with a ``subscriptions`` message listing everything the connection is subscribed to,
  as recorded (cryptofeed's ``coinbase_pro`` capture)::

    {"type":"subscriptions","channels":[{"name":"matches","product_ids":["SKL-BTC","DASH-BTC"]}]}

  A message naming an unknown product or channel subscribes nothing and is answered
  ``{"type":"error","message":"Failed to subscribe","reason":"BTC-XYZ is not a valid product"}``.
  Channels served: ``matches`` (one ``match`` per trade, in the recorded shape below) and
  ``heartbeat`` (once a second of replay time per product, with the product's newest trade id
  so far, whether or not it reached this connection)::

    {"type":"match","trade_id":1568268,"maker_order_id":"...","taker_order_id":"...",
     "side":"sell","size":"450","price":"0.791","product_id":"SKL-USD","sequence":201390075,
     "time":"2021-04-17T16:43:37.121358Z"}
    {"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD",
     "time":"2014-11-07T08:19:28.464459Z"}

  ``side`` is the maker's side (a taker buy is ``"sell"``). Replayed ids: ``sequence`` is the
  trade id, order ids are derived from it. Not replayed: ``last_match`` after a subscription.
* REST ``GET /products/<id>/candles?granularity=60&start=&end=``: rows
  ``[time_s, low, high, open, close, volume]`` (JSON numbers), newest first, for the minutes
  opening in ``[start, end]``; minutes without trades are left out; at most 300 minutes a
  request: a range of more is answered 400. Without both ``start`` and ``end`` (one alone is
  ignored, as Coinbase documents), the 300 most recent minutes. The minute still running is
  served as far as it has traded. Unknown product: 404 ``{"message":"NotFound"}``. ``/time``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Set
from typing import Any

from streamer.core.timefmt import parse_iso_ms
from streamer.core.types import MINUTE_MS
from streamer.replay.data import TradeRow
from streamer.replay.dialect import Channels, ControlOutcome, DialectBase, dumps, iso_micros
from streamer.replay.minutes import minutes
from streamer.replay.routes import Refused, RestReply, RestRequest, RestRoute

MATCHES = "matches"
HEARTBEAT = "heartbeat"
CHANNELS = (MATCHES, HEARTBEAT)  # the channels the replay serves
MAX_CANDLES = 300
GRANULARITIES = frozenset({60, 300, 900, 3600, 21600, 86400})  # what Coinbase accepts
TOO_MANY = (
    "granularity too small for the requested time range. Count of aggregations requested "
    "exceeds 300"
)


def stream(channel: str, product: str) -> str:
    """The replay's name for one channel of one product: ``matches:BTC-USD``."""
    return f"{channel}:{product}"


def match_json(product: str, t: TradeRow) -> str:
    maker_side = "buy" if t.buyer_is_maker else "sell"
    tid = t.trade_id
    return (
        f'{{"type":"match","trade_id":{tid},'
        f'"maker_order_id":"00000000-0000-4000-8000-{tid % 16**12:012x}",'
        f'"taker_order_id":"00000000-0000-4000-9000-{tid % 16**12:012x}",'
        f'"side":"{maker_side}","size":"{t.qty}","price":"{t.price}","product_id":"{product}",'
        f'"sequence":{tid},"time":"{iso_micros(t.ts_ms)}"}}'
    )


def heartbeat_json(product: str, last_trade_id: int, now_ms: int) -> str:
    return (
        f'{{"type":"heartbeat","sequence":{last_trade_id},"last_trade_id":{last_trade_id},'
        f'"product_id":"{product}","time":"{iso_micros(now_ms)}"}}'
    )


def _error(message: str, reason: str) -> ControlOutcome:
    return ControlOutcome([dumps({"type": "error", "message": message, "reason": reason})])


def _time_param(text: str, name: str) -> int:
    """Epoch ms of an ISO-8601 time or of epoch seconds."""
    try:
        if text.replace(".", "", 1).isdigit():
            return int(float(text) * 1000)
        return parse_iso_ms(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise Refused(f"Invalid {name}") from None


def rest_candles(request: RestRequest) -> RestReply:
    params = request.params
    product = request.path_params.get("product_id", "")
    source = request.timeline.sources.get(product)
    if source is None:
        return RestReply(404, {"message": "NotFound"})
    try:
        granularity = int(params.get("granularity", ""))
    except ValueError:
        granularity = 0
    if granularity not in GRANULARITIES:
        return RestReply(400, {"message": "Unsupported granularity"})
    if granularity != 60:
        return RestReply(400, {"message": "the replay exchange serves granularity=60 only"})
    now = request.now_ms
    if params.get("start") and params.get("end"):
        try:
            start = _time_param(params["start"], "start")
            end = _time_param(params["end"], "end")
        except Refused as exc:
            return RestReply(400, {"message": str(exc)})
        if start > end:
            return RestReply(400, {"message": "start must be before end"})
        low = -(-start // MINUTE_MS) * MINUTE_MS  # candles whose time lies in [start, end]
        high = end - end % MINUTE_MS
        if (high - low) // MINUTE_MS + 1 > MAX_CANDLES:
            return RestReply(400, {"message": TOO_MANY})
    else:  # one of them alone is ignored, as Coinbase documents
        high = now - now % MINUTE_MS
        low = high - (MAX_CANDLES - 1) * MINUTE_MS
    rows = [
        [m.open_time_ms // 1000, float(m.low), float(m.high), float(m.open), float(m.close),
         float(m.volume)]
        for m in minutes(request.timeline, source, low, high, now)
        if m.trades  # minutes without trades are left out
    ]  # fmt: skip
    return RestReply(200, rows[::-1])


def rest_time(request: RestRequest) -> RestReply:
    now = request.now_ms
    return RestReply(200, {"iso": iso_micros(now)[:-4] + "Z", "epoch": now / 1000})


class CoinbaseDialect(DialectBase):
    """Coinbase Exchange, as ``ws-feed.exchange.coinbase.com`` and ``api.exchange.coinbase.com``
    serve it, for ``products`` (the replayed symbols, e.g. ``BTC-USD``)."""

    heartbeat_every_ms = 1000
    rest_routes: Mapping[str, RestRoute] = {
        "/time": RestRoute(rest_time),
        "/products/{product_id}/candles": RestRoute(rest_candles, throttled=True),
    }

    def __init__(self, products: Iterable[str]) -> None:
        self.products = frozenset(products)

    def channels(self, symbol: str) -> Channels:
        return Channels(trades=((stream(MATCHES, symbol), match_json),), klines=())

    def spoil(self, event: dict[str, Any], variant: int) -> None:
        """1 wrong types, 2 NaN price."""
        if variant == 1:
            event["trade_id"] = "not-a-number"
            event["price"] = {"price": 1}
            event["size"] = None
        else:
            event["price"] = "NaN"

    def control(self, message: str | bytes, streams: Set[str], framing: int) -> ControlOutcome:
        """``subscribe`` / ``unsubscribe``, answered with the connection's subscriptions."""
        try:
            request = json.loads(message)
        except ValueError:
            return _error("Failed to subscribe", "malformed JSON")
        if not isinstance(request, dict):
            return _error("Failed to subscribe", "message must be a JSON object")
        kind = request.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            return _error("Failed to subscribe", "Type has to be either subscribe or unsubscribe")
        try:
            names = self._streams(request, kind == "unsubscribe", streams)
        except Refused as exc:
            return _error("Failed to subscribe", str(exc))
        if kind == "subscribe":
            after = set(streams) | set(names)
            return ControlOutcome([self._subscriptions(after)], subscribe=names)
        after = set(streams) - set(names)
        return ControlOutcome([self._subscriptions(after)], unsubscribe=names)

    def _streams(self, request: dict[str, Any], unsubscribe: bool, streams: Set[str]) -> list[str]:
        """The streams a (un)subscribe message names; raises ``Refused`` for the whole
        message if any part is invalid."""
        products = request.get("product_ids", [])
        channels = request.get("channels")
        if not isinstance(channels, list) or not channels:
            raise Refused("No channels provided")
        if not isinstance(products, list) or not all(isinstance(p, str) for p in products):
            raise Refused("product_ids must be a list of strings")
        names: list[str] = []
        for channel in channels:
            if isinstance(channel, str):
                name, ids = channel, products
            elif isinstance(channel, dict) and isinstance(channel.get("name"), str):
                name, ids = channel["name"], channel.get("product_ids", products)
                if not isinstance(ids, list) or not all(isinstance(p, str) for p in ids):
                    raise Refused("product_ids must be a list of strings")
            else:
                raise Refused("channels must be names or {name, product_ids} objects")
            if name not in CHANNELS:
                raise Refused(f"{name} is not a valid channel")
            if unsubscribe and not ids:  # a channel alone: all of its products
                names += sorted(s for s in streams if s.startswith(f"{name}:"))
                continue
            if not ids:
                raise Refused(f"No product ids provided for {name}")
            for product in ids:
                if product not in self.products:
                    raise Refused(f"{product} is not a valid product")
                names.append(stream(name, product))
        return names

    @staticmethod
    def _subscriptions(streams: Set[str]) -> str:
        by_channel: dict[str, list[str]] = {}
        for name in sorted(streams):
            channel, _, product = name.partition(":")
            by_channel.setdefault(channel, []).append(product)
        listed = [{"name": c, "product_ids": by_channel[c]} for c in CHANNELS if c in by_channel]
        return dumps({"type": "subscriptions", "channels": listed})

    def heartbeats(
        self, streams: Set[str], now_ms: int, quiet_ms: int, last_trade_ids: Mapping[str, int]
    ) -> list[str]:
        """One heartbeat a second per product on the ``heartbeat`` channel."""
        prefix = f"{HEARTBEAT}:"
        products = [name[len(prefix) :] for name in sorted(streams) if name.startswith(prefix)]
        return [heartbeat_json(p, last_trade_ids.get(p, 0), now_ms) for p in products]

    def rest_not_found(self, path: str) -> RestReply:
        return RestReply(404, {"message": "NotFound"})

    def rest_throttled(self, status: int) -> RestReply:
        return RestReply(status, {"message": "Public rate limit exceeded"})
