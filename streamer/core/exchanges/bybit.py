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
from typing import Annotated, Final, Literal

import msgspec

from streamer.core.exchanges import _common as common
from streamer.core.exchanges.base import FrameError, Reconnect, RestRequest, VenueRules
from streamer.core.types import Bar, Side, Trade

__all__ = ["BYBIT", "KEEPALIVE_MESSAGE", "BybitSpot"]

_NAME: Final = "bybit"
_CHANNELS: Final = ("publicTrade",)
_TOPIC_PREFIX: Final = "publicTrade."
_ARGS_PER_SUBSCRIBE: Final = 10  # Bybit spot takes at most 10 topics per subscribe request
_MAX_KLINES: Final = 1000
KEEPALIVE_MESSAGE: Final = '{"op":"ping"}'
# [start, open, high, low, close, volume, turnover], all strings
_KLINE_ROW: Final = common.BarColumns("kline", columns=7, time_as_text=True)

_Time = Annotated[int, msgspec.Meta(gt=0, le=common.INT64_MAX)]
_TAKER: Final[dict[str, Side]] = {"Buy": "buy", "Sell": "sell"}


class _Trade(msgspec.Struct, gc=False):
    trade_id: common.TextTradeIdField = msgspec.field(name="i")
    ts: _Time = msgspec.field(name="T")
    symbol: common.SymbolField = msgspec.field(name="s")
    side: Literal["Buy", "Sell"] = msgspec.field(name="S")
    qty: common.AmountField = msgspec.field(name="v")
    price: common.AmountField = msgspec.field(name="p")


class _Push(msgspec.Struct, gc=False):
    topic: str
    data: list[_Trade]


# strict=False: Bybit sends prices and sizes as strings; msgspec converts them in C. (Text
# fields stay strict: a number where the id belongs is refused.)
_DECODER: Final = msgspec.json.Decoder(_Push, strict=False)


class BybitSpot(common.Venue):
    """Bybit spot (API v5) protocol knowledge; stateless and shared.

    Bybit limits the subscribe args of one connection by length (21,000 characters), not by
    count; the common cap of 100 keeps a reconnect cheap.
    """

    name = _NAME
    default_ws_url = "wss://stream.bybit.com/v5/public/spot"
    default_rest_url = "https://api.bybit.com"
    channels = _CHANNELS
    # Bybit allows 500 connections per 5 minutes per IP (1.7/s); stay lower.
    connect_attempts_per_s = 1.0
    max_bars_per_request = _MAX_KLINES
    # Market endpoints: 600 requests per 5 s per IP; 10 req/s stays far below.
    min_request_interval_s = 0.1
    # sent every 20 s (the default interval), as Bybit recommends
    rules = VenueRules(keepalive_message=KEEPALIVE_MESSAGE)

    def check_symbols(self, symbols: list[str]) -> None:
        common.check_compact_symbols(_NAME, symbols, "BTCUSDT")

    def subscribe(self, symbols: list[str], channels: list[str]) -> tuple[str, ...]:
        """``subscribe`` ops of at most 10 topics, ``publicTrade.<symbol>`` each."""
        topics = [f"{channel}.{symbol}" for symbol in symbols for channel in channels]
        n = _ARGS_PER_SUBSCRIBE
        return tuple(
            common.encode_json({"op": "subscribe", "args": topics[i : i + n]})
            for i in range(0, len(topics), n)
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
        frame = common.frame_object(common.decode_any(raw))
        if frame.get("success") is False:
            raise FrameError("exchange_error", common.bounded(str(frame.get("ret_msg"))))
        topic = frame.get("topic")
        if not isinstance(topic, str):
            return []  # pong, subscribe ack
        if topic.startswith("trade."):
            raise FrameError(
                "unsupported_protocol",
                common.bounded(f"Bybit pre-v5 topic {topic!r}; this parser speaks v5 publicTrade"),
            )
        if not topic.startswith(_TOPIC_PREFIX):
            return []  # orderbook, tickers, kline, ...: not ours
        return _trades(common.convert(frame, _Push))

    def bars_request(self, symbol: str, start_ms: int, end_ms: int) -> RestRequest:
        """``GET /v5/market/kline`` for the first 1000 minutes of ``[start_ms, end_ms)``.

        The page is bounded on both sides to what one answer holds, so which end Bybit anchors
        a longer range to does not matter; ``end`` is inclusive, hence one ms before the next
        page's first minute.
        """
        end = common.page_end_ms(start_ms, end_ms, _MAX_KLINES)
        return RestRequest(
            path="/v5/market/kline",
            params={
                "category": "spot",
                "symbol": symbol,
                "interval": "1",
                "start": str(start_ms),
                "end": str(end - 1),
                "limit": str(_MAX_KLINES),
            },
        )

    def parse_bars(self, symbol: str, raw: bytes) -> list[Bar]:
        """Kline rows (newest first) -> bars, oldest first, ``trades=0``."""
        response = common.response_object(raw, "kline")
        common.check_status(response, "kline", "retCode", 0, "retMsg")
        result = response.get("result")
        if not isinstance(result, dict) or "list" not in result:
            raise FrameError("missing_field", "kline response has no result list")
        rows = result["list"]
        if not isinstance(rows, list):
            raise FrameError("bad_type", "kline result list is not a list")
        return common.oldest_first(common.row_bar(_NAME, symbol, row, _KLINE_ROW) for row in rows)


def _trades(push: _Push) -> list[Trade | Bar | Reconnect]:
    return [
        Trade(_NAME, t.symbol, t.trade_id, t.ts, t.price, t.qty, _TAKER[t.side]) for t in push.data
    ]


BYBIT: Final = BybitSpot()
