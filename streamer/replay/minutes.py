"""The minutes a venue's REST candles are made of, as that venue computes them.

Binance's klines are the sources' own (``data.Kline``). Coinbase and Kraken serve other rows and
quirks, and both also serve the minute still running, as far as it has traded; those dialects
build their pages from ``Minute``. Volumes are exact decimal sums of the traded quantities, the
way an exchange adds them up (a float ``fsum`` is not always the nearest float to that decimal
sum). Pure: the caller passes the replay clock's time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from streamer.core.types import MINUTE_MS
from streamer.replay.data import Kline, Source, TradeRow
from streamer.replay.timeline import Timeline

_ZERO = Decimal(0)


def plain(value: Decimal) -> str:
    """A volume as plain digits: no exponent, no trailing zeros, ``0`` for nothing."""
    return format(value.normalize(), "f") if value else "0"


@dataclass(frozen=True, slots=True)
class Minute:
    """One minute's candle; ``final`` is False for the minute still running (trades so far)."""

    open_time_ms: int
    open: str
    high: str
    low: str
    close: str
    volume: Decimal  # the exact sum of the quantities
    quote_volume: Decimal  # the exact sum of price * quantity
    trades: int
    final: bool

    @property
    def vwap(self) -> Decimal:
        return self.quote_volume / self.volume if self.volume else _ZERO

    def text_row(self) -> list[str]:
        """``[open time (ms), open, high, low, close, volume]``, all text: how OKX's and
        Bybit's candle rows begin."""
        return [
            str(self.open_time_ms),
            self.open,
            self.high,
            self.low,
            self.close,
            plain(self.volume),
        ]


def minute_trades(timeline: Timeline, source: Source, kline: Kline) -> list[TradeRow]:
    """The trades of ``kline`` (as ``Timeline.klines_up`` yields it: on a later lap of the loop,
    shifted in time and ids, like the timeline shifts its trades)."""
    lap = 0
    if timeline.loop and kline.open_time_ms >= timeline.start_ms + timeline.span_ms:
        lap = (kline.open_time_ms - timeline.start_ms) // timeline.span_ms
    shift_ms = lap * timeline.span_ms
    trades = source.minute_trades(source.index_at(kline.open_time_ms - shift_ms))
    if not lap:
        return trades
    shift_id = lap * timeline.id_span(source)
    return [
        TradeRow(t.trade_id + shift_id, t.ts_ms + shift_ms, t.price, t.qty, t.buyer_is_maker)
        for t in trades
    ]


def _from_trades(open_time_ms: int, trades: list[TradeRow], prev_close: str, final: bool) -> Minute:
    if not trades:
        return Minute(open_time_ms, prev_close, prev_close, prev_close, prev_close, _ZERO, _ZERO,
                      0, final)  # fmt: skip
    prices = [float(t.price) for t in trades]
    high = max(range(len(trades)), key=prices.__getitem__)
    low = min(range(len(trades)), key=prices.__getitem__)
    qtys = [Decimal(t.qty) for t in trades]
    quote = sum((Decimal(t.price) * q for t, q in zip(trades, qtys, strict=True)), _ZERO)
    return Minute(
        open_time_ms,
        trades[0].price,
        trades[high].price,
        trades[low].price,
        trades[-1].price,
        sum(qtys, _ZERO),
        quote,
        len(trades),
        final,
    )


def _closed(timeline: Timeline, source: Source, kline: Kline) -> Minute:
    trades = minute_trades(timeline, source, kline)
    minute = _from_trades(kline.open_time_ms, trades, kline.close, True)
    if source.kind == "klines":  # the recorded kline's own tokens (its trades reproduce them)
        return Minute(kline.open_time_ms, kline.open, kline.high, kline.low, kline.close,
                      Decimal(kline.volume), minute.quote_volume, minute.trades, True)  # fmt: skip
    return minute


def minutes(
    timeline: Timeline, source: Source, low_ms: int, high_ms: int, now_ms: int
) -> Iterator[Minute]:
    """The minutes opening in ``[low_ms, high_ms]`` that exist at ``now_ms``, oldest first: the
    closed ones, then the one running at ``now_ms`` (if in range and in the data) with the trades
    before ``now_ms``."""
    current = now_ms - now_ms % MINUTE_MS
    for kline in timeline.klines_up(source, low_ms, min(high_ms, current - MINUTE_MS)):
        yield _closed(timeline, source, kline)
    if not low_ms <= current <= high_ms:
        return
    running = next(timeline.klines_up(source, current, current), None)
    if running is None:
        return
    previous = next(timeline.klines_down(source, current - MINUTE_MS), None)
    trades = [t for t in minute_trades(timeline, source, running) if t.ts_ms < now_ms]
    prev_close = previous.close if previous is not None else (trades[0].price if trades else "")
    if trades or prev_close:
        yield _from_trades(current, trades, prev_close, False)


def trades_after(
    timeline: Timeline, source: Source, after_ms: int, now_ms: int
) -> Iterator[TradeRow]:
    """Every trade with ``after_ms < ts_ms < now_ms`` (sent by now), oldest first."""
    low = after_ms + 1 - (after_ms + 1) % MINUTE_MS
    for kline in timeline.klines_up(source, low, now_ms - now_ms % MINUTE_MS):
        for trade in minute_trades(timeline, source, kline):
            if trade.ts_ms >= now_ms:
                return
            if trade.ts_ms > after_ms:
                yield trade


def last_trade_id_before(source: Source, ms: int) -> int | None:
    """The id of the source's last trade before ``ms``; with none, the id before its first trade
    from ``ms`` on (ids count up by one, so that is what the venue's previous trade had). None:
    the source has no trades at all."""
    index = source.index_at(ms)
    if source.kind == "trades":
        first = source.trade_start[index] if index < len(source.klines) else len(source.trades)
        if first > 0:
            return source.trades[first - 1].trade_id
        return source.trades[0].trade_id - 1 if source.trades else None
    for i in range(index - 1, -1, -1):
        trades = source.minute_trades(i)
        if trades:
            return trades[-1].trade_id
    for i in range(index, len(source.klines)):
        trades = source.minute_trades(i)
        if trades:
            return trades[0].trade_id - 1
    return None
