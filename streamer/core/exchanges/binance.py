"""Binance spot: ``<symbol>@trade``, ``<symbol>@aggTrade`` and ``<symbol>@kline_1m`` streams.

A real combined-stream frame (recorded on Binance.US, same protocol as binance.com; from
cryptofeed's ``binance_us.jsonl.gz`` capture)::

    {"stream":"omgbusd@aggTrade","data":{"e":"aggTrade","E":1633998288468,"s":"OMGBUSD",
     "a":425085,"p":"13.80480000","q":"2.10000000","f":439577,"l":439577,"T":1633998288467,
     "m":false,"M":true}}

``m`` is "the buyer is the maker", so ``m: true`` means the aggressor sold. Event time is the
trade time ``T``, never ``E`` (the time Binance sent the message).

Connections go to ``{ws_url}/stream`` (combined streams) and subscribe with SUBSCRIBE messages
of at most 200 streams each. Binance limits (web-socket-streams.md): 1024 streams per
connection, 5 incoming messages per second per connection (so the feed must space the
SUBSCRIBE messages at least 0.2 s apart), 300 connection attempts per 5 minutes per IP, and
every connection is cut at 24 hours.

Parsing is the hot path (500,000 trades/s with aggregation on one core), so frames are decoded
by msgspec straight into typed structs: combined frames in one pass (wrapper plus tagged event
union), raw frames in one pass. Anything that does not fit those types (acks, errors, other
channels, malformed input) falls back to a slower generic decode that classifies it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any, Final

import msgspec

from streamer.core.exchanges import _common as common
from streamer.core.exchanges.base import FrameError, Reconnect, RestRequest, VenueRules
from streamer.core.rest_limits import RestWeight
from streamer.core.types import Bar, Side, Trade

__all__ = ["BINANCE", "BinanceSpot"]

_NAME: Final = "binance"
SERVER_SHUTDOWN: Final = Reconnect("server_shutdown")
_CHANNELS: Final = ("trade", "aggTrade", "kline_1m")
_STREAMS_PER_SUBSCRIBE: Final = 200
# /api/v3/klines rows: [open time, o, h, l, c, volume, close time, quote volume, trades, taker
# buy base, taker buy quote, ignore]
_KLINE_ROW: Final = common.BarColumns("kline", columns=12, trades=8)

# Validation lives in the types, so msgspec checks it in C while decoding: prices and
# quantities finite and > 0 (NaN and inf fail these bounds), ids >= 0, times > 0.
_Time = Annotated[int, msgspec.Meta(gt=0, le=common.INT64_MAX)]
_Positive = Annotated[float, msgspec.Meta(gt=0.0, le=sys.float_info.max)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0.0, le=sys.float_info.max)]


class _Fill(msgspec.Struct, tag_field="e", gc=False):
    """The fields a trade and an aggregate trade event share."""

    symbol: common.SymbolField = msgspec.field(name="s")
    price: common.AmountField = msgspec.field(name="p")
    qty: common.AmountField = msgspec.field(name="q")
    trade_time: _Time = msgspec.field(name="T")
    buyer_is_maker: bool = msgspec.field(name="m")


class _TradeEvent(_Fill, tag="trade", gc=False):
    trade_id: common.TradeIdField = msgspec.field(name="t")


class _AggTradeEvent(_Fill, tag="aggTrade", gc=False):
    trade_id: common.TradeIdField = msgspec.field(name="a")  # the aggregate trade id


class _Kline(msgspec.Struct, gc=False):
    open_time: _Time = msgspec.field(name="t")
    interval: str = msgspec.field(name="i")
    open: _Positive = msgspec.field(name="o")
    high: _Positive = msgspec.field(name="h")
    low: _Positive = msgspec.field(name="l")
    close: _Positive = msgspec.field(name="c")
    volume: _NonNegative = msgspec.field(name="v")
    trades: Annotated[int, msgspec.Meta(ge=0, le=common.INT64_MAX)] = msgspec.field(name="n")
    closed: bool = msgspec.field(name="x")


class _KlineEvent(msgspec.Struct, tag_field="e", tag="kline", gc=False):
    symbol: common.SymbolField = msgspec.field(name="s")
    kline: _Kline = msgspec.field(name="k")


_Event = _TradeEvent | _AggTradeEvent | _KlineEvent


class _Combined(msgspec.Struct, gc=False):
    stream: str
    data: _Event


# strict=False lets msgspec turn Binance's decimal strings ("13.80480000") into floats in C.
_RAW_DECODER: Final = msgspec.json.Decoder(_Event, strict=False)
_COMBINED_DECODER: Final = msgspec.json.Decoder(_Combined, strict=False)
_EVENT_TYPES: Final[dict[str, type[_TradeEvent | _AggTradeEvent | _KlineEvent]]] = {
    "trade": _TradeEvent,
    "aggTrade": _AggTradeEvent,
    "kline": _KlineEvent,
}
_COMBINED_HINT: Final = frozenset((ord("s"), "s"))


class BinanceSpot(common.Venue):
    """Binance spot protocol knowledge; stateless, so one shared instance serves every feed.

    One combined-stream connection per ``1024 // len(channels)`` symbols, subscribed
    ``_STREAMS_PER_SUBSCRIBE`` streams a message.
    """

    name = _NAME
    default_ws_url = "wss://stream.binance.com:9443"
    default_rest_url = "https://api.binance.com"
    channels = _CHANNELS
    max_streams_per_connection = 1024
    max_connection_age_s: float | None = 86400.0
    # Binance allows 300 attempts per 5 minutes per IP (1/s); stay at half of that.
    connect_attempts_per_s = 0.5
    max_bars_per_request = 1000
    # /api/v3/klines weighs 2 of the 6000 request weight per minute per IP: 10 req/s uses 20 %.
    min_request_interval_s = 0.1
    rules = VenueRules(
        rest_weight=RestWeight("X-MBX-USED-WEIGHT-1M", 6000, 2),
        # messages a client may send per second and connection, pings and pongs included
        max_client_messages_per_s=5,
    )

    def stream_url(self, ws_url: str) -> str:
        return ws_url.rstrip("/") + "/stream"

    def check_symbols(self, symbols: list[str]) -> None:
        for symbol in symbols:
            if not symbol or not symbol.isalnum() or not symbol.isascii():
                raise ValueError(f"binance: bad symbol {symbol!r} (expected e.g. 'BTCUSDT')")

    def subscribe(self, symbols: list[str], channels: list[str]) -> tuple[str, ...]:
        streams = [f"{symbol.lower()}@{channel}" for symbol in symbols for channel in channels]
        n = _STREAMS_PER_SUBSCRIBE
        return tuple(
            common.encode_json(
                {"method": "SUBSCRIBE", "params": streams[i : i + n], "id": 1 + i // n}
            )
            for i in range(0, len(streams), n)
        )

    def parse(self, raw: bytes | str) -> Sequence[Trade | Bar | Reconnect]:
        """Parse one raw-stream or combined-stream frame.

        Acks (``{"result":null,"id":1}``) and other channels give ``[]``; error frames
        (``{"code":2,"msg":...}``) raise ``FrameError("exchange_error")``; the
        ``{"e":"serverShutdown","E":...}`` notice gives ``[SERVER_SHUTDOWN]``.
        """
        try:
            # A cheap hint, not a decision: '{"stream":...' has 's' at index 2. A frame that
            # takes the wrong branch fails to decode and the slow path classifies it.
            if raw[2] in _COMBINED_HINT:
                event = _COMBINED_DECODER.decode(raw).data
            else:
                event = _RAW_DECODER.decode(raw)
        except Exception:  # the slow path classifies every failure
            return self._parse_slow(raw)
        # Inlined rather than shared with _records(): this is the hot path.
        if isinstance(event, _KlineEvent):
            return _kline_bar(event)
        return [
            Trade(
                _NAME,
                event.symbol,
                event.trade_id,
                event.trade_time,
                event.price,
                event.qty,
                "sell" if event.buyer_is_maker else "buy",
            )
        ]

    def _parse_slow(self, raw: bytes | str) -> Sequence[Trade | Bar | Reconnect]:
        """Classify a frame that is not a well-formed trade/aggTrade/kline event."""
        frame = common.decode_any(raw)
        if isinstance(frame, list):
            return []  # array streams such as !ticker@arr
        frame = common.frame_object(frame)
        if "code" in frame and "msg" in frame:
            raise FrameError(
                "exchange_error", common.bounded(f"code {frame['code']}: {frame['msg']}")
            )
        event: Any = frame.get("data", frame) if "stream" in frame else frame
        if not isinstance(event, dict):
            return []
        tag = event.get("e")
        if tag == "serverShutdown":
            return [SERVER_SHUTDOWN]  # the server goes soon: move to a new connection
        event_type = _EVENT_TYPES.get(tag) if isinstance(tag, str) else None
        if event_type is None:
            return []  # ack, depth, bookTicker, ticker...: not ours
        return _records(common.convert(event, event_type))

    def bars_request(self, symbol: str, start_ms: int, end_ms: int) -> RestRequest:
        """``GET /api/v3/klines``; Binance's ``endTime`` is inclusive, hence ``end_ms - 1``.

        Binance returns the still-open minute too, so callers ask only for closed minutes.
        """
        common.check_range(start_ms, end_ms)
        return RestRequest(
            path="/api/v3/klines",
            params={
                "symbol": symbol,
                "interval": "1m",
                "startTime": str(start_ms),
                "endTime": str(end_ms - 1),
                "limit": str(self.max_bars_per_request),
            },
        )

    def parse_bars(self, symbol: str, raw: bytes) -> list[Bar]:
        """Parse ``/api/v3/klines`` rows (``_KLINE_ROW``)."""
        rows = common.decode_any(raw)
        if isinstance(rows, dict) and "code" in rows:
            raise FrameError(
                "exchange_error", common.bounded(f"code {rows['code']}: {rows.get('msg')}")
            )
        if not isinstance(rows, list):
            raise FrameError("bad_type", "klines response is not a list")
        return common.oldest_first(common.row_bar(_NAME, symbol, row, _KLINE_ROW) for row in rows)


def _records(event: _TradeEvent | _AggTradeEvent | _KlineEvent) -> list[Trade | Bar]:
    if isinstance(event, _KlineEvent):
        return _kline_bar(event)
    side: Side = "sell" if event.buyer_is_maker else "buy"
    return [
        Trade(_NAME, event.symbol, event.trade_id, event.trade_time, event.price, event.qty, side)
    ]


def _kline_bar(event: _KlineEvent) -> list[Trade | Bar]:
    """A closed 1-minute kline as a Bar; klines still in progress (``x: false``) give ``[]``."""
    k = event.kline
    if not k.closed or k.interval != "1m":
        return []
    return [
        common.checked_bar(
            _NAME, event.symbol, k.open_time, k.open, k.high, k.low, k.close, k.volume, k.trades
        )
    ]


BINANCE: Final = BinanceSpot()
