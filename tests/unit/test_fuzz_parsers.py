"""Fuzzing every exchange parser through the feed's hot path, ``Feed.handle_frame``.

Hypothesis interleaves good frames (real Binance BTCUSDT trades of the bundled tardis.dev
recording, rendered in each exchange's wire format) with broken copies of the next good frame:
truncated JSON, wrong types, missing fields, NaN and infinity, zero, negative and absurd
magnitudes, huge frames, unknown symbols, duplicate trade ids, plus frames that are not ours
(acks, heartbeats). The broken copies keep the good frame's trade id, so a feed that remembered
an id before validating would lose the good frame that follows.

Checked for every example: nothing raises out of ``handle_frame``; each broken frame is
rejected exactly once, counted under a reason of the bounded label set (the expected one for
its kind); frames that are not ours count nothing; unknown symbols and duplicates are dropped
and counted; and the bars equal those of the pure aggregator over the good trades alone, so
every good frame around a bad one was kept. (The per-exchange parsers' own property tests are in
tests/unit/test_exchange_*.py; a frame over the size limit is refused by the WebSocket client,
tests/integration/test_feed.py.)
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.streamer import comparable

from streamer.core.bars import BarAggregator
from streamer.core.clock import Clock
from streamer.core.exchanges import Exchange, get_exchange
from streamer.core.types import Bar, Side, Trade, TradeId
from streamer.io.feed import Feed
from streamer.io.metrics import FeedStats
from streamer.replay.data import TradeRow, bundled_trade_paths, load_source

REASONS = {"malformed_json", "missing_field", "bad_type", "bad_value", "exchange_error"}
REAL_TRADES: tuple[TradeRow, ...] = load_source(
    next(p for p in bundled_trade_paths() if "tardis" in p.name), "BTCUSDT"
).trades[:400]


def iso(ts_ms: int) -> str:
    moment = datetime.fromtimestamp(ts_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}000Z"


@dataclass(frozen=True)
class Wire:
    """One exchange's trade frame as a dict, the field names that matter, and its non-trades."""

    name: str
    symbol: str  # canonical
    fields: Callable[[TradeRow, str], dict[str, Any]]  # trade -> the trade object's fields
    frame: Callable[[dict[str, Any]], Any]  # the trade object -> the whole frame
    required: tuple[str, ...]
    numbers: tuple[str, ...]  # price and quantity
    trade_id: str
    time: str
    symbol_field: str
    strings_are_numbers: bool  # Binance, Coinbase, OKX, Bybit, Bitstamp send decimal strings
    not_ours: tuple[bytes, ...]
    channel: str = "trade"  # what the feed subscribes
    other_symbol: str = "ETH-USD"  # a canonical symbol the feed did not subscribe
    time_in_ms: bool = False  # epoch ms (or µs) numbers rather than ISO-8601 text
    text_ids: bool = False  # the venue's trade ids are text (Bybit)

    def trade_id_of(self, trade: TradeRow) -> TradeId:
        """The venue's id for a real trade: the int, or a UUID made from it for text ids."""
        return str(uuid.UUID(int=trade.trade_id)) if self.text_ids else trade.trade_id

    def render(self, trade: TradeRow, symbol: str | None = None) -> dict[str, Any]:
        return self.fields(trade, symbol or self.symbol)


def _binance(t: TradeRow, symbol: str) -> dict[str, Any]:
    return {"e": "trade", "E": t.ts_ms + 3, "s": symbol, "t": t.trade_id, "p": t.price,
            "q": t.qty, "T": t.ts_ms, "m": t.buyer_is_maker, "M": True}  # fmt: skip


def _coinbase(t: TradeRow, symbol: str) -> dict[str, Any]:
    maker_side = "buy" if t.buyer_is_maker else "sell"
    return {"type": "match", "trade_id": t.trade_id, "maker_order_id": "cac01d6d",
            "taker_order_id": "3dec64e4", "side": maker_side, "size": t.qty, "price": t.price,
            "product_id": symbol, "sequence": t.trade_id * 2, "time": iso(t.ts_ms)}  # fmt: skip


def _kraken(t: TradeRow, symbol: str) -> dict[str, Any]:
    taker = "sell" if t.buyer_is_maker else "buy"
    return {"symbol": symbol.replace("-", "/"), "side": taker, "price": float(t.price),
            "qty": float(t.qty), "ord_type": "market", "trade_id": t.trade_id,
            "timestamp": iso(t.ts_ms)}  # fmt: skip


def _okx(t: TradeRow, symbol: str) -> dict[str, Any]:
    taker = "sell" if t.buyer_is_maker else "buy"
    return {"instId": symbol, "tradeId": str(t.trade_id), "px": t.price, "sz": t.qty,
            "side": taker, "ts": str(t.ts_ms)}  # fmt: skip


def _bybit(t: TradeRow, symbol: str) -> dict[str, Any]:
    taker = "Sell" if t.buyer_is_maker else "Buy"
    return {"T": t.ts_ms, "s": symbol, "S": taker, "v": t.qty, "p": t.price, "L": "PlusTick",
            "i": str(uuid.UUID(int=t.trade_id)), "BT": False}  # fmt: skip


def _bitstamp(t: TradeRow, symbol: str) -> dict[str, Any]:
    """The data of a ``trade`` event, plus the channel that :func:`_bitstamp_frame` lifts out
    (Bitstamp names the pair only in the channel)."""
    return {"id": t.trade_id, "timestamp": str(t.ts_ms // 1000), "amount": float(t.qty),
            "amount_str": t.qty, "price": float(t.price), "price_str": t.price,
            "type": 1 if t.buyer_is_maker else 0, "microtimestamp": str(t.ts_ms * 1000),
            "buy_order_id": 1, "sell_order_id": 2,
            "channel": f"live_trades_{symbol.lower()}"}  # fmt: skip


def _bitstamp_frame(fields: dict[str, Any]) -> dict[str, Any]:
    frame: dict[str, Any] = {"data": {k: v for k, v in fields.items() if k != "channel"}}
    if "channel" in fields:
        frame["channel"] = fields["channel"]
    return frame | {"event": "trade"}


WIRES = {
    "binance": Wire(
        "binance", "BTCUSDT", _binance, lambda d: {"stream": "btcusdt@trade", "data": d},
        ("s", "t", "p", "q", "T", "m"), ("p", "q"), "t", "T", "s", True,
        (b'{"result":null,"id":1}', b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT"'
         b',"b":"1","B":"1","a":"2","A":"1"}}'),
        other_symbol="ETHUSDT", time_in_ms=True,
    ),
    "coinbase": Wire(
        "coinbase", "BTC-USD", _coinbase, lambda d: d,
        ("trade_id", "side", "size", "price", "product_id", "time"), ("size", "price"),
        "trade_id", "time", "product_id", True,
        (b'{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD",'
         b'"time":"2014-11-07T08:19:28.464459Z"}',
         b'{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]}]}'),
        channel="matches",
    ),
    "okx": Wire(
        "okx", "BTC-USDT", _okx,
        lambda d: {"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [d]},
        ("instId", "tradeId", "px", "sz", "side", "ts"), ("px", "sz"), "tradeId", "ts",
        "instId", True,
        (b"pong", b'{"event":"subscribe","arg":{"channel":"trades","instId":"BTC-USDT"}}',
         b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{"asks":'
         b'[["30249.4","0","0","0"]],"bids":[],"ts":"1652459225464","checksum":-914047754}]}'),
        channel="trades", other_symbol="ETH-USDT", time_in_ms=True,
    ),
    "bybit": Wire(
        "bybit", "BTCUSDT", _bybit,
        lambda d: {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1, "data": [d]},
        ("i", "T", "s", "S", "v", "p"), ("v", "p"), "i", "T", "s", True,
        (b'{"success":true,"ret_msg":"pong","conn_id":"0970e817","op":"ping"}',
         b'{"success":true,"ret_msg":"subscribe","conn_id":"2324d924","op":"subscribe"}'),
        channel="publicTrade", other_symbol="ETHUSDT", time_in_ms=True, text_ids=True,
    ),
    "bitstamp": Wire(
        "bitstamp", "BTCUSD", _bitstamp, _bitstamp_frame,
        ("id", "price_str", "amount_str", "type", "microtimestamp", "channel"),
        ("price_str", "amount_str"), "id", "microtimestamp", "channel", True,
        (b'{"event":"bts:subscription_succeeded","channel":"live_trades_btcusd","data":{}}',
         b'{"event":"bts:heartbeat","channel":"","data":{"status":"success"}}'),
        channel="live_trades", other_symbol="ETHUSD", time_in_ms=True,
    ),
    "kraken": Wire(
        "kraken", "BTC-USD", _kraken,
        lambda d: {"channel": "trade", "type": "update", "data": [d]},
        ("symbol", "side", "price", "qty", "trade_id", "timestamp"), ("price", "qty"),
        "trade_id", "timestamp", "symbol", False,
        (b'{"channel":"heartbeat"}',
         b'{"method":"subscribe","result":{"channel":"trade","snapshot":false,"symbol":"BTC/USD"}'
         b',"success":true}'),
    ),
}  # fmt: skip


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# --- the broken copies: (kind, build from the trade's field dict, expected reasons) -----------

Breaker = Callable[[Wire, dict[str, Any], int], bytes]


def truncated(wire: Wire, fields: dict[str, Any], cut: int) -> bytes:
    raw = encode(wire.frame(fields))
    return raw[: cut % len(raw)]


def missing(wire: Wire, fields: dict[str, Any], pick: int) -> bytes:
    drop = wire.required[pick % len(wire.required)]
    return encode(wire.frame({k: v for k, v in fields.items() if k != drop}))


WRONG_TYPES: list[Any] = [{"price": 1}, [1], True, None]


def wrong_number_type(wire: Wire, fields: dict[str, Any], pick: int) -> bytes:
    key = wire.numbers[pick % 2]
    value = WRONG_TYPES[pick % len(WRONG_TYPES)] if wire.strings_are_numbers else "12.5"
    return encode(wire.frame(fields | {key: value}))


def wrong_id_type(wire: Wire, fields: dict[str, Any], pick: int) -> bytes:
    first: Any = 12 if wire.text_ids else "12x"  # text ids: a number is the wrong type
    return encode(wire.frame(fields | {wire.trade_id: [first, 1.5, None, {}][pick % 4]}))


def wrong_symbol_type(wire: Wire, fields: dict[str, Any], pick: int) -> bytes:
    return encode(wire.frame(fields | {wire.symbol_field: [5, None, ["BTC"]][pick % 3]}))


def not_finite(wire: Wire, fields: dict[str, Any], pick: int) -> bytes:
    key = wire.numbers[pick % 2]
    if wire.strings_are_numbers:
        return encode(wire.frame(fields | {key: ["NaN", "Infinity", "-inf", "1e999"][pick % 4]}))
    raw = encode(wire.frame(fields | {key: 12345.5}))  # then the literal is swapped in
    return raw.replace(b"12345.5", [b"NaN", b"Infinity", b"1e999", b"-1e999"][pick % 4])


def not_positive(wire: Wire, fields: dict[str, Any], pick: int) -> bytes:
    key = wire.numbers[pick % 2]
    value: Any = ["0", "-1", "-0.0001", "0.0"][pick % 4]
    return encode(wire.frame(fields | {key: value if wire.strings_are_numbers else float(value)}))


def absurd(wire: Wire, fields: dict[str, Any], pick: int) -> bytes:
    """Magnitudes no market trades at: they must not reach a bar (1e308 * 2 overflows fsum)."""
    choice = pick % 5
    if choice < 3:
        key = wire.numbers[pick % 2]
        value = ["1e300", "1.7976931348623157e308", "1e16"][choice]
        return encode(
            wire.frame(fields | {key: value if wire.strings_are_numbers else float(value)})
        )
    if choice == 3:
        return encode(wire.frame(fields | {wire.trade_id: "f" * 100 if wire.text_ids else 2**70}))
    time_value: Any = 2**70 if wire.time_in_ms else "99999-01-01T00:00:00.000000Z"
    return encode(wire.frame(fields | {wire.time: time_value}))


def bad_time(wire: Wire, fields: dict[str, Any], pick: int) -> bytes:
    if wire.time_in_ms:
        value: Any = [0, -5, "soon"][pick % 3]
    else:  # naive, date-only, or not a time at all: would shift trades by a local offset
        value = ["2020-02-22 00:00:02", "2020-02-22", "yesterday"][pick % 3]
    return encode(wire.frame(fields | {wire.time: value}))


def huge_garbage(wire: Wire, fields: dict[str, Any], pick: int) -> bytes:
    return [b"[" * 200_000, b'{"a":"' + b"x" * 2_000_000, b"\xff" * 100_000][pick % 3]


BREAKERS: dict[str, tuple[Breaker, frozenset[str]]] = {
    "truncated": (truncated, frozenset({"malformed_json"})),
    "missing": (missing, frozenset({"missing_field"})),
    "wrong_number_type": (wrong_number_type, frozenset({"bad_type"})),
    "wrong_id_type": (wrong_id_type, frozenset({"bad_type"})),
    "wrong_symbol_type": (wrong_symbol_type, frozenset({"bad_type"})),
    # JSON has no NaN: as a bare literal it is malformed JSON, as a string a bad value
    "not_finite": (not_finite, frozenset({"bad_value", "malformed_json"})),
    "not_positive": (not_positive, frozenset({"bad_value"})),
    "absurd": (absurd, frozenset({"bad_value"})),
    "bad_time": (bad_time, frozenset({"bad_value", "bad_type"})),
    "huge_garbage": (huge_garbage, frozenset({"malformed_json"})),
}

# what the stream holds: a good frame, or one of these before the next good frame
Op = tuple[str, int]
ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["good"] * 6 + [*BREAKERS, "unknown_symbol", "duplicate", "not_ours", "padded"]
        ),
        st.integers(min_value=0, max_value=10_000),
    ),
    min_size=1,
    max_size=60,
)


def to_trade(wire: Wire, t: TradeRow) -> Trade:
    side: Side = "sell" if t.buyer_is_maker else "buy"
    trade_id = wire.trade_id_of(t)
    return Trade(wire.name, wire.symbol, trade_id, t.ts_ms, float(t.price), float(t.qty), side)


def pure_bars(wire: Wire, trades: list[TradeRow]) -> list[Bar]:
    """The bars of the good trades alone: the pure aggregator, closed by the same watermark."""
    agg = BarAggregator(wire.name)
    bars: list[Bar] = []
    for t in trades:
        bars += agg.add(to_trade(wire, t))
    return bars + agg.flush()


@dataclass
class Tally:
    rejected_by_kind: Counter[str]
    unknown: int = 0
    duplicates: int = 0


def run_stream(wire: Wire, stream: list[Op]) -> None:
    exchange: Exchange = get_exchange(wire.name)
    aggregator = BarAggregator(wire.name)
    stats = FeedStats(wire.name)
    emitted: list[Bar] = []
    feed = Feed(
        exchange,
        [wire.symbol],
        [wire.channel],
        "ws://127.0.0.1:1",
        aggregator,
        stats,
        Clock.watermark(),
        on_bars=emitted.extend,
        on_gap=lambda gap: None,
    )
    good: list[TradeRow] = []
    tally = Tally(Counter())
    position = 0
    other = wire.other_symbol
    for kind, pick in stream:
        trade = REAL_TRADES[position % len(REAL_TRADES)]
        fields = wire.render(trade)
        before = sum(stats.rejected.values())
        if kind == "good" or kind == "padded":
            if kind == "padded":  # a big frame that is still a good trade: parsed, kept
                fields = fields | {"pad": "x" * 300_000}
            feed.handle_frame(encode(wire.frame(fields)))
            good.append(trade)
            position += 1
        elif kind in BREAKERS:
            breaker, reasons = BREAKERS[kind]
            raw = breaker(wire, fields, pick)
            before_reasons = Counter(stats.rejected)
            feed.handle_frame(raw)
            new = Counter(stats.rejected)
            new.subtract(before_reasons)
            added = {reason for reason, n in new.items() if n}
            assert sum(new.values()) == 1, (kind, raw[:200])
            assert added <= reasons and added <= REASONS, (kind, added, raw[:200])
            tally.rejected_by_kind[kind] += 1
        elif kind == "unknown_symbol":
            feed.handle_frame(encode(wire.frame(wire.render(trade, other))))
            tally.unknown += 1
        elif kind == "duplicate":
            if not good:
                continue
            feed.handle_frame(encode(wire.frame(wire.render(good[-1]))))
            tally.duplicates += 1
        else:
            feed.handle_frame(wire.not_ours[pick % len(wire.not_ours)])
        if kind not in BREAKERS:
            assert sum(stats.rejected.values()) == before, (kind, stats.rejected)
        if pick % 7 == 0:
            feed.on_clock()  # the bar clock runs between frames too (no clock: counts only)
    feed.on_clock()
    assert sum(stats.rejected.values()) == sum(tally.rejected_by_kind.values())
    assert stats.dropped["unknown_symbol"] == tally.unknown
    assert aggregator.duplicates == stats.dropped["duplicate"] == tally.duplicates
    assert aggregator.late == aggregator.future == 0
    assert stats.trades == len(good)
    bars = emitted + aggregator.flush()
    assert comparable(bars) == comparable(pure_bars(wire, good))
    assert all(math.isfinite(b.volume) and b.high < 1e15 for b in bars)


@pytest.mark.parametrize("name", sorted(WIRES))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=ops)
def test_every_frame_is_parsed_or_rejected_with_a_reason_and_good_ones_are_kept(
    name: str, stream: list[Op]
) -> None:
    run_stream(WIRES[name], stream)


@pytest.mark.parametrize("name", sorted(WIRES))
def test_two_absurd_quantities_in_one_minute_never_reach_the_bar(name: str) -> None:
    """The defect this fuzzing found: 2 x 1e308 overflowed math.fsum at the minute close,
    raising out of handle_frame and taking the feed down. Now both frames are rejected."""
    stream: list[Op] = [("good", 1), ("absurd", 1), ("absurd", 6), ("good", 1)]
    stream += [("good", 1)] * 300  # past the minute's close
    run_stream(WIRES[name], stream)


@pytest.mark.parametrize("name", sorted(WIRES))
def test_every_breaker_on_every_field_choice(name: str) -> None:
    """Deterministic sweep: every kind of broken frame with each of its variants, in one run."""
    stream: list[Op] = []
    for kind in BREAKERS:
        for pick in range(12):
            stream += [(kind, pick), ("good", 1)]
    stream += [("unknown_symbol", 0), ("duplicate", 0), ("not_ours", 0), ("not_ours", 1)]
    stream += [("padded", 0), ("good", 0)]
    run_stream(WIRES[name], stream)
