"""OKX spot: the ``trades`` channel of ``wss://ws.okx.com:8443/ws/v5/public``.

A real frame, recorded by cryptofeed (cryptofeed's ``okx.jsonl.gz`` recording, 2022-05-13)::

    {"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",
     "tradeId":"338476307","px":"30236","sz":"0.0002","side":"buy","ts":"1652459224818"}]}

``side`` is the taker's side. Every value is a string, the trade id too: OKX trade ids are
decimal integers that grow per instrument, so they are parsed as ints (cheap de-duplication)
and a non-numeric id is refused as ``bad_type``. One push may carry several trades; one invalid
trade rejects the whole push (as on Kraken). In the 2022 recording the ids count up by one, but
since 2023 OKX may fold a taker order's fills at one price into one trade (its ``count`` field;
the ``trades-all`` channel of ``/ws/v5/business`` has every fill), so the ids may jump without a
loss (no ``sequential_trade_ids``) and an OKX bar's trade count counts those trades, not fills.

Control frames: OKX closes a connection over which nothing was pushed for 30 s, so a quiet
instrument needs a keepalive: the client sends the text ``ping`` (``KEEPALIVE_MESSAGE``) when
nothing arrived for ``KEEPALIVE_INTERVAL_S`` and OKX answers the text ``pong``, which parses to
nothing. Subscribe acks (``{"event":"subscribe",...}``) give nothing, ``{"event":"error",...}``
raises ``FrameError("exchange_error")``, and the notice that the connection will close for a
service upgrade (code 64008, about 30 s ahead) gives a ``Reconnect``.

Symbols: the instrument id ``BTC-USDT`` is already canonical. Only spot pairs (``BASE-QUOTE``)
are subscribed; pushes of futures or swaps (``BTC-USD-220527``, ``UNI-USD-SWAP`` in the
recording) parse under their instrument id, and the feed drops symbols it did not subscribe.

REST backfill uses ``GET /api/v5/market/history-candles``: rows ``[ts, o, h, l, c, vol,
volCcy, volCcyQuote, confirm]``, NEWEST FIRST, at most 100 per request; ``vol`` is in the base
currency for spot. The newest row may be the minute still in progress (``confirm`` ``"0"``):
it is skipped, or a partial bar would replace a complete one. ``/market/candles`` serves only
the latest 1,440 minutes (300 a page); ``bars_request`` cannot tell how old a range is, and
history-candles serves recent minutes as well. OKX candles carry no trade count: ``trades=0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

import msgspec

from streamer.core.exchanges import _common as common
from streamer.core.exchanges.base import FrameError, Reconnect, RestRequest, VenueRules
from streamer.core.types import Bar, Trade

__all__ = ["KEEPALIVE_INTERVAL_S", "KEEPALIVE_MESSAGE", "OKX", "OkxSpot"]

_NAME: Final = "okx"
_CHANNELS: Final = ("trades",)
_MAX_CANDLES: Final = 100  # history-candles page size
SERVICE_UPGRADE: Final = Reconnect("service_upgrade")
_SERVICE_UPGRADE_CODE: Final = "64008"
# OKX drops a connection silent for 30 s; send "ping" well before.
KEEPALIVE_MESSAGE: Final = "ping"
KEEPALIVE_INTERVAL_S: Final = 20.0
# [ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]
_CANDLE_ROW: Final = common.BarColumns("candle", columns=9, time_as_text=True)

_Time = Annotated[int, msgspec.Meta(gt=0, le=common.INT64_MAX)]


class _Trade(msgspec.Struct, gc=False):
    inst_id: common.SymbolField = msgspec.field(name="instId")
    trade_id: common.TradeIdField = msgspec.field(name="tradeId")
    price: common.AmountField = msgspec.field(name="px")
    qty: common.AmountField = msgspec.field(name="sz")
    side: Literal["buy", "sell"]
    ts: _Time


class _Arg(msgspec.Struct, gc=False):
    channel: Literal["trades"]


class _Push(msgspec.Struct, gc=False):
    arg: _Arg
    data: list[_Trade]


# strict=False: OKX sends numbers, ids and times as strings; msgspec converts them in C.
_DECODER: Final = msgspec.json.Decoder(_Push, strict=False)
_PONG: Final = frozenset((b"pong", "pong"))


class OkxSpot(common.Venue):
    """OKX spot protocol knowledge; stateless and shared. OKX documents no per-connection cap
    (only 64 KB of subscribe args)."""

    name = _NAME
    default_ws_url = "wss://ws.okx.com:8443/ws/v5/public"
    default_rest_url = "https://www.okx.com"
    channels = _CHANNELS
    # OKX allows 3 connection requests per second per IP; use half.
    connect_attempts_per_s = 1.5
    max_bars_per_request = _MAX_CANDLES
    # history-candles: 20 requests per 2 s per IP; stay at half.
    min_request_interval_s = 0.2
    rules = VenueRules(
        keepalive_message=KEEPALIVE_MESSAGE, keepalive_interval_s=KEEPALIVE_INTERVAL_S
    )

    def check_symbols(self, symbols: list[str]) -> None:
        common.check_pair_symbols(_NAME, symbols)

    def subscribe(self, symbols: list[str], channels: list[str]) -> tuple[str, ...]:
        """One ``subscribe`` op per connection, one arg per symbol and channel."""
        args = [{"channel": c, "instId": symbol} for symbol in symbols for c in channels]
        return (common.encode_json({"op": "subscribe", "args": args}),)

    def parse(self, raw: bytes | str) -> Sequence[Trade | Bar | Reconnect]:
        """A ``trades`` push gives its trades; ``pong``, acks and other channels give ``[]``."""
        try:
            push = _DECODER.decode(raw)
        except Exception:  # the slow path classifies every failure
            return self._parse_slow(raw)
        return _trades(push)

    def _parse_slow(self, raw: bytes | str) -> Sequence[Trade | Bar | Reconnect]:
        if raw in _PONG:
            return []
        frame = common.frame_object(common.decode_any(raw))
        event = frame.get("event")
        if event == "error":
            raise FrameError(
                "exchange_error", common.bounded(f"code {frame.get('code')}: {frame.get('msg')}")
            )
        if event == "notice":
            return [SERVICE_UPGRADE] if frame.get("code") == _SERVICE_UPGRADE_CODE else []
        if event is not None:
            return []  # subscribe / unsubscribe acks, channel-conn-count, ...
        arg = frame.get("arg")
        if not isinstance(arg, dict) or arg.get("channel") != "trades":
            return []  # books, tickers, ...: not ours
        return _trades(common.convert(frame, _Push))

    def bars_request(self, symbol: str, start_ms: int, end_ms: int) -> RestRequest:
        """The first page of at most 100 candles opening in ``[start_ms, end_ms)``.

        OKX pages by ``after`` (rows older than it) and ``before`` (rows newer than it) and
        returns the newest rows between them, so the page is bounded on both sides to its 100
        minutes; one millisecond inside each bound keeps the edge minutes whether OKX reads
        the bounds as exclusive or inclusive.
        """
        end = common.page_end_ms(start_ms, end_ms, _MAX_CANDLES)
        return RestRequest(
            path="/api/v5/market/history-candles",
            params={
                "instId": symbol,
                "bar": "1m",
                "after": str(end - 1),
                "before": str(start_ms - 1),
                "limit": str(_MAX_CANDLES),
            },
        )

    def parse_bars(self, symbol: str, raw: bytes) -> list[Bar]:
        """Candle rows (newest first) -> confirmed bars, oldest first, ``trades=0``."""
        response = common.response_object(raw, "candles")
        common.check_status(response, "candles", "code", "0", "msg")
        rows = response.get("data")
        if not isinstance(rows, list):
            raise FrameError("bad_type", "candles response data is not a list")
        return common.oldest_first(
            bar for row in rows if (bar := _candle_bar(symbol, row)) is not None
        )


def _trades(push: _Push) -> list[Trade | Bar | Reconnect]:
    return [Trade(_NAME, t.inst_id, t.trade_id, t.ts, t.price, t.qty, t.side) for t in push.data]


def _candle_bar(symbol: str, row: Any) -> Bar | None:
    """A ``_CANDLE_ROW``; None for an unconfirmed row."""
    confirm = common.array_row(row, "candle", 9, 9)[8]
    if confirm not in ("0", "1"):
        raise FrameError(
            "bad_value", common.bounded(f"candle confirm {confirm!r} is not '0' or '1'")
        )
    if confirm == "0":
        return None  # the minute still in progress
    return common.row_bar(_NAME, symbol, row, _CANDLE_ROW)


OKX: Final = OkxSpot()
