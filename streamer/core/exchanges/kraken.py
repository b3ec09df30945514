"""Kraken spot, WebSocket API v2: the ``trade`` channel of ``wss://ws.kraken.com/v2``.

A sample of the current (v2) format, from Kraken's documentation
(https://docs.kraken.com/api/docs/websocket-v2/trade; no v2 recording exists in this project)::

    {"channel":"trade","type":"update","data":[{"symbol":"MATIC/USD","side":"sell",
     "price":0.5117,"qty":40.0,"ord_type":"market","trade_id":4665906,
     "timestamp":"2023-09-25T07:49:37.708706Z"}]}

``side`` is the taker's side. Price and qty are JSON numbers (v1 sent strings); a string there
is rejected as ``bad_type``. One frame may carry several trades: if any of them is invalid the
whole frame is rejected, because a frame is the exchange's unit of delivery and a partly
applied frame would hide the problem behind plausible-looking data. Snapshot frames (the last
50 trades, only sent when asked for) are trades like updates; the aggregator drops the ones it
has already seen by ``trade_id``.

WebSocket v1 (``wss://ws.kraken.com``; cryptofeed's recording
``kraken_spot_trade.jsonl.gz``) sends data as arrays without trade ids, which cannot be
de-duplicated. Its event objects (``heartbeat``, ``systemStatus``, ``subscriptionStatus``) are
ignored; its data arrays raise ``FrameError("unsupported_protocol")``, so pointing the feed at
the v1 URL shows up in the rejected-frames metric instead of as silently missing trades.

Symbols: the wire form ``BTC/USD`` is ``BTC-USD`` in the project. REST ``/0/public/OHLC`` wants
Kraken's pair name (the ``altname`` of ``/0/public/AssetPairs``), which still spells bitcoin
``XBT`` and dogecoin ``XDG``: ``BTC-USD`` -> ``XBTUSD``.

REST ``/0/public/OHLC`` only reaches 720 minutes back. Older minutes come from
``/0/public/Trades`` (Kraken's whole trade history, up to 1000 trades a page from ``since``, a
Unix time in ns; the answer's ``last``, in ns too, is where the next page starts), which the
backfill aggregates into bars itself (``streamer.core.paging.TradePager``). A row of it::

    ["105433.60000", "0.00027625", 1762795433.9717445, "b", "l", "", 10218208]

price, volume, time in seconds (a JSON number, to 100 ns), the taker's side (``b``/``s``),
market or limit, misc, and the trade id (added in 2023).
"""

from __future__ import annotations

import math
from typing import Any, Final, Literal

import msgspec

from streamer.core.exchanges._common import (
    INT64_MAX,
    TRADE_AMOUNT_MAX,
    AmountField,
    SymbolField,
    TradeIdField,
    bounded,
    cell_integer,
    cell_integer_text,
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
from streamer.core.exchanges.base import ConnectionPlan, FrameError, RestRequest
from streamer.core.types import Bar, Trade

__all__ = ["KRAKEN", "KrakenSpot", "rest_pair"]

_NAME: Final = "kraken"
_CHANNELS: Final = ("trade",)
# REST pair names keep Kraken's legacy asset codes; WebSocket v2 uses the common ones.
_REST_ASSET: Final = {"BTC": "XBT", "DOGE": "XDG"}
TRADES_PER_PAGE: Final = 1000  # the most ``/0/public/Trades`` returns, and its default
_TAKER: Final[dict[Any, Literal["buy", "sell"]]] = {"b": "buy", "s": "sell"}


class _Trade(msgspec.Struct, gc=False):
    symbol: SymbolField
    side: Literal["buy", "sell"]
    price: AmountField
    qty: AmountField
    trade_id: TradeIdField
    timestamp: str


class _TradeMessage(msgspec.Struct, tag_field="channel", tag="trade", gc=False):
    data: list[_Trade]


class _Heartbeat(msgspec.Struct, tag_field="channel", tag="heartbeat", gc=False):
    pass


class _Status(msgspec.Struct, tag_field="channel", tag="status", gc=False):
    pass


# strict (the default): v2 prices are JSON numbers, and a string is a protocol error.
_DECODER: Final = msgspec.json.Decoder(_TradeMessage | _Heartbeat | _Status)


def rest_pair(symbol: str) -> str:
    """``BTC-USD`` -> ``XBTUSD``: the pair name Kraken's REST API accepts."""
    base, _, quote = symbol.partition("-")
    return _REST_ASSET.get(base, base) + _REST_ASSET.get(quote, quote)


class KrakenSpot:
    """Kraken spot WebSocket v2 and REST protocol knowledge; stateless and shared."""

    name: str = _NAME
    default_ws_url: str = "wss://ws.kraken.com/v2"
    default_rest_url: str = "https://api.kraken.com"
    # Kraken documents no per-connection symbol cap; a modest one keeps a reconnect cheap.
    max_streams_per_connection: int = 100
    max_connection_age_s: float | None = None
    # No published figure; Cloudflare in front of Kraken throttles reconnect storms.
    connect_attempts_per_s: float = 0.5
    # OHLC returns at most the 720 most recent entries (12 h of minutes), whatever ``since``.
    max_bars_per_request: int = 720
    # ... so OHLC reaches this far back; older minutes are backfilled from /0/public/Trades
    bars_depth_minutes: int = 720
    # Public REST endpoints are throttled per IP at about one call per second.
    min_request_interval_s: float = 1.0
    # v2 trade ids count up by one per pair: a jump means missed trades
    sequential_trade_ids: bool = True

    def connections(
        self, ws_url: str, symbols: list[str], channels: list[str]
    ) -> list[ConnectionPlan]:
        """One subscribe message per channel and connection, ``BTC-USD`` sent as ``BTC/USD``."""
        check_subscription(_NAME, symbols, channels, _CHANNELS)
        check_pair_symbols(_NAME, symbols)

        def subscribe(chunk: list[str]) -> tuple[str, ...]:
            wire = [symbol.replace("-", "/") for symbol in chunk]
            return tuple(
                encode_json(
                    {
                        "method": "subscribe",
                        "params": {"channel": channel, "symbol": wire, "snapshot": False},
                    }
                )
                for channel in channels
            )

        return split_connections(
            ws_url, symbols, channels, self.max_streams_per_connection, subscribe
        )

    def parse(self, raw: bytes | str) -> list[Trade | Bar]:
        """Trade frames give their trades; heartbeat, status, acks and other channels ``[]``.

        A failed request (``"success": false``, e.g. an unknown pair) raises
        ``FrameError("exchange_error")`` so that a bad subscription is counted, not silent.
        """
        try:
            message = _DECODER.decode(raw)
        except Exception:  # the slow path classifies every failure
            return self._parse_slow(raw)
        if type(message) is _TradeMessage:
            return _trades(message)
        return []

    def _parse_slow(self, raw: bytes | str) -> list[Trade | Bar]:
        frame = decode_any(raw)
        if isinstance(frame, list):
            raise FrameError(
                "unsupported_protocol",
                bounded(f"Kraken WebSocket v1 data array ({frame[-2:]!r}); this parser is v2"),
            )
        if not isinstance(frame, dict):
            raise FrameError("bad_type", f"top-level JSON {type(frame).__name__}, not an object")
        if "method" in frame:  # v2 acknowledgement of subscribe, unsubscribe, ping...
            if frame.get("success") is False:
                raise FrameError("exchange_error", bounded(str(frame.get("error"))))
            return []
        if frame.get("channel") != "trade":
            return []  # v1 events, book, ticker, ... : not ours
        try:
            message = msgspec.convert(frame, _TradeMessage)
        except msgspec.ValidationError as exc:
            raise FrameError(validation_reason(exc), bounded(str(exc))) from None
        return _trades(message)

    def bars_request(self, symbol: str, start_ms: int, end_ms: int) -> RestRequest:
        """``GET /0/public/OHLC``; ``since`` is one second before ``start_ms``.

        Kraken's ``since`` is a lower bound in seconds; one second before the start keeps the
        first minute whether Kraken reads the bound as inclusive or exclusive. ``end_ms`` cannot
        be sent: Kraken returns up to 720 entries, and callers keep only those before it.
        """
        if end_ms <= start_ms:
            raise ValueError(f"empty range [{start_ms}, {end_ms})")
        return RestRequest(
            path="/0/public/OHLC",
            params={"pair": rest_pair(symbol), "interval": "1", "since": str(start_ms // 1000 - 1)},
        )

    def parse_bars(self, symbol: str, raw: bytes) -> list[Bar]:
        """OHLC rows ``[time, open, high, low, close, vwap, volume, count]`` -> closed bars.

        Kraken always appends the current, not yet closed minute as the last row (its ``last``
        field points at the row before it). That row would be a partial bar that later replaces
        a complete one, so it is dropped.
        """
        response = decode_any(raw)
        if not isinstance(response, dict):
            raise FrameError("bad_type", "OHLC response is not an object")
        errors = response.get("error")
        if errors:
            raise FrameError("exchange_error", bounded(str(errors)))
        result = response.get("result")
        if not isinstance(result, dict):
            raise FrameError("missing_field", "OHLC response has no result object")
        # Keyed by Kraken's internal pair name (XXBTZUSD for XBTUSD), next to "last".
        tables = [rows for key, rows in result.items() if key != "last"]
        if len(tables) != 1 or not isinstance(tables[0], list):
            raise FrameError("bad_type", f"OHLC result holds {len(tables)} pair tables, expected 1")
        bars = [_ohlc_bar(symbol, row) for row in tables[0][:-1]]
        bars.sort(key=lambda bar: bar.open_time_ms)
        return bars

    def trades_request(self, symbol: str, since_ns: int) -> RestRequest:
        """``GET /0/public/Trades``: the (up to) 1000 trades after ``since_ns``, oldest first."""
        if since_ns < 0:
            raise ValueError(f"since_ns {since_ns} is before 1970")
        return RestRequest(
            path="/0/public/Trades",
            params={
                "pair": rest_pair(symbol),
                "since": str(since_ns),
                "count": str(TRADES_PER_PAGE),
            },
        )

    def parse_trades(self, symbol: str, raw: bytes) -> tuple[list[Trade], int]:
        """A Trades page -> (its trades in the order sent, ``last`` in ns).

        The whole page is refused (``FrameError``) if any row is bad, as a WebSocket frame is:
        a page with holes would make bars that look complete.
        """
        response = decode_any(raw)
        if not isinstance(response, dict):
            raise FrameError("bad_type", "Trades response is not an object")
        errors = response.get("error")
        if errors:
            raise FrameError("exchange_error", bounded(str(errors)))
        result = response.get("result")
        if not isinstance(result, dict):
            raise FrameError("missing_field", "Trades response has no result object")
        if "last" not in result:
            raise FrameError("missing_field", "Trades result has no last")
        last_ns = cell_integer_text(result["last"], "Trades last")
        if not 0 <= last_ns <= INT64_MAX:
            raise FrameError("bad_value", f"Trades last {last_ns} out of range")
        # Keyed by Kraken's pair name (XXBTZUSD for XBTUSD), next to "last".
        tables = [rows for key, rows in result.items() if key != "last"]
        if len(tables) != 1 or not isinstance(tables[0], list):
            raise FrameError(
                "bad_type", f"Trades result holds {len(tables)} pair tables, expected 1"
            )
        return [_rest_trade(symbol, row) for row in tables[0]], last_ns


def _trades(message: _TradeMessage) -> list[Trade | Bar]:
    trades: list[Trade | Bar] = []
    for trade in message.data:
        try:
            ts_ms = iso8601_to_ms(trade.timestamp)
        except (ValueError, OverflowError) as exc:
            raise FrameError("bad_value", bounded(str(exc))) from None
        if not 0 < ts_ms <= INT64_MAX:
            raise FrameError("bad_value", f"timestamp {trade.timestamp!r} is not after 1970")
        trades.append(
            Trade(
                _NAME,
                trade.symbol.replace("/", "-"),
                trade.trade_id,
                ts_ms,
                trade.price,
                trade.qty,
                trade.side,
            )
        )
    return trades


def _ohlc_bar(symbol: str, row: Any) -> Bar:
    """``[time_s, open, high, low, close, vwap, volume, count]``, decimals as strings."""
    if not isinstance(row, list):
        raise FrameError("bad_type", "OHLC row is not an array")
    if len(row) < 8:
        raise FrameError("missing_field", f"OHLC row has {len(row)} columns, expected 8")
    time_s = cell_integer(row[0], "OHLC time")
    count = cell_integer(row[7], "OHLC count")
    open_, high, low, close = (
        cell_number(row[i], f"OHLC {what}") for i, what in enumerate("ohlc", start=1)
    )
    volume = cell_number(row[6], "OHLC volume")
    if not 0 < time_s <= INT64_MAX // 1000:
        raise FrameError("bad_value", f"OHLC time {time_s} out of range")
    return checked_bar(_NAME, symbol, time_s * 1000, open_, high, low, close, volume, count)


def _rest_trade(symbol: str, row: Any) -> Trade:
    """``[price, volume, time_s, "b"|"s", "m"|"l", misc, trade_id]``.

    The time is a float of seconds to 100 ns: rounded to whole microseconds (the float's own
    error is far below one), then truncated to ms as the WebSocket's timestamps are, so a trade
    lands in the same minute and millisecond by either path.
    """
    if not isinstance(row, list):
        raise FrameError("bad_type", "Trades row is not an array")
    if len(row) < 7:
        raise FrameError("missing_field", f"Trades row has {len(row)} columns, expected 7")
    price = cell_number(row[0], "Trades price")
    qty = cell_number(row[1], "Trades volume")
    if not (0.0 < price <= TRADE_AMOUNT_MAX and 0.0 < qty <= TRADE_AMOUNT_MAX):
        raise FrameError("bad_value", bounded(f"Trades price/volume {row[0]!r}/{row[1]!r}"))
    time_s = row[2]
    if isinstance(time_s, bool) or not isinstance(time_s, int | float):
        raise FrameError("bad_type", f"Trades time is {type(time_s).__name__}, not a number")
    if not (math.isfinite(time_s) and 0 < time_s <= INT64_MAX // 1_000_000_000):
        raise FrameError("bad_value", bounded(f"Trades time {time_s!r} out of range"))
    ts_ms = round(time_s * 1_000_000) // 1000
    side = _TAKER.get(row[3]) if isinstance(row[3], str) else None
    if side is None:
        raise FrameError("bad_value", bounded(f"Trades side {row[3]!r} is not b or s"))
    trade_id = cell_integer(row[6], "Trades trade_id")
    if not 0 <= trade_id <= INT64_MAX:
        raise FrameError("bad_value", f"Trades trade_id {trade_id} out of range")
    if ts_ms <= 0:
        raise FrameError("bad_value", f"Trades time {time_s!r} is not after 1970")
    return Trade(_NAME, symbol, trade_id, ts_ms, price, qty, side)


KRAKEN: Final = KrakenSpot()
