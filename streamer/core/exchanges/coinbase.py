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

from streamer.core.exchanges._common import (
    INT64_MAX,
    AmountField,
    SymbolField,
    TradeIdField,
    bounded,
    cell_integer,
    cell_number,
    check_pair_symbols,
    check_subscription,
    checked_bar,
    decode_any,
    encode_json,
    iso8601_to_ms,
    split_connections,
    validation_reason,
)
from streamer.core.exchanges.base import ConnectionPlan, FrameError, RestRequest, TradeIdMark
from streamer.core.types import MINUTE_MS, Bar, Trade

__all__ = ["COINBASE", "CoinbaseExchange", "iso8601_to_ms"]

_NAME: Final = "coinbase"
_CHANNELS: Final = ("matches",)
_HEARTBEAT: Final = "heartbeat"
_MAX_CANDLES: Final = 300


class _Match(msgspec.Struct, tag_field="type", tag="match", gc=False):
    trade_id: TradeIdField
    maker_side: Literal["buy", "sell"] = msgspec.field(name="side")
    size: AmountField
    price: AmountField
    product_id: SymbolField
    time: str


class _LastMatch(_Match, tag="last_match", gc=False):
    pass


# strict=False: Coinbase sends decimals as strings ("14.7851"); msgspec converts them in C.
_MATCH_DECODER: Final = msgspec.json.Decoder(_Match | _LastMatch, strict=False)
_MATCH_TYPES: Final[dict[str, type[_Match]]] = {"match": _Match, "last_match": _LastMatch}
_TAKER_SIDE: Final[dict[str, Literal["buy", "sell"]]] = {"buy": "sell", "sell": "buy"}


def _iso_seconds(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CoinbaseExchange:
    """Coinbase Exchange protocol knowledge; stateless and shared."""

    name: str = _NAME
    default_ws_url: str = "wss://ws-feed.exchange.coinbase.com"
    default_rest_url: str = "https://api.exchange.coinbase.com"
    # No documented per-connection cap; a modest one keeps a reconnect cheap.
    max_streams_per_connection: int = 100
    max_connection_age_s: float | None = None
    # Coinbase allows 8 connection requests per second per IP (bursts of 20); use half.
    connect_attempts_per_s: float = 4.0
    max_bars_per_request: int = _MAX_CANDLES
    # Public REST: 10 requests per second per IP (bursts of 15); stay near 6.7/s.
    min_request_interval_s: float = 0.15
    # each product's trade ids count up by one: a jump (or a heartbeat's newer last_trade_id)
    # means missed matches
    sequential_trade_ids: bool = True
    # candles leave out minutes without trades: the backfill fills them in as flat bars
    omits_quiet_minutes: bool = True

    def connections(
        self, ws_url: str, symbols: list[str], channels: list[str]
    ) -> list[ConnectionPlan]:
        """One subscribe message per connection, ``max_streams_per_connection`` products each,
        with the heartbeat channel: a quiet product still sends one a second, so its
        connection is not taken for dead, and its last_trade_id shows missed matches."""
        check_subscription(_NAME, symbols, channels, _CHANNELS)
        check_pair_symbols(_NAME, symbols)

        def subscribe(chunk: list[str]) -> tuple[str, ...]:
            message = {
                "type": "subscribe",
                "product_ids": chunk,
                "channels": [*channels, _HEARTBEAT],
            }
            return (encode_json(message),)

        return split_connections(
            ws_url, symbols, channels, self.max_streams_per_connection, subscribe
        )

    def parse(self, raw: bytes | str) -> Sequence[Trade | Bar | TradeIdMark]:
        """``match`` and ``last_match`` give one trade, ``heartbeat`` a ``TradeIdMark``,
        ``error`` raises, the rest give ``[]``."""
        try:
            match = _MATCH_DECODER.decode(raw)
        except Exception:  # the slow path classifies every failure
            return self._parse_slow(raw)
        return [_trade(match)]

    def _parse_slow(self, raw: bytes | str) -> Sequence[Trade | Bar | TradeIdMark]:
        frame = decode_any(raw)
        if not isinstance(frame, dict):
            raise FrameError("bad_type", f"top-level JSON {type(frame).__name__}, not an object")
        kind = frame.get("type")
        if kind == "error":
            detail = f"{frame.get('message')}: {frame.get('reason')}"
            raise FrameError("exchange_error", bounded(detail))
        if kind == _HEARTBEAT:
            return _heartbeat(frame)
        match_type = _MATCH_TYPES.get(kind) if isinstance(kind, str) else None
        if match_type is None:
            return []  # subscriptions, ticker, l2update, ...
        try:
            match = msgspec.convert(frame, match_type, strict=False)
        except msgspec.ValidationError as exc:
            raise FrameError(validation_reason(exc), bounded(str(exc))) from None
        return [_trade(match)]

    def bars_request(self, symbol: str, start_ms: int, end_ms: int) -> RestRequest:
        """The first page of at most 300 one-minute candles opening in ``[start_ms, end_ms)``.

        Coinbase rejects a range of more than 300 candles and treats ``end`` as inclusive, so
        the page ends one second before the next page's first minute.
        """
        if end_ms <= start_ms:
            raise ValueError(f"empty range [{start_ms}, {end_ms})")
        page_end_ms = min(end_ms, start_ms + _MAX_CANDLES * MINUTE_MS)
        return RestRequest(
            path=f"/products/{symbol}/candles",
            params={
                "granularity": "60",
                "start": _iso_seconds(start_ms),
                "end": _iso_seconds(page_end_ms - 1000),
            },
        )

    def parse_bars(self, symbol: str, raw: bytes) -> list[Bar]:
        """Candles ``[time_s, low, high, open, close, volume]`` (newest first) -> bars, oldest
        first, ``trades=0`` because Coinbase does not report a trade count."""
        rows = decode_any(raw)
        if isinstance(rows, dict) and "message" in rows:
            raise FrameError("exchange_error", bounded(str(rows["message"])))
        if not isinstance(rows, list):
            raise FrameError("bad_type", "candles response is not a list")
        bars = [_candle_bar(symbol, row) for row in rows]
        bars.sort(key=lambda bar: bar.open_time_ms)
        return bars


class _Heartbeat(msgspec.Struct, gc=False):
    product_id: SymbolField
    last_trade_id: TradeIdField
    time: str


def _heartbeat(frame: dict[str, Any]) -> list[TradeIdMark]:
    """``{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD",
    "time":"2014-11-07T08:19:28.464459Z"}`` (Coinbase's documented example; the recordings
    hold no heartbeat)."""
    try:
        beat = msgspec.convert(frame, _Heartbeat, strict=False)
        ts_ms = iso8601_to_ms(beat.time)
    except msgspec.ValidationError as exc:
        raise FrameError(validation_reason(exc), bounded(str(exc))) from None
    except (ValueError, OverflowError) as exc:
        raise FrameError("bad_value", bounded(str(exc))) from None
    if not 0 < ts_ms <= INT64_MAX:
        raise FrameError("bad_value", f"time {beat.time!r} is not after 1970")
    return [TradeIdMark(beat.product_id, beat.last_trade_id, ts_ms)]


def _trade(match: _Match) -> Trade:
    try:
        ts_ms = iso8601_to_ms(match.time)
    except (ValueError, OverflowError) as exc:
        raise FrameError("bad_value", bounded(str(exc))) from None
    if not 0 < ts_ms <= INT64_MAX:
        raise FrameError("bad_value", f"time {match.time!r} is not after 1970")
    return Trade(
        _NAME,
        match.product_id,
        match.trade_id,
        ts_ms,
        match.price,
        match.size,
        _TAKER_SIDE[match.maker_side],
    )


def _candle_bar(symbol: str, row: Any) -> Bar:
    """``[time_s, low, high, open, close, volume]``: no trade count in Coinbase candles."""
    if not isinstance(row, list):
        raise FrameError("bad_type", "candle row is not an array")
    if len(row) < 6:
        raise FrameError("missing_field", f"candle row has {len(row)} columns, expected 6")
    time_s = cell_integer(row[0], "candle time")
    low, high, open_, close, volume = (
        cell_number(row[i], f"candle {what}")
        for i, what in ((1, "low"), (2, "high"), (3, "open"), (4, "close"), (5, "volume"))
    )
    if not 0 < time_s <= INT64_MAX // 1000:
        raise FrameError("bad_value", f"candle time {time_s} out of range")
    return checked_bar(_NAME, symbol, time_s * 1000, open_, high, low, close, volume, 0)


COINBASE: Final = CoinbaseExchange()
