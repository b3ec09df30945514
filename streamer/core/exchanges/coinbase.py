"""Coinbase Exchange: the ``matches`` channel of ``wss://ws-feed.exchange.coinbase.com``.

A real frame, recorded by cryptofeed
(cryptofeed's ``coinbase_pro.jsonl.gz`` recording)::

    {"type":"match","trade_id":1568268,"maker_order_id":"cac01d6d-8009-4c33-8e0d-f7f853d7c1bc",
     "taker_order_id":"3dec64e4-f6ad-4ca8-ad3f-e5b1a0eb0d06","side":"sell","size":"450",
     "price":"0.791","product_id":"SKL-USD","sequence":201390075,
     "time":"2021-04-17T16:43:37.121358Z"}

``side`` is the side of the resting (maker) order, so the taker, which is what ``Trade``
records, is on the other side: ``"side":"sell"`` above is a taker buy. ``last_match`` is the
most recent match, sent once after subscribing; it is a real trade and is returned like
``match`` (the aggregator drops it as a duplicate if it was already seen).

REST backfill uses ``GET /products/{id}/candles``: rows ``[time_s, low, high, open, close,
volume]``, newest first, at most 300 per request. Coinbase candles carry no trade count, so bars
parsed from them have ``trades=0``; do not read ``trades == 0`` as "no trades" for such bars.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec

from streamer.core.exchanges import _common as common
from streamer.core.exchanges._common import iso8601_to_ms
from streamer.core.exchanges.base import FrameError, RestRequest, TradeIdMark, VenueRules
from streamer.core.types import Bar, Trade

__all__ = ["COINBASE", "CoinbaseExchange", "iso8601_to_ms"]

_NAME: Final = "coinbase"
_CHANNELS: Final = ("matches",)
_HEARTBEAT: Final = "heartbeat"
_MAX_CANDLES: Final = 300
# [time_s, low, high, open, close, volume]: no trade count in Coinbase candles
_CANDLE_ROW: Final = common.BarColumns(
    "candle", columns=6, low=1, high=2, open=3, time_in_seconds=True
)


class _Match(msgspec.Struct, tag_field="type", tag="match", gc=False):
    trade_id: common.TradeIdField
    maker_side: Literal["buy", "sell"] = msgspec.field(name="side")
    size: common.AmountField
    price: common.AmountField
    product_id: common.SymbolField
    time: str


class _LastMatch(_Match, tag="last_match", gc=False):
    pass


# strict=False: Coinbase sends decimals as strings ("14.7851"); msgspec converts them in C.
_MATCH_DECODER: Final = msgspec.json.Decoder(_Match | _LastMatch, strict=False)
_MATCH_TYPES: Final[dict[str, type[_Match]]] = {"match": _Match, "last_match": _LastMatch}
_TAKER_SIDE: Final[dict[str, Literal["buy", "sell"]]] = {"buy": "sell", "sell": "buy"}


def _iso_seconds(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CoinbaseExchange(common.Venue):
    """Coinbase Exchange protocol knowledge; stateless and shared."""

    name = _NAME
    default_ws_url = "wss://ws-feed.exchange.coinbase.com"
    default_rest_url = "https://api.exchange.coinbase.com"
    channels = _CHANNELS
    # Coinbase allows 8 connection requests per second per IP (bursts of 20); use half.
    connect_attempts_per_s = 4.0
    max_bars_per_request = _MAX_CANDLES
    # Public REST: 10 requests per second per IP (bursts of 15); stay near 6.7/s.
    min_request_interval_s = 0.15
    rules = VenueRules(
        # each product's trade ids count up by one: a jump (or a heartbeat's newer
        # last_trade_id) means missed matches
        sequential_trade_ids=True,
        # candles leave out minutes without trades: the backfill fills them in as flat bars
        omits_quiet_minutes=True,
    )

    def check_symbols(self, symbols: list[str]) -> None:
        common.check_pair_symbols(_NAME, symbols)

    def subscribe(self, symbols: list[str], channels: list[str]) -> tuple[str, ...]:
        """One subscribe message per connection, ``max_streams_per_connection`` products each,
        with the heartbeat channel: a quiet product still sends one a second, so its
        connection is not taken for dead, and its last_trade_id shows missed matches."""
        message = {"type": "subscribe", "product_ids": symbols, "channels": [*channels, _HEARTBEAT]}
        return (common.encode_json(message),)

    def parse(self, raw: bytes | str) -> Sequence[Trade | Bar | TradeIdMark]:
        """``match`` and ``last_match`` give one trade, ``heartbeat`` a ``TradeIdMark``,
        ``error`` raises, the rest give ``[]``."""
        try:
            match = _MATCH_DECODER.decode(raw)
        except Exception:  # the slow path classifies every failure
            return self._parse_slow(raw)
        return [_trade(match)]

    def _parse_slow(self, raw: bytes | str) -> Sequence[Trade | Bar | TradeIdMark]:
        frame = common.frame_object(common.decode_any(raw))
        kind = frame.get("type")
        if kind == "error":
            detail = f"{frame.get('message')}: {frame.get('reason')}"
            raise FrameError("exchange_error", common.bounded(detail))
        if kind == _HEARTBEAT:
            return _heartbeat(frame)
        match_type = _MATCH_TYPES.get(kind) if isinstance(kind, str) else None
        if match_type is None:
            return []  # subscriptions, ticker, l2update, ...
        return [_trade(common.convert(frame, match_type))]

    def bars_request(self, symbol: str, start_ms: int, end_ms: int) -> RestRequest:
        """The first page of at most 300 one-minute candles opening in ``[start_ms, end_ms)``.

        Coinbase rejects a range of more than 300 candles and treats ``end`` as inclusive, so
        the page ends one second before the next page's first minute.
        """
        end = common.page_end_ms(start_ms, end_ms, _MAX_CANDLES)
        return RestRequest(
            path=f"/products/{symbol}/candles",
            params={
                "granularity": "60",
                "start": _iso_seconds(start_ms),
                "end": _iso_seconds(end - 1000),
            },
        )

    def parse_bars(self, symbol: str, raw: bytes) -> list[Bar]:
        """Candles (``_CANDLE_ROW``, newest first) -> bars, oldest first, ``trades=0`` because
        Coinbase does not report a trade count."""
        rows = common.decode_any(raw)
        if isinstance(rows, dict) and "message" in rows:
            raise FrameError("exchange_error", common.bounded(str(rows["message"])))
        if not isinstance(rows, list):
            raise FrameError("bad_type", "candles response is not a list")
        return common.oldest_first(common.row_bar(_NAME, symbol, row, _CANDLE_ROW) for row in rows)


class _Heartbeat(msgspec.Struct, gc=False):
    product_id: common.SymbolField
    last_trade_id: common.TradeIdField
    time: str


def _heartbeat(frame: dict[str, Any]) -> list[TradeIdMark]:
    """``{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD",
    "time":"2014-11-07T08:19:28.464459Z"}`` (Coinbase's documented example; the recordings
    hold no heartbeat)."""
    beat = common.convert(frame, _Heartbeat)
    return [
        TradeIdMark(beat.product_id, beat.last_trade_id, common.frame_time_ms(beat.time, "time"))
    ]


def _trade(match: _Match) -> Trade:
    return Trade(
        _NAME,
        match.product_id,
        match.trade_id,
        common.frame_time_ms(match.time, "time"),
        match.price,
        match.size,
        _TAKER_SIDE[match.maker_side],
    )


COINBASE: Final = CoinbaseExchange()
