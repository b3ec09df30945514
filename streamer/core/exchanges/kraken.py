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

from streamer.core.exchanges import _common as common
from streamer.core.exchanges.base import FrameError, RestRequest, VenueRules
from streamer.core.types import Bar, Trade

__all__ = ["KRAKEN", "KrakenSpot", "rest_pair"]

_NAME: Final = "kraken"
_CHANNELS: Final = ("trade",)
# REST pair names keep Kraken's legacy asset codes; WebSocket v2 uses the common ones.
_REST_ASSET: Final = {"BTC": "XBT", "DOGE": "XDG"}
TRADES_PER_PAGE: Final = 1000  # the most ``/0/public/Trades`` returns, and its default
_TAKER: Final[dict[Any, Literal["buy", "sell"]]] = {"b": "buy", "s": "sell"}
# [time_s, open, high, low, close, vwap, volume, count], decimals as strings
_OHLC_ROW: Final = common.BarColumns("OHLC", columns=8, volume=6, trades=7, time_in_seconds=True)


class _Trade(msgspec.Struct, gc=False):
    symbol: common.SymbolField
    side: Literal["buy", "sell"]
    price: common.AmountField
    qty: common.AmountField
    trade_id: common.TradeIdField
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


class KrakenSpot(common.Venue):
    """Kraken spot WebSocket v2 and REST protocol knowledge; stateless and shared."""

    name = _NAME
    default_ws_url = "wss://ws.kraken.com/v2"
    default_rest_url = "https://api.kraken.com"
    channels = _CHANNELS
    # No published figure for connection attempts (the default); Cloudflare in front of Kraken
    # throttles reconnect storms.
    # OHLC returns at most the 720 most recent entries (12 h of minutes), whatever ``since``.
    max_bars_per_request = 720
    # Public REST endpoints are throttled per IP at about one call per second.
    min_request_interval_s = 1.0
    rules = VenueRules(
        # v2 trade ids count up by one per pair: a jump means missed trades
        sequential_trade_ids=True,
        # OHLC reaches this far back; older minutes are backfilled from /0/public/Trades
        bars_depth_minutes=720,
    )

    def check_symbols(self, symbols: list[str]) -> None:
        common.check_pair_symbols(_NAME, symbols)

    def subscribe(self, symbols: list[str], channels: list[str]) -> tuple[str, ...]:
        """One subscribe message per channel, ``BTC-USD`` sent as ``BTC/USD``."""
        wire = [symbol.replace("-", "/") for symbol in symbols]
        return tuple(
            common.encode_json(
                {
                    "method": "subscribe",
                    "params": {"channel": channel, "symbol": wire, "snapshot": False},
                }
            )
            for channel in channels
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
        frame = common.decode_any(raw)
        if isinstance(frame, list):
            raise FrameError(
                "unsupported_protocol",
                common.bounded(
                    f"Kraken WebSocket v1 data array ({frame[-2:]!r}); this parser is v2"
                ),
            )
        frame = common.frame_object(frame)
        if "method" in frame:  # v2 acknowledgement of subscribe, unsubscribe, ping...
            if frame.get("success") is False:
                raise FrameError("exchange_error", common.bounded(str(frame.get("error"))))
            return []
        if frame.get("channel") != "trade":
            return []  # v1 events, book, ticker, ... : not ours
        return _trades(common.convert(frame, _TradeMessage, strict=True))

    def bars_request(self, symbol: str, start_ms: int, end_ms: int) -> RestRequest:
        """``GET /0/public/OHLC``; ``since`` is one second before ``start_ms``.

        Kraken's ``since`` is a lower bound in seconds; one second before the start keeps the
        first minute whether Kraken reads the bound as inclusive or exclusive. ``end_ms`` cannot
        be sent: Kraken returns up to 720 entries, and callers keep only those before it.
        """
        common.check_range(start_ms, end_ms)
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
        rows = _pair_table(_result(raw, "OHLC"), "OHLC")
        return common.oldest_first(
            common.row_bar(_NAME, symbol, row, _OHLC_ROW) for row in rows[:-1]
        )

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
        result = _result(raw, "Trades")
        if "last" not in result:
            raise FrameError("missing_field", "Trades result has no last")
        last_ns = common.cell_integer_text(result["last"], "Trades last")
        if not 0 <= last_ns <= common.INT64_MAX:
            raise FrameError("bad_value", f"Trades last {last_ns} out of range")
        return [_rest_trade(symbol, row) for row in _pair_table(result, "Trades")], last_ns


def _result(raw: bytes, what: str) -> dict[str, Any]:
    """The ``result`` object of a REST answer ``{"error": [...], "result": {...}}``."""
    response = common.response_object(raw, what)
    errors = response.get("error")
    if errors:
        raise FrameError("exchange_error", common.bounded(str(errors)))
    result = response.get("result")
    if not isinstance(result, dict):
        raise FrameError("missing_field", f"{what} response has no result object")
    return result


def _pair_table(result: dict[str, Any], what: str) -> list[Any]:
    """The one list in ``result`` besides ``last``: it is keyed by Kraken's internal pair name
    (XXBTZUSD for XBTUSD)."""
    tables = [rows for key, rows in result.items() if key != "last"]
    if len(tables) != 1 or not isinstance(tables[0], list):
        raise FrameError("bad_type", f"{what} result holds {len(tables)} pair tables, expected 1")
    return tables[0]


def _trades(message: _TradeMessage) -> list[Trade | Bar]:
    return [
        Trade(
            _NAME,
            t.symbol.replace("/", "-"),
            t.trade_id,
            common.frame_time_ms(t.timestamp, "timestamp"),
            t.price,
            t.qty,
            t.side,
        )
        for t in message.data
    ]


def _rest_trade(symbol: str, row: Any) -> Trade:
    """``[price, volume, time_s, "b"|"s", "m"|"l", misc, trade_id]``.

    The time is a float of seconds to 100 ns: rounded to whole microseconds (the float's own
    error is far below one), then truncated to ms as the WebSocket's timestamps are, so a trade
    lands in the same minute and millisecond by either path.
    """
    row = common.array_row(row, "Trades", 7, 7)
    price = common.cell_number(row[0], "Trades price")
    qty = common.cell_number(row[1], "Trades volume")
    if not (0.0 < price <= common.TRADE_AMOUNT_MAX and 0.0 < qty <= common.TRADE_AMOUNT_MAX):
        raise FrameError("bad_value", common.bounded(f"Trades price/volume {row[0]!r}/{row[1]!r}"))
    time_s = row[2]
    if isinstance(time_s, bool) or not isinstance(time_s, int | float):
        raise FrameError("bad_type", f"Trades time is {type(time_s).__name__}, not a number")
    if not (math.isfinite(time_s) and 0 < time_s <= common.INT64_MAX // 1_000_000_000):
        raise FrameError("bad_value", common.bounded(f"Trades time {time_s!r} out of range"))
    ts_ms = round(time_s * 1_000_000) // 1000
    side = _TAKER.get(row[3]) if isinstance(row[3], str) else None
    if side is None:
        raise FrameError("bad_value", common.bounded(f"Trades side {row[3]!r} is not b or s"))
    trade_id = common.cell_integer(row[6], "Trades trade_id")
    if not 0 <= trade_id <= common.INT64_MAX:
        raise FrameError("bad_value", f"Trades trade_id {trade_id} out of range")
    if ts_ms <= 0:
        raise FrameError("bad_value", f"Trades time {time_s!r} is not after 1970")
    return Trade(_NAME, symbol, trade_id, ts_ms, price, qty, side)


KRAKEN: Final = KrakenSpot()
