"""Bybit spot, API v5: the ``publicTrade.<symbol>`` topic of
``wss://stream.bybit.com/v5/public/spot``.

The documented push (https://bybit-exchange.github.io/docs/v5/websocket/public/trade; no v5
recording exists in this project)::

    {"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":[{
     "T":1672304486865,"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50","L":"PlusTick",
     "i":"20f43950-d8dd-5b31-9112-a178eb6023af","BT":false,"seq":1783284617}]}

``S`` is the taker's side, ``T`` the fill time (ms), ``v`` and ``p`` decimal strings. Trade ids
``i`` are TEXT, not numbers: UUIDs on the derivatives channels, digit strings on spot; they are
kept as the venue's text (``Trade.trade_id`` is then a ``str`` for every Bybit trade, never an
int), which de-duplicates but has no continuity to detect holes with. One push may carry many
trades (sorted by fill time); one invalid trade rejects the whole push (as on Kraken).

Bybit's older public API (v2 ``wss://stream.bybit.com/realtime_public``, cryptofeed's
``bybit_linear.jsonl.gz`` recording) used ``trade.<symbol>`` topics with other field names;
those frames raise ``FrameError("unsupported_protocol")``, so a feed pointed at an old URL
shows in the rejected-frames metric instead of as silently missing trades.

Control frames: Bybit recommends a ``{"op":"ping"}`` (``KEEPALIVE_MESSAGE``) every 20 s, answered
by ``{"success":true,"ret_msg":"pong",...,"op":"ping"}``; that and subscribe acks give nothing,
while a failed request (``"success":false``) raises ``FrameError("exchange_error")``.

Symbols: Bybit's ``BTCUSDT`` is canonical as it is. REST backfill uses ``GET /v5/market/kline``
(``category=spot``): rows ``[start, open, high, low, close, volume, turnover]``, all strings,
NEWEST FIRST, at most 1000 a page, no trade count (``trades=0``). A range that reaches the
current minute gets it unfinished, so callers ask only for closed minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

import msgspec

from streamer.core.exchanges._common import (
    INT64_MAX,
    AmountField,
    SymbolField,
    TextTradeIdField,
    bounded,
    cell_integer_text,
    cell_number,
    check_compact_symbols,
    check_subscription,
    checked_bar,
    decode_any,
    encode_json,
    split_connections,
    validation_reason,
)
from streamer.core.exchanges.base import ConnectionPlan, FrameError, Reconnect, RestRequest
from streamer.core.types import MINUTE_MS, Bar, Side, Trade

__all__ = ["BYBIT", "KEEPALIVE_INTERVAL_S", "KEEPALIVE_MESSAGE", "BybitSpot"]

_NAME: Final = "bybit"
_CHANNELS: Final = ("publicTrade",)
_TOPIC_PREFIX: Final = "publicTrade."
_ARGS_PER_SUBSCRIBE: Final = 10  # Bybit spot takes at most 10 topics per subscribe request
_MAX_KLINES: Final = 1000
KEEPALIVE_MESSAGE: Final = '{"op":"ping"}'
KEEPALIVE_INTERVAL_S: Final = 20.0

_Time = Annotated[int, msgspec.Meta(gt=0, le=INT64_MAX)]
_TAKER: Final[dict[str, Side]] = {"Buy": "buy", "Sell": "sell"}


class _Trade(msgspec.Struct, gc=False):
    trade_id: TextTradeIdField = msgspec.field(name="i")
    ts: _Time = msgspec.field(name="T")
    symbol: SymbolField = msgspec.field(name="s")
    side: Literal["Buy", "Sell"] = msgspec.field(name="S")
    qty: AmountField = msgspec.field(name="v")
    price: AmountField = msgspec.field(name="p")


class _Push(msgspec.Struct, gc=False):
    topic: str
    data: list[_Trade]


# strict=False: Bybit sends prices and sizes as strings; msgspec converts them in C. (Text
# fields stay strict: a number where the id belongs is refused.)
_DECODER: Final = msgspec.json.Decoder(_Push, strict=False)


class BybitSpot:
    """Bybit spot (API v5) protocol knowledge; stateless and shared."""

    name: str = _NAME
    default_ws_url: str = "wss://stream.bybit.com/v5/public/spot"
    default_rest_url: str = "https://api.bybit.com"
    # Bybit limits the subscribe args of one connection by length (21,000 characters), not by
    # count; a modest cap keeps a reconnect cheap.
    max_streams_per_connection: int = 100
    max_connection_age_s: float | None = None
    # Bybit allows 500 connections per 5 minutes per IP (1.7/s); stay lower.
    connect_attempts_per_s: float = 1.0
    max_bars_per_request: int = _MAX_KLINES
    # Market endpoints: 600 requests per 5 s per IP; 10 req/s stays far below.
    min_request_interval_s: float = 0.1
    # an application-level ping the feed sends every ``keepalive_interval_s``
    keepalive_message: str | None = KEEPALIVE_MESSAGE
    keepalive_interval_s: float = KEEPALIVE_INTERVAL_S

    def connections(
        self, ws_url: str, symbols: list[str], channels: list[str]
    ) -> list[ConnectionPlan]:
        """``subscribe`` ops of at most 10 topics, ``publicTrade.<symbol>`` each."""
        check_subscription(_NAME, symbols, channels, _CHANNELS)
        check_compact_symbols(_NAME, symbols, "BTCUSDT")

        def subscribe(chunk: list[str]) -> tuple[str, ...]:
            topics = [f"{channel}.{symbol}" for symbol in chunk for channel in channels]
            n = _ARGS_PER_SUBSCRIBE
            return tuple(
                encode_json({"op": "subscribe", "args": topics[i : i + n]})
                for i in range(0, len(topics), n)
            )

        return split_connections(
            ws_url, symbols, channels, self.max_streams_per_connection, subscribe
        )

    def parse(self, raw: bytes | str) -> Sequence[Trade | Bar | Reconnect]:
        """A ``publicTrade`` push gives its trades; pongs, acks and other topics give ``[]``."""
        try:
            push = _DECODER.decode(raw)
        except Exception:  # the slow path classifies every failure
            return self._parse_slow(raw)
        if not push.topic.startswith(_TOPIC_PREFIX):
            return self._parse_slow(raw)
        return _trades(push)

    def _parse_slow(self, raw: bytes | str) -> Sequence[Trade | Bar | Reconnect]:
        frame = decode_any(raw)
        if not isinstance(frame, dict):
            raise FrameError("bad_type", f"top-level JSON {type(frame).__name__}, not an object")
        if frame.get("success") is False:
            raise FrameError("exchange_error", bounded(str(frame.get("ret_msg"))))
        topic = frame.get("topic")
        if not isinstance(topic, str):
            return []  # pong, subscribe ack
        if topic.startswith("trade."):
            raise FrameError(
                "unsupported_protocol",
                bounded(f"Bybit pre-v5 topic {topic!r}; this parser speaks v5 publicTrade"),
            )
        if not topic.startswith(_TOPIC_PREFIX):
            return []  # orderbook, tickers, kline, ...: not ours
        try:
            push = msgspec.convert(frame, _Push, strict=False)
        except msgspec.ValidationError as exc:
            raise FrameError(validation_reason(exc), bounded(str(exc))) from None
        return _trades(push)

    def bars_request(self, symbol: str, start_ms: int, end_ms: int) -> RestRequest:
        """``GET /v5/market/kline`` for the first 1000 minutes of ``[start_ms, end_ms)``.

        The page is bounded on both sides to what one answer holds, so which end Bybit anchors
        a longer range to does not matter; ``end`` is inclusive, hence one ms before the next
        page's first minute.
        """
        if end_ms <= start_ms:
            raise ValueError(f"empty range [{start_ms}, {end_ms})")
        page_end_ms = min(end_ms, start_ms + _MAX_KLINES * MINUTE_MS)
        return RestRequest(
            path="/v5/market/kline",
            params={
                "category": "spot",
                "symbol": symbol,
                "interval": "1",
                "start": str(start_ms),
                "end": str(page_end_ms - 1),
                "limit": str(_MAX_KLINES),
            },
        )

    def parse_bars(self, symbol: str, raw: bytes) -> list[Bar]:
        """Kline rows (newest first) -> bars, oldest first, ``trades=0``."""
        response = decode_any(raw)
        if not isinstance(response, dict):
            raise FrameError("bad_type", "kline response is not an object")
        if "retCode" not in response:
            raise FrameError("missing_field", "kline response has no retCode")
        code = response["retCode"]
        if code != 0:
            raise FrameError("exchange_error", bounded(f"retCode {code}: {response.get('retMsg')}"))
        result = response.get("result")
        if not isinstance(result, dict) or "list" not in result:
            raise FrameError("missing_field", "kline response has no result list")
        rows = result["list"]
        if not isinstance(rows, list):
            raise FrameError("bad_type", "kline result list is not a list")
        bars = [_kline_bar(symbol, row) for row in rows]
        bars.sort(key=lambda bar: bar.open_time_ms)
        return bars


def _trades(push: _Push) -> list[Trade | Bar | Reconnect]:
    return [
        Trade(_NAME, t.symbol, t.trade_id, t.ts, t.price, t.qty, _TAKER[t.side]) for t in push.data
    ]


def _kline_bar(symbol: str, row: Any) -> Bar:
    """``[start, open, high, low, close, volume, turnover]``, all strings."""
    if not isinstance(row, list):
        raise FrameError("bad_type", "kline row is not an array")
    if len(row) < 6:
        raise FrameError("missing_field", f"kline row has {len(row)} columns, expected 7")
    open_, high, low, close, volume = (
        cell_number(row[i], f"kline {what}")
        for i, what in ((1, "open"), (2, "high"), (3, "low"), (4, "close"), (5, "volume"))
    )
    open_time_ms = cell_integer_text(row[0], "kline start")
    return checked_bar(_NAME, symbol, open_time_ms, open_, high, low, close, volume, 0)


BYBIT: Final = BybitSpot()
