"""What every exchange parser's output must satisfy whatever the input, the hypothesis
strategies the property tests share, and the recorded frames and minutes the per-venue tests
read (tests/fixtures/ws/, its README says which is which)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from streamer.core.exchanges import Exchange, get_exchange
from streamer.core.exchanges.base import FrameError, Reconnect, TradeIdMark
from streamer.core.paging import RestPager
from streamer.core.types import Bar, Trade

WS = Path(__file__).resolve().parents[1] / "fixtures" / "ws"
BYBIT_MINUTES = "bybit_spot_BTCUSDT_1m_20221213.csv"  # 200 real minutes, served in any layout

# the bounded reason labels a parser may raise (metrics label values)
REASONS = frozenset({"malformed_json", "missing_field", "bad_type", "bad_value", "exchange_error"})
# Kraken's WebSocket v1 and Bybit's pre-v5 frames are refused as a protocol, not as bad data
EXTRA_REASONS = {
    "kraken": frozenset({"unsupported_protocol"}),
    "bybit": frozenset({"unsupported_protocol"}),
}
# venues whose trade ids are the venue's text (Bybit's UUIDs); every other venue's are ints
TEXT_ID_VENUES = frozenset({"bybit"})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
bar_cell = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([1633998240000, 1513468800, 60]),
    st.floats(),
    st.sampled_from(["1", "0", "-1", "1e400", "nan", "x"]),
    st.booleans(),
    st.none(),
)


def assert_valid_bar(bar: Bar) -> None:
    assert bar.open_time_ms > 0 and bar.open_time_ms % 60_000 == 0
    assert 0 < bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
    assert math.isfinite(bar.high) and math.isfinite(bar.volume) and bar.volume >= 0


def assert_valid_trade_id(exchange: str, trade_id: object) -> None:
    """A text-id venue's ids are non-empty strings; every other venue's are ints >= 0. Never
    a mix within one venue: the aggregator compares the ids of one symbol."""
    if exchange in TEXT_ID_VENUES:
        assert isinstance(trade_id, str) and trade_id, trade_id
    else:
        assert type(trade_id) is int and trade_id >= 0, trade_id


def assert_valid(exchange: str, records: Sequence[Trade | Bar | Reconnect | TradeIdMark]) -> None:
    """Every record names ``exchange`` and a canonical symbol, and holds sane values."""
    for record in records:
        if isinstance(record, Reconnect):
            assert isinstance(record.reason, str) and record.reason
            continue
        if isinstance(record, TradeIdMark):
            assert isinstance(record.symbol, str) and record.symbol and "/" not in record.symbol
            assert_valid_trade_id(exchange, record.last_trade_id)
            assert isinstance(record.ts_ms, int) and record.ts_ms > 0
            continue
        assert record.exchange == exchange
        assert isinstance(record.symbol, str) and record.symbol and "/" not in record.symbol
        if isinstance(record, Trade):
            assert_valid_trade_id(exchange, record.trade_id)
            assert isinstance(record.ts_ms, int) and record.ts_ms > 0
            assert math.isfinite(record.price) and record.price > 0
            assert math.isfinite(record.qty) and record.qty > 0
            assert record.taker_side in ("buy", "sell")
        else:
            assert isinstance(record, Bar)
            assert_valid_bar(record)


def parse_checked(exchange: str, frame: bytes | str) -> None:
    """Parse ``frame``: it gives valid records or a ``FrameError`` with a bounded reason."""
    try:
        records = get_exchange(exchange).parse(frame)
    except FrameError as exc:
        assert exc.reason in REASONS | EXTRA_REASONS.get(exchange, frozenset()), exc.reason
        return
    assert_valid(exchange, records)


def parse_bars_checked(exchange: str, symbol: str, body: Any) -> None:
    """Parse a REST body: valid bars or a ``FrameError``, nothing else."""
    try:
        bars = get_exchange(exchange).parse_bars(symbol, body)
    except FrameError:
        return
    for bar in bars:
        assert_valid_bar(bar)


def cells(*samples: Sequence[Any], text_size: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON scalar for a field of a venue's frame, its telling values (``samples``: each a
    list drawn from as one choice) drawn often."""
    return st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        *(st.sampled_from(list(sample)) for sample in samples),
        st.text(max_size=text_size),
        st.booleans(),
        st.none(),
    )


def recorded_frames(name: str) -> list[bytes]:
    """The frames of a recording in tests/fixtures/ws/, one a line."""
    return [line for line in (WS / name).read_bytes().splitlines() if line.strip()]


def parse_recording(exchange: Exchange, name: str) -> tuple[list[Trade], list[Bar], int]:
    """What ``exchange`` makes of each frame of a recording: the trades, the closed bars, and
    how many frames gave nothing."""
    trades: list[Trade] = []
    bars: list[Bar] = []
    empty = 0
    for line in recorded_frames(name):
        records = exchange.parse(line)
        empty += not records
        trades += [r for r in records if isinstance(r, Trade)]
        bars += [r for r in records if isinstance(r, Bar)]
    return trades, bars, empty


def unsupported_frames(exchange: Exchange, name: str) -> tuple[list[bytes], list[bytes]]:
    """The frames of a recording of a protocol ``exchange`` does not speak: those it refuses as
    ``unsupported_protocol`` and those it ignores (parses to nothing); any other outcome fails."""
    refused: list[bytes] = []
    ignored: list[bytes] = []
    for line in recorded_frames(name):
        try:
            assert exchange.parse(line) == []
            ignored.append(line)
        except FrameError as exc:
            assert exc.reason == "unsupported_protocol"
            refused.append(line)
    return refused, ignored


def subscribe_messages(
    exchange: Exchange, url: str, symbols: list[str], channels: list[str]
) -> list[Any]:
    """The decoded subscribe messages of the one connection ``symbols`` make on the venue's
    default URL, which must be ``url`` and carry every symbol."""
    (plan,) = exchange.connections(exchange.default_ws_url, symbols, channels)
    assert plan.url == url
    assert plan.symbols == tuple(symbols)
    return [json.loads(m) for m in plan.subscribe]


def csv_rows(name: str) -> list[dict[str, str]]:
    """The rows of a CSV in tests/fixtures/ws/, their tokens verbatim."""
    with open(WS / name) as f:
        return list(csv.DictReader(f))


def json_array(items: Iterable[str]) -> bytes:
    """The JSON array of these JSON texts as they are: recorded number tokens reach the parser
    verbatim, not through a float."""
    return ("[" + ",".join(items) + "]").encode()


def qty_by_symbol(trades: Sequence[Trade]) -> dict[str, Decimal]:
    """The traded quantity per symbol, summed exactly."""
    qty: dict[str, Decimal] = {}
    for t in trades:
        qty[t.symbol] = qty.get(t.symbol, Decimal(0)) + Decimal(repr(t.qty))
    return qty


def with_cells(row: Sequence[Any], **cells: Any) -> list[Any]:
    """``row`` with some cells replaced, named by position: ``c3="0"`` sets cell 3."""
    out = list(row)
    for index, value in cells.items():
        out[int(index[1:])] = value
    return out


def assert_refused(parse: Callable[[Any], object], frame: Any, reason: str) -> FrameError:
    """``parse(frame)`` raises a ``FrameError`` with ``reason``; that error."""
    with pytest.raises(FrameError) as caught:
        parse(frame)
    assert caught.value.reason == reason
    return caught.value


def serve_pages(pager: RestPager, answer: Callable[[dict[str, str]], bytes]) -> list[Bar]:
    """Run ``pager`` to its end, answering each request it makes with ``answer(params)``, a
    venue's REST body; the bars it got."""
    while (request := pager.next_request()) is not None:
        pager.accept(pager.exchange.parse_bars(pager.symbol, answer(request.params)))
    return pager.bars()
