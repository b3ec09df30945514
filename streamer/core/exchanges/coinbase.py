"""Coinbase Exchange: the ``matches`` channel of ``wss://ws-feed.exchange.coinbase.com``.

A real frame, recorded by cryptofeed
(``../shared/data/ws_messages/cryptofeed/coinbase_pro.jsonl.gz``)::

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

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from streamer.core.exchanges._common import (
    INT64_MAX,
    TRADE_AMOUNT_MAX,
    bounded,
    cell_integer,
    cell_number,
    check_pair_symbols,
    check_subscription,
    checked_bar,
    decode_any,
    iso8601_to_ms,
    validation_reason,
)
from streamer.core.exchanges.base import ConnectionPlan, FrameError, RestRequest
from streamer.core.types import MINUTE_MS, Bar, Trade

__all__ = ["COINBASE", "CoinbaseExchange", "iso8601_to_ms"]

_NAME: Final = "coinbase"
_CHANNELS: Final = ("matches",)
_MAX_CANDLES: Final = 300

_Id = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
_Symbol = Annotated[str, msgspec.Meta(min_length=1)]
_Amount = Annotated[float, msgspec.Meta(gt=0.0, le=TRADE_AMOUNT_MAX)]


class _Match(msgspec.Struct, tag_field="type", tag="match", gc=False):
    trade_id: _Id
    maker_side: Literal["buy", "sell"] = msgspec.field(name="side")
    size: _Amount
    price: _Amount
    product_id: _Symbol
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

    def connections(
        self, ws_url: str, symbols: list[str], channels: list[str]
    ) -> list[ConnectionPlan]:
        """One subscribe message per connection, ``max_streams_per_connection`` products each."""
        check_subscription(_NAME, symbols, channels, _CHANNELS)
        check_pair_symbols(_NAME, symbols)
        per_connection = max(1, self.max_streams_per_connection // len(channels))
        plans: list[ConnectionPlan] = []
        for first in range(0, len(symbols), per_connection):
            chunk = symbols[first : first + per_connection]
            message = {"type": "subscribe", "product_ids": chunk, "channels": list(channels)}
            plans.append(
                ConnectionPlan(
                    url=ws_url,
                    symbols=tuple(chunk),
                    subscribe=(msgspec.json.encode(message).decode(),),
                )
            )
        return plans

    def parse(self, raw: bytes | str) -> list[Trade | Bar]:
        """``match`` and ``last_match`` give one trade, ``error`` raises, the rest give ``[]``."""
        try:
            match = _MATCH_DECODER.decode(raw)
        except Exception:  # the slow path classifies every failure
            return self._parse_slow(raw)
        return [_trade(match)]

    def _parse_slow(self, raw: bytes | str) -> list[Trade | Bar]:
        frame = decode_any(raw)
        if not isinstance(frame, dict):
            raise FrameError("bad_type", f"top-level JSON {type(frame).__name__}, not an object")
        kind = frame.get("type")
        if kind == "error":
            detail = f"{frame.get('message')}: {frame.get('reason')}"
            raise FrameError("exchange_error", bounded(detail))
        match_type = _MATCH_TYPES.get(kind) if isinstance(kind, str) else None
        if match_type is None:
            return []  # subscriptions, heartbeat, ticker, l2update, ...
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
