"""What the exchange modules share: error labels, generic decoding, REST bar rows and pages,
and the ``Venue`` base class (the common limits and how a subscription becomes connections).

Every failure becomes a ``FrameError`` with one of the bounded reason labels used in metrics.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, TypeVar

import msgspec

from streamer.core.exchanges.base import ConnectionPlan, FrameError, VenueRules
from streamer.core.types import MINUTE_MS, Bar

DETAIL_MAX: Final = 200
INT64_MAX: Final = 2**63 - 1
# A trade's price and quantity must stay below an absurd magnitude: two trades of 1e308 in one
# minute overflow the bar's exact volume sum (math.fsum raises) and would kill the feed at the
# minute close; no real market trades 1e15 units at 1e15 a unit.
TRADE_AMOUNT_MAX: Final = 1e15

# The field types every venue's trade message is checked against, in C by msgspec.
TradeIdField = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
SymbolField = Annotated[str, msgspec.Meta(min_length=1)]
AmountField = Annotated[float, msgspec.Meta(gt=0.0, le=TRADE_AMOUNT_MAX)]
# Venues whose trade ids are not numbers (Bybit's UUIDs) keep the text. Bounded, because the
# aggregator remembers the ids of several minutes for de-duplication (a UUID is 36 characters).
TRADE_ID_TEXT_MAX: Final = 64
TextTradeIdField = Annotated[str, msgspec.Meta(min_length=1, max_length=TRADE_ID_TEXT_MAX)]

_ANY_DECODER: Final = msgspec.json.Decoder()
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)

T = TypeVar("T")


def bounded(text: str) -> str:
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 3] + "..."


def decode_any(raw: bytes | str) -> Any:
    """Generic decode; input that is not JSON at all (bad UTF-8, absurd nesting) included."""
    try:
        return _ANY_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
        raise FrameError("malformed_json", bounded(str(exc))) from None


def validation_reason(error: msgspec.ValidationError) -> str:
    """Map a msgspec validation message onto the bounded reason labels used in metrics."""
    message = str(error)
    if "missing required field" in message:
        return "missing_field"
    if message.startswith(("Invalid enum value", "Number out of range")) or (
        message.startswith("Expected `") and any(op in message for op in (">", "<", "length"))
    ):
        return "bad_value"
    return "bad_type"


def frame_object(frame: Any) -> dict[str, Any]:
    """A decoded WebSocket frame that must be a JSON object."""
    if not isinstance(frame, dict):
        raise FrameError("bad_type", f"top-level JSON {type(frame).__name__}, not an object")
    return frame


def response_object(raw: bytes, what: str) -> dict[str, Any]:
    """A REST answer that must be a JSON object (``what``: the answer's name in errors)."""
    response = decode_any(raw)
    if not isinstance(response, dict):
        raise FrameError("bad_type", f"{what} response is not an object")
    return response


def check_status(response: dict[str, Any], what: str, key: str, ok: object, message: str) -> None:
    """Refuse a REST answer whose status ``key`` is missing or not ``ok``, the venue's
    ``message`` in the detail (Bybit's ``retCode``, OKX's ``code``)."""
    if key not in response:
        raise FrameError("missing_field", f"{what} response has no {key}")
    code = response[key]
    if code != ok:
        raise FrameError("exchange_error", bounded(f"{key} {code}: {response.get(message)}"))


def convert(value: Any, into: type[T], *, strict: bool = False) -> T:
    """``msgspec.convert`` on the slow path, a refusal becoming a ``FrameError`` with its
    reason label."""
    try:
        return msgspec.convert(value, into, strict=strict)
    except msgspec.ValidationError as exc:
        raise FrameError(validation_reason(exc), bounded(str(exc))) from None


def iso8601_to_ms(text: str) -> int:
    """``'2021-04-17T16:43:30.244075Z'`` -> ``1618677810244`` (Unix ms, fraction truncated).

    Accepts the UTC form the exchanges send: ``YYYY-MM-DDTHH:MM:SS``, an optional fraction and
    ``Z``; anything else raises ``ValueError``. The guard rejects what ``fromisoformat`` would
    otherwise accept but must not pass here: naive or date-only strings (they would silently
    shift trades by the local offset). The C parser then does the rest in about 0.5 µs, where
    a hand-written Python one took 2 µs.
    """
    if (
        len(text) < 20
        or text[-1] != "Z"
        or text[10] != "T"
        or text[19] not in ".Z"
        or not text.isascii()
    ):
        raise ValueError(f"not an ISO-8601 UTC timestamp: {text!r}")
    return (datetime.fromisoformat(text) - _EPOCH) // _ONE_MS


def frame_time_ms(text: str, what: str) -> int:
    """A frame's ISO-8601 UTC time (``what``: its field's name in errors) as Unix ms after 1970."""
    try:
        ts_ms = iso8601_to_ms(text)
    except (ValueError, OverflowError) as exc:
        raise FrameError("bad_value", bounded(str(exc))) from None
    if not 0 < ts_ms <= INT64_MAX:
        raise FrameError("bad_value", f"{what} {text!r} is not after 1970")
    return ts_ms


def cell_number(value: Any, what: str) -> float:
    """A REST bar cell: a decimal string or a JSON number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise FrameError("bad_type", f"{what} is {type(value).__name__}, not a decimal")
    try:
        return float(value)
    except (ValueError, OverflowError):
        raise FrameError("bad_value", f"{what} {value!r} is not a float") from None


def cell_integer(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise FrameError("bad_type", f"{what} is {type(value).__name__}, not an integer")


def cell_integer_text(value: Any, what: str) -> int:
    """A REST cell holding an integer as a JSON integer or as decimal digits (OKX, Bybit and
    Bitstamp send times as strings: ``"1670889600000"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise FrameError("bad_type", f"{what} is {type(value).__name__}, not an integer")
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise FrameError("bad_value", bounded(f"{what} {value!r} is not an integer"))
    return int(value)


def seconds_to_ms(time_s: int, what: str) -> int:
    """A REST row's open time in seconds, as ms."""
    if not 0 < time_s <= INT64_MAX // 1000:
        raise FrameError("bad_value", f"{what} {time_s} out of range")
    return time_s * 1000


def checked_bar(
    exchange: str,
    symbol: str,
    open_time_ms: int,
    open_: float,
    high: float,
    low: float,
    close: float,
    volume: float,
    trades: int,
) -> Bar:
    """A REST or kline bar, refused unless its time and prices make a real 1-minute bar."""
    prices = (open_, high, low, close)
    if not 0 < open_time_ms <= INT64_MAX or open_time_ms % MINUTE_MS:
        raise FrameError("bad_value", f"bar open time {open_time_ms} is not a minute start")
    if not all(0.0 < p <= sys.float_info.max for p in prices):
        raise FrameError("bad_value", f"bar prices {prices} not finite and > 0")
    if not (high >= max(open_, close, low) and low <= min(open_, close)):
        raise FrameError("bad_value", f"bar high/low inconsistent: {prices}")
    if not (0.0 <= volume <= sys.float_info.max) or not 0 <= trades <= INT64_MAX:
        raise FrameError("bad_value", f"bar volume {volume!r} / trades {trades} invalid")
    return Bar(exchange, symbol, open_time_ms, open_, high, low, close, volume, trades)


def array_row(row: Any, what: str, needed: int, columns: int) -> list[Any]:
    """A REST row that must be a JSON array of at least ``needed`` cells (the venue documents
    ``columns``)."""
    if not isinstance(row, list):
        raise FrameError("bad_type", f"{what} row is not an array")
    if len(row) < needed:
        raise FrameError("missing_field", f"{what} row has {len(row)} columns, expected {columns}")
    return row


@dataclass(frozen=True, slots=True)
class BarColumns:
    """Where a venue's REST bar row (a JSON array, its open time first) holds each value."""

    what: str  # the row's name in errors: "kline", "candle", "OHLC"
    columns: int  # as many as the venue documents
    open: int = 1
    high: int = 2
    low: int = 3
    close: int = 4
    volume: int = 5
    trades: int | None = None  # None: the venue counts no trades, the bar has trades=0
    time_in_seconds: bool = False  # else ms
    time_as_text: bool = False  # the time may be a string of digits, not only a JSON integer

    @property
    def needed(self) -> int:
        """The fewest cells that hold every value read."""
        return 1 + max(self.open, self.high, self.low, self.close, self.volume, self.trades or 0)


def row_bar(exchange: str, symbol: str, row: Any, layout: BarColumns) -> Bar:
    """One REST bar row laid out as ``layout`` says, refused unless it makes a real bar."""
    cells = array_row(row, layout.what, layout.needed, layout.columns)
    what = layout.what
    read_time = cell_integer_text if layout.time_as_text else cell_integer
    open_time = read_time(cells[0], f"{what} time")
    if layout.time_in_seconds:
        open_time = seconds_to_ms(open_time, f"{what} time")
    open_, high, low, close, volume = (
        cell_number(cells[column], f"{what} {name}")
        for column, name in (
            (layout.open, "open"),
            (layout.high, "high"),
            (layout.low, "low"),
            (layout.close, "close"),
            (layout.volume, "volume"),
        )
    )
    trades = 0 if layout.trades is None else cell_integer(cells[layout.trades], f"{what} count")
    return checked_bar(exchange, symbol, open_time, open_, high, low, close, volume, trades)


def oldest_first(bars: Iterable[Bar]) -> list[Bar]:
    return sorted(bars, key=lambda bar: bar.open_time_ms)


def check_range(start_ms: int, end_ms: int) -> None:
    """A bars request asks for at least one ms."""
    if end_ms <= start_ms:
        raise ValueError(f"empty range [{start_ms}, {end_ms})")


def page_end_ms(start_ms: int, end_ms: int, max_bars: int) -> int:
    """Where the first page of ``[start_ms, end_ms)`` ends when a page holds ``max_bars``."""
    check_range(start_ms, end_ms)
    return min(end_ms, start_ms + max_bars * MINUTE_MS)


def check_subscription(
    exchange: str, symbols: list[str], channels: list[str], known: tuple[str, ...]
) -> None:
    """Refuse, at start-up, channels the exchange module does not speak."""
    if not channels:
        raise ValueError(f"{exchange}: no channels given")
    for channel in channels:
        if channel not in known:
            raise ValueError(f"{exchange}: unknown channel {channel!r}; known: {known}")


def check_pair_symbols(exchange: str, symbols: list[str]) -> None:
    """Canonical ``BASE-QUOTE`` symbols, upper case (Coinbase product ids, Kraken pairs)."""
    for symbol in symbols:
        if symbol.count("-") != 1 or not symbol.isascii() or symbol != symbol.upper():
            raise ValueError(f"{exchange}: bad symbol {symbol!r} (expected e.g. 'BTC-USD')")


def check_compact_symbols(exchange: str, symbols: list[str], example: str) -> None:
    """Canonical symbols without a separator, upper case letters and digits (Bybit ``BTCUSDT``,
    Bitstamp ``BTCUSD``)."""
    for symbol in symbols:
        if not symbol or not symbol.isascii() or not symbol.isalnum() or symbol != symbol.upper():
            raise ValueError(f"{exchange}: bad symbol {symbol!r} (expected e.g. {example!r})")


def split_connections(
    url: str,
    symbols: list[str],
    channels: list[str],
    max_streams: int,
    subscribe: Callable[[list[str]], tuple[str, ...]],
) -> list[ConnectionPlan]:
    """One connection per ``max_streams // len(channels)`` symbols, each sending what
    ``subscribe(chunk)`` gives. All channels of a symbol stay on one connection, so that a
    reconnect never leaves a symbol half subscribed."""
    per_connection = max(1, max_streams // len(channels))
    plans = []
    for first in range(0, len(symbols), per_connection):
        chunk = symbols[first : first + per_connection]
        plans.append(ConnectionPlan(url=url, symbols=tuple(chunk), subscribe=subscribe(chunk)))
    return plans


def encode_json(message: object) -> str:
    return msgspec.json.encode(message).decode()


class Venue:
    """What every venue class shares: the defaults of the ``Exchange`` limits most venues have,
    and ``connections``. A venue names its ``channels`` and says how it checks symbols
    (``check_symbols``) and what subscribes a connection's symbols (``subscribe``)."""

    name: str
    default_ws_url: str
    default_rest_url: str
    channels: tuple[str, ...]
    # Most venues document no per-connection cap; a modest one keeps a reconnect cheap.
    max_streams_per_connection: int = 100
    max_connection_age_s: float | None = None
    # Where a venue publishes no figure, stay gentle.
    connect_attempts_per_s: float = 0.5
    max_bars_per_request: int
    min_request_interval_s: float
    rules: VenueRules = VenueRules()

    def connections(
        self, ws_url: str, symbols: list[str], channels: list[str]
    ) -> list[ConnectionPlan]:
        """Refuse, at start-up, a subscription the venue cannot serve; else split it over as
        many connections as the per-connection limit needs (``split_connections``)."""
        check_subscription(self.name, symbols, channels, self.channels)
        self.check_symbols(symbols)
        return split_connections(
            self.stream_url(ws_url),
            symbols,
            channels,
            self.max_streams_per_connection,
            lambda chunk: self.subscribe(chunk, channels),
        )

    def stream_url(self, ws_url: str) -> str:
        """Where the connections go, given the configured WebSocket URL."""
        return ws_url

    def check_symbols(self, symbols: list[str]) -> None:
        """Refuse symbols not in the venue's canonical form (a ``ValueError``)."""
        raise NotImplementedError

    def subscribe(self, symbols: list[str], channels: list[str]) -> tuple[str, ...]:
        """The messages that subscribe one connection's ``symbols`` to ``channels``."""
        raise NotImplementedError
