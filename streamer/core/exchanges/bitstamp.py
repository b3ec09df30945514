"""Bitstamp: the ``live_trades_<pair>`` channels of ``wss://ws.bitstamp.net``.

A real frame, recorded by cryptofeed (cryptofeed's ``bitstamp.jsonl.gz`` recording,
2022-01-05)::

    {"data":{"id":216000477,"timestamp":"1641343699","amount":0.0792,"amount_str":"0.07920000",
     "price":3805.44,"price_str":"3805.44","type":0,"microtimestamp":"1641343699596000",
     "buy_order_id":1443875737346049,"sell_order_id":1443875731320832},
     "channel":"live_trades_ethusd","event":"trade"}

``type`` is the taker's side (0 buy, 1 sell); in the recording the taker is always the newer of
the two orders. The time is ``microtimestamp`` (µs, as a string) truncated to ms; price and
amount are read from the exact decimal strings ``price_str`` / ``amount_str``. Trade ids are
integers shared by all pairs (the recording's ETH/USD ids jump from 216000477 to 216000484), so
a jump is no loss (no ``sequential_trade_ids``). The pair is only in the channel name, so the
symbol comes from there.

Control frames: subscription acks (``bts:subscription_succeeded``), heartbeat answers and other
channels give nothing; ``bts:error`` raises ``FrameError("exchange_error")``;
``bts:request_reconnect`` (the server is about to go down for maintenance and will drop the
connection within seconds) gives a ``Reconnect``. A client may send ``{"event":"bts:heartbeat"}``
(``KEEPALIVE_MESSAGE``) to tell a quiet pair from a dead connection.

Symbols: Bitstamp's ``btcusd`` is ``BTCUSD`` in the project (upper case; the wire form has no
separator, and the trade frame gives no other spelling). REST backfill uses
``GET /api/v2/ohlc/<pair>/?step=60``: objects ``{timestamp, open, high, low, close, volume}``,
all strings, oldest first, at most 1000 a page, no trade count (``trades=0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

import msgspec

from streamer.core.exchanges import _common as common
from streamer.core.exchanges.base import FrameError, Reconnect, RestRequest, VenueRules
from streamer.core.types import MINUTE_MS, Bar, Side, Trade

__all__ = ["BITSTAMP", "KEEPALIVE_MESSAGE", "BitstampSpot"]

_NAME: Final = "bitstamp"
_CHANNELS: Final = ("live_trades",)
_CHANNEL_PREFIX: Final = "live_trades_"
_MAX_CANDLES: Final = 1000
REQUEST_RECONNECT: Final = Reconnect("request_reconnect")
KEEPALIVE_MESSAGE: Final = '{"event":"bts:heartbeat"}'

# microseconds, at least 1 ms after the epoch
_Micros = Annotated[int, msgspec.Meta(ge=1000, le=common.INT64_MAX)]
_TAKER: Final[tuple[Side, Side]] = ("buy", "sell")


class _Trade(msgspec.Struct, gc=False):
    trade_id: common.TradeIdField = msgspec.field(name="id")
    price: common.AmountField = msgspec.field(name="price_str")
    qty: common.AmountField = msgspec.field(name="amount_str")
    taker: Literal[0, 1] = msgspec.field(name="type")
    micros: _Micros = msgspec.field(name="microtimestamp")


class _TradeEvent(msgspec.Struct, tag_field="event", tag="trade", gc=False):
    channel: str
    data: _Trade


# strict=False: decimals and the microsecond time come as strings; msgspec converts them in C.
_DECODER: Final = msgspec.json.Decoder(_TradeEvent, strict=False)


class BitstampSpot(common.Venue):
    """Bitstamp protocol knowledge; stateless and shared."""

    name = _NAME
    default_ws_url = "wss://ws.bitstamp.net"
    default_rest_url = "https://www.bitstamp.net"
    channels = _CHANNELS
    # No published figure for connection attempts: the default.
    max_bars_per_request = _MAX_CANDLES
    # 400 requests per second but 10,000 per 10 minutes per client; 10 req/s stays below.
    min_request_interval_s = 0.1
    rules = VenueRules(keepalive_message=KEEPALIVE_MESSAGE)

    def check_symbols(self, symbols: list[str]) -> None:
        common.check_compact_symbols(_NAME, symbols, "BTCUSD")

    def subscribe(self, symbols: list[str], channels: list[str]) -> tuple[str, ...]:
        """One ``bts:subscribe`` message per channel and pair, ``BTCUSD`` sent as ``btcusd``."""
        return tuple(
            common.encode_json(
                {"event": "bts:subscribe", "data": {"channel": f"{channel}_{symbol.lower()}"}}
            )
            for symbol in symbols
            for channel in channels
        )

    def parse(self, raw: bytes | str) -> Sequence[Trade | Bar | Reconnect]:
        """A ``trade`` event of a ``live_trades_*`` channel gives one trade; acks, heartbeats and
        other channels give ``[]``."""
        try:
            event = _DECODER.decode(raw)
        except Exception:  # the slow path classifies every failure
            return self._parse_slow(raw)
        if not event.channel.startswith(_CHANNEL_PREFIX):
            return []  # a trade event of a channel that is not ours
        return [_trade(event)]

    def _parse_slow(self, raw: bytes | str) -> Sequence[Trade | Bar | Reconnect]:
        frame = common.frame_object(common.decode_any(raw))
        kind = frame.get("event")
        if kind == "bts:error":
            data = frame.get("data")
            message = data.get("message") if isinstance(data, dict) else data
            raise FrameError("exchange_error", common.bounded(str(message)))
        if kind == "bts:request_reconnect":
            return [REQUEST_RECONNECT]
        if kind != "trade":
            return []  # subscription acks, heartbeats, order books, ...
        channel = frame.get("channel")
        if isinstance(channel, str) and not channel.startswith(_CHANNEL_PREFIX):
            return []
        return [_trade(common.convert(frame, _TradeEvent))]

    def bars_request(self, symbol: str, start_ms: int, end_ms: int) -> RestRequest:
        """``GET /api/v2/ohlc/<pair>/`` for the first 1000 minutes of ``[start_ms, end_ms)``.

        ``start`` and ``end`` are open times in seconds; given both, Bitstamp documents that it
        uses ``end`` (``limit`` rows up to it). ``limit`` is exactly the page's minutes, so the
        page is the same whichever bound Bitstamp honours.
        """
        common.check_range(start_ms, end_ms)
        first_ms = -(-start_ms // MINUTE_MS) * MINUTE_MS
        page_end_ms = min(end_ms, first_ms + _MAX_CANDLES * MINUTE_MS)
        last_ms = max(first_ms, (page_end_ms - 1) // MINUTE_MS * MINUTE_MS)
        return RestRequest(
            path=f"/api/v2/ohlc/{symbol.lower()}/",
            params={
                "step": "60",
                "start": str(first_ms // 1000),
                "end": str(last_ms // 1000),
                "limit": str((last_ms - first_ms) // MINUTE_MS + 1),
                "exclude_current_candle": "true",
            },
        )

    def parse_bars(self, symbol: str, raw: bytes) -> list[Bar]:
        """OHLC objects -> bars, oldest first, ``trades=0``."""
        response = common.response_object(raw, "OHLC")
        data = response.get("data")
        if not isinstance(data, dict):
            if "errors" in response or "code" in response or response.get("status") == "error":
                raise FrameError("exchange_error", common.bounded(str(response)))
            raise FrameError("missing_field", "OHLC response has no data object")
        rows = data.get("ohlc")
        if not isinstance(rows, list):
            raise FrameError("bad_type", "OHLC data has no list of candles")
        return common.oldest_first(_ohlc_bar(symbol, row) for row in rows)


def _trade(event: _TradeEvent) -> Trade:
    pair = event.channel[len(_CHANNEL_PREFIX) :]
    if not pair or not pair.isascii() or not pair.isalnum():
        raise FrameError("bad_value", common.bounded(f"channel {event.channel!r} names no pair"))
    t = event.data
    return Trade(_NAME, pair.upper(), t.trade_id, t.micros // 1000, t.price, t.qty, _TAKER[t.taker])


def _ohlc_bar(symbol: str, row: Any) -> Bar:
    """``{"timestamp": s, "open", "high", "low", "close", "volume"}``, all strings."""
    if not isinstance(row, dict):
        raise FrameError("bad_type", "OHLC row is not an object")
    missing = [k for k in ("timestamp", "open", "high", "low", "close", "volume") if k not in row]
    if missing:
        raise FrameError("missing_field", f"OHLC row lacks {missing}")
    time_s = common.cell_integer_text(row["timestamp"], "OHLC timestamp")
    open_, high, low, close, volume = (
        common.cell_number(row[k], f"OHLC {k}") for k in ("open", "high", "low", "close", "volume")
    )
    open_time_ms = common.seconds_to_ms(time_s, "OHLC timestamp")
    return common.checked_bar(_NAME, symbol, open_time_ms, open_, high, low, close, volume, 0)


BITSTAMP: Final = BitstampSpot()
