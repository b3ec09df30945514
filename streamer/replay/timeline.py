"""The replay exchange's time: every source merged into one timeline, laps, and the replay clock.

``Timeline`` orders the events of all sources by data time (a minute's close sorts before a
trade at the same millisecond) and, with ``loop``, repeats the data shifted forward in time and
in trade ids by its span on every lap, so times and ids stay increasing. It also answers which
klines exist in a range, over the history before the start and every lap, for REST.

``ReplayClock`` maps data time to wall (monotonic) time at ``speed`` data ms per wall ms and
never runs ahead of what has been sent. Both are pure: the caller passes the monotonic time.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import replace

from streamer.core.timefmt import iso_seconds
from streamer.core.types import MINUTE_MS
from streamer.replay.data import SYNTH_TRADES_PER_MINUTE, Kline, Source, TradeRow

CLOSE = 0  # event kinds, in sort order: a minute's close sorts before a trade at the same ms
TRADE = 1

# (data time, kind, source index, sequence number, TradeRow or Kline): a tuple, so that merging
# the sources' streams compares plain ints (the sequence number breaks every tie)
Event = tuple[int, int, int, int, TradeRow | Kline]


def shift_kline(kline: Kline, shift_ms: int, shift_id: int) -> Kline:
    """``kline`` as it appears on a later lap of the loop."""
    if not shift_ms:
        return kline
    has_ids = kline.first_trade_id >= 0
    return replace(
        kline,
        open_time_ms=kline.open_time_ms + shift_ms,
        first_trade_id=kline.first_trade_id + shift_id if has_ids else -1,
        last_trade_id=kline.last_trade_id + shift_id if has_ids else -1,
    )


class Timeline:
    """The sources (one per symbol) replayed from ``start_ms`` (floored to the minute; default:
    the data's first minute), once or, with ``loop``, forever."""

    def __init__(self, sources: Sequence[Source], start_ms: int | None, loop: bool) -> None:
        if not sources:
            raise ValueError("no data sources")
        self.sources: dict[str, Source] = {}
        for source in sources:
            if source.symbol in self.sources:
                raise ValueError(f"two sources for {source.symbol}: give one another symbol")
            self.sources[source.symbol] = source
        self.loop = loop
        self.first_ms = min(s.first_open_ms for s in sources)  # the data's first minute
        self.end_ms = max(s.end_ms for s in sources)  # the end of its last minute
        self.start_ms = self.first_ms if start_ms is None else start_ms - start_ms % MINUTE_MS
        if not self.first_ms <= self.start_ms < self.end_ms:
            raise ValueError(
                f"start {iso_seconds(self.start_ms)} is outside the data "
                f"({iso_seconds(self.first_ms)} .. {iso_seconds(self.end_ms)})"
            )
        self.span_ms = self.end_ms - self.start_ms  # one lap of the loop

    def events(self) -> Iterator[Event]:
        """Every trade and minute close from the start on, in data-time order."""
        streams = [self._source_events(i, s) for i, s in enumerate(self.sources.values())]
        return streams[0] if len(streams) == 1 else heapq.merge(*streams)

    def _source_events(self, index: int, source: Source) -> Iterator[Event]:
        first = source.index_at(self.start_ms)
        if first == len(source.klines):
            return
        id_span = self.id_span(source)
        seq = itertools.count()
        for lap in itertools.count() if self.loop else range(1):
            shift_ms, shift_id = lap * self.span_ms, lap * id_span
            for i in range(first, len(source.klines)):
                for trade in source.minute_trades(i):
                    if lap:
                        trade = TradeRow(
                            trade.trade_id + shift_id,
                            trade.ts_ms + shift_ms,
                            trade.price,
                            trade.qty,
                            trade.buyer_is_maker,
                        )
                    yield (trade.ts_ms, TRADE, index, next(seq), trade)
                kline = shift_kline(source.klines[i], shift_ms, shift_id)
                yield (kline.open_time_ms + MINUTE_MS, CLOSE, index, next(seq), kline)

    def id_span(self, source: Source) -> int:
        """How far trade ids move on each lap of the loop, so they stay unique and increasing."""
        if source.kind == "klines":
            return self.span_ms // MINUTE_MS * SYNTH_TRADES_PER_MINUTE
        trades = source.trades
        first = source.trade_start[source.index_at(self.start_ms)]
        return trades[-1].trade_id - trades[first].trade_id + 1 if first < len(trades) else 1

    def klines_up(self, source: Source, low: int, high: int) -> Iterator[Kline]:
        """Klines opening in [low, high], oldest first, over the history and every lap."""
        klines, first = source.klines, source.index_at(self.start_ms)
        i = source.index_at(low)
        while i < first and klines[i].open_time_ms <= high:
            yield klines[i]
            i += 1
        id_span = self.id_span(source)
        lap = max(0, (low - self.start_ms) // self.span_ms) if self.loop else 0
        while self.start_ms + lap * self.span_ms <= high and (self.loop or lap == 0):
            shift = lap * self.span_ms
            i = max(first, source.index_at(low - shift))
            while i < len(klines) and klines[i].open_time_ms + shift <= high:
                yield shift_kline(klines[i], shift, lap * id_span)
                i += 1
            lap += 1

    def klines_down(self, source: Source, high: int) -> Iterator[Kline]:
        """Klines opening at or before ``high``, newest first."""
        klines, first = source.klines, source.index_at(self.start_ms)
        id_span = self.id_span(source)
        if high >= self.start_ms:
            last_lap = (high - self.start_ms) // self.span_ms if self.loop else 0
            for lap in range(last_lap, -1, -1):
                shift = lap * self.span_ms
                i = min(len(klines), source.index_at(high - shift + 1)) - 1
                while i >= first:
                    yield shift_kline(klines[i], shift, lap * id_span)
                    i -= 1
        i = min(first, source.index_at(high + 1)) - 1
        while i >= 0:
            yield klines[i]
            i -= 1


class ReplayClock:
    """Data time now: ``speed`` data ms per wall ms from ``start()`` on (0 = as fast as the
    events are sent), capped by ``position_ms``, the data time up to which everything has been
    sent. It holds at ``start_ms`` until started."""

    def __init__(self, start_ms: int, speed: float) -> None:
        if speed < 0 or not math.isfinite(speed):
            raise ValueError(
                f"speed must be a finite number >= 0 (0 = as fast as possible): {speed}"
            )
        self.start_ms = start_ms
        self.speed = speed
        self.started_at: float | None = None  # the monotonic time of start()
        self.position_ms = start_ms

    def start(self, now: float) -> None:
        self.started_at = now

    def now_ms(self, now: float) -> int:
        if self.started_at is None:
            return self.start_ms
        if self.speed == 0:
            return self.position_ms
        wall = self.start_ms + int((now - self.started_at) * self.speed * 1000)
        return min(wall, self.position_ms)

    def due_at(self, ts_ms: int) -> float:
        """The monotonic time at which the event at ``ts_ms`` is due (``speed > 0``, started)."""
        assert self.started_at is not None and self.speed > 0
        return self.started_at + (ts_ms - self.start_ms) / self.speed / 1000

    def advance(self, position_ms: int) -> None:
        """Everything up to ``position_ms`` has been sent: the clock may move that far."""
        self.position_ms = max(self.position_ms, position_ms)
