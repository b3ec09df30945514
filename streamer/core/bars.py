"""Trades to closed 1-minute OHLCV bars, bucketed by exchange event time.

One ``BarAggregator`` serves one exchange feed and all of its symbols. It is pure: trades and
clock readings go in, closed bars come out; the caller owns the clock (wall clock live, replay
clock in replay), so the same code is tested without an event loop.

Closing. A minute ``[m, m + 60 s)`` closes once ``m + 60 s + grace`` has been reached by the
feed-wide watermark (the newest accepted exchange timestamp, over all symbols) or by the clock,
whichever comes first. Closing is feed-wide: a busy symbol's trades close the minutes of quiet
symbols too, and the clock closes them when the whole feed is quiet. Until a minute closes it
stays open, so trades that arrive out of order within the grace period land in their own
minute; a symbol can have several open minutes at once.

Bars are a pure function of the accepted trades, never of their arrival order:
open and close are the trades with the smallest and largest ``(ts_ms, trade_id)`` (exchange trade
ids grow in execution order, so this is the exchange's own order, also for equal timestamps; a
venue with text ids, Bybit's UUIDs, gets its trades of one millisecond ordered by the text,
deterministic but not necessarily the venue's order), high and low are max and min, and the
volume is ``math.fsum`` of the quantities (an exactly rounded sum, so it does not depend on the
order of addition either), snapped to the shortest decimal within 2 ulps (see ``snap_volume``)
so that it equals the exchange's own decimal sum.

Minutes without trades become flat bars (o=h=l=c=previous close, volume 0, 0 trades) once the
symbol has a previous close (a trade or ``seed``); before that nothing is emitted for it. A clock
or watermark jump of hours emits every missing flat bar: the work is O(symbols x minutes), one
``Bar`` per missing minute and nothing worse; the Redis window caps what is kept.

Every trade is accepted or dropped; the counters ``accepted``, ``duplicates``, ``late`` and
``future`` feed the metrics, and ``last_rejected`` holds the latest dropped trade with its
``AddOutcome`` so the shell can log a sample once per kind:

* duplicate: a trade id (an int, or a venue's text id) already accepted for the symbol. The
  id memory is bounded: the ids of the symbol's open minutes, plus the ids of its last
  ``RECENT_CLOSED_MINUTES`` closed minutes with trades, so that a resend after a reconnect is
  reported as duplicate rather than late.
* late: a trade for a minute that is already closed (for its symbol).
* future: ``ts_ms`` beyond the latest clock reading plus ``future_tolerance_ms``. It must not
  move the watermark, or a bad exchange clock would close every other symbol's bars early.
  Before the first clock reading there is no reference, so nothing is future.

A late or future trade is a real trade the bar of its minute will lack (an exchange whose clock
jumped, or a feed lagging by more than the grace). Its minute is therefore *suspect*:
``take_suspects`` hands the shell every suspect minute once it has closed, so that the shell
re-fetches it from the exchange's REST bars, which hold the trade (the bar itself stays as the
accepted trades make it: flags and closing follow the rules above). Bounded: minutes more than
``SUSPECT_HORIZON_MS`` away from the clock (broken timestamps rather than a clock jump) are only
counted, and at most ``SUSPECT_MINUTES_MAX`` minutes wait at a time (``suspects_dropped``
counts the rest).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any

from streamer.core.types import MINUTE_MS, Bar, Trade, TradeId

# ids of this many closed minutes (with trades) per symbol are remembered for duplicate checks
RECENT_CLOSED_MINUTES = 2
# late/future trades further than this from the clock are not worth a REST repair
SUSPECT_HORIZON_MS = 24 * 3_600_000
SUSPECT_MINUTES_MAX = 1024

_NEG = -(2**62)  # "minus infinity" for int-ms fields, keeps the hot path free of None checks
_POS = 2**62


class AddOutcome(StrEnum):
    """What ``BarAggregator.add`` did with a trade; the values double as metric labels."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"
    FUTURE = "future"


class _Minute:
    """One open minute of one symbol; mutable so that adding a trade allocates nothing."""

    __slots__ = (
        "close",
        "close_id",
        "close_ts",
        "end_ms",
        "high",
        "ids",
        "low",
        "open",
        "open_id",
        "open_time_ms",
        "open_ts",
        "qtys",
    )

    # Any, not TradeId: a venue's ids are all of one kind (``streamer.core.types.TradeId``), so
    # the comparisons below never mix an int with a str, which the type checker cannot know.
    open_id: Any
    close_id: Any
    ids: set[TradeId]

    def __init__(self, open_time_ms: int, trade: Trade) -> None:
        """Prices and times from ``trade``, which ``BarAggregator.add`` then folds in (its
        quantity and id), as it folds every trade: one copy of the fold, on the hot path."""
        price = trade.price
        self.open_time_ms = open_time_ms
        self.end_ms = open_time_ms + MINUTE_MS
        self.open = self.high = self.low = self.close = price
        self.open_ts = self.close_ts = trade.ts_ms
        self.open_id = self.close_id = trade.trade_id
        # quantities are kept (not summed) so that the closed volume is an exact fsum
        self.qtys: list[float] = []
        self.ids = set()


class _Symbol:
    """Per-symbol state: open minutes, the last close, and where closing has got to."""

    __slots__ = (
        "closed_before_ms",
        "cur",
        "fast_end_ms",
        "fast_start_ms",
        "has_trades",
        "last_close",
        "open",
        "recent_ids",
        "symbol",
    )

    def __init__(self, symbol: str, closed_before_ms: int) -> None:
        self.symbol = symbol
        # minutes with open time < closed_before_ms are closed (and emitted) for this symbol
        self.closed_before_ms = closed_before_ms
        self.open: dict[int, _Minute] = {}
        self.cur: _Minute | None = None  # the newest open minute: the hot path's target
        # trades with fast_start_ms <= ts_ms < fast_end_ms take the hot path: they fall in
        # ``cur``, it is the only open minute, and they are not future. Empty when unsure.
        self.fast_start_ms = _POS
        self.fast_end_ms = _NEG
        self.last_close: float | None = None
        self.recent_ids: deque[set[TradeId]] = deque(maxlen=RECENT_CLOSED_MINUTES)
        self.has_trades = False


def snap_volume(total: float) -> float:
    """The shortest decimal within 2 ulps of an ``fsum`` of exchange quantities.

    Exchanges sum decimal quantities exactly; summing their nearest floats lands within about
    1.5 ulps of that decimal sum (each input is off by at most half an ulp of itself, plus the
    final rounding), so the float nearest the exchange's figure is within 2 ulps and, with 15 or
    fewer significant digits, it is the shortest decimal there. Without this, Kraken's
    ``0.20853482`` comes out as ``0.20853481999999998``. The change is at most 2 ulps, far below
    any quantity step, and runs only when a bar closes.
    """
    tolerance = 2 * math.ulp(total)
    # Binary search for the fewest significant digits within tolerance: if d digits are, d + 1
    # are too (the d-digit value is one of the (d + 1)-digit candidates), and 17 always are.
    low, high = 1, 17
    while low < high:
        digits = (low + high) // 2
        if abs(float(f"{total:.{digits}g}") - total) <= tolerance:
            high = digits
        else:
            low = digits + 1
    return float(f"{total:.{low}g}")


def _bar_order(bar: Bar) -> tuple[int, str]:
    return (bar.open_time_ms, bar.symbol)


class BarAggregator:
    """Pure 1-minute bar aggregator for one exchange feed (all its symbols)."""

    def __init__(
        self,
        exchange: str,
        grace_ms: int = 2000,
        future_tolerance_ms: int = 5000,
        clock: Callable[[], int] | None = None,
    ) -> None:
        """``clock``, when given, is read (only) when a trade looks future against the last
        ``on_clock`` reading: a replay at full speed moves minutes between two clock ticks."""
        if grace_ms < 0 or future_tolerance_ms < 0:
            raise ValueError("grace_ms and future_tolerance_ms must be >= 0")
        self.exchange = exchange
        self._clock = clock
        self.grace_ms = grace_ms
        self.future_tolerance_ms = future_tolerance_ms
        self.duplicates = 0
        self.late = 0
        self.future = 0
        # the latest rejected trade and why: the shell's sample for its once-per-kind log line
        self.last_rejected: tuple[AddOutcome, Trade] | None = None
        # minute -> symbols with a late or future trade there, waiting for take_suspects()
        self._suspects: dict[int, set[str]] = {}
        self.suspects_dropped = 0
        self._closed_trades = 0  # accepted trades already emitted in closed bars
        self._symbols: dict[str, _Symbol] = {}
        self._watermark_ms = _NEG
        self._clock_ms = _NEG
        self._future_limit_ms = _POS
        # feed-wide: every minute with open time < _closed_before_ms is closed
        self._closed_before_ms = _NEG
        # the watermark or clock value at which the next minute closes
        self._next_close_at_ms = _NEG
        # outage intervals [start, end] (inclusive), keyed by start so that an open-ended
        # interval marked at disconnect can be shortened at reconnect
        self._outages: dict[tuple[int, frozenset[str] | None], int] = {}

    @property
    def accepted(self) -> int:
        """Trades accepted so far (computed, so the hot path need not count)."""
        return self._closed_trades + sum(
            len(mb.qtys) for st in self._symbols.values() for mb in st.open.values()
        )

    @property
    def closed_before_ms(self) -> int | None:
        """Every minute opening before this has closed (feed-wide); None before the first."""
        return None if self._closed_before_ms == _NEG else self._closed_before_ms

    @property
    def watermark_ms(self) -> int | None:
        """Newest accepted exchange timestamp of the feed, None before the first trade."""
        return None if self._watermark_ms == _NEG else self._watermark_ms

    def add(self, trade: Trade) -> list[Bar]:
        """Aggregate one trade; returns the bars its timestamp closed (usually none)."""
        ts = trade.ts_ms
        tid = trade.trade_id
        st = self._symbols.get(trade.symbol)
        if st is not None and st.fast_start_ms <= ts < st.fast_end_ms:
            # hot path: the symbol's newest and only open minute, allocation-free
            mb: _Minute = st.cur  # type: ignore[assignment]  # set while the window is open
            ids = mb.ids
            if tid in ids:
                return self._reject(AddOutcome.DUPLICATE, trade)
        else:
            target = self._minute_for(trade, st)
            if target is None:
                return []
            mb, ids = target, target.ids
        # fold the trade into its minute
        ids.add(tid)
        mb.qtys.append(trade.qty)
        price = trade.price
        if price > mb.high:
            mb.high = price
        elif price < mb.low:
            mb.low = price
        if ts > mb.close_ts or (ts == mb.close_ts and tid > mb.close_id):
            mb.close = price
            mb.close_ts = ts
            mb.close_id = tid
        elif ts < mb.open_ts or (ts == mb.open_ts and tid < mb.open_id):
            mb.open = price
            mb.open_ts = ts
            mb.open_id = tid
        if ts > self._watermark_ms:
            self._watermark_ms = ts
            if ts >= self._next_close_at_ms:
                return self._close_through(ts)
        return []

    def _reject(self, outcome: AddOutcome, trade: Trade) -> list[Bar]:
        if outcome is AddOutcome.DUPLICATE:
            self.duplicates += 1
        elif outcome is AddOutcome.LATE:
            self.late += 1
            self._suspect(trade)
        else:
            self.future += 1
            self._suspect(trade)
        self.last_rejected = (outcome, trade)
        return []

    def _suspect(self, trade: Trade) -> None:
        """Note that the bar of ``trade``'s minute will lack it (slow path only)."""
        ts = trade.ts_ms
        reference = self._clock_ms if self._clock_ms != _NEG else self._watermark_ms
        if reference == _NEG or abs(ts - reference) > SUSPECT_HORIZON_MS:
            return  # no reference, or a broken timestamp: counted, nothing to repair
        minute = ts - ts % MINUTE_MS
        symbols = self._suspects.get(minute)
        if symbols is None:
            if len(self._suspects) >= SUSPECT_MINUTES_MAX:
                self.suspects_dropped += 1
                return
            symbols = self._suspects[minute] = set()
        symbols.add(trade.symbol)

    def take_suspects(self) -> tuple[int, int, frozenset[str]] | None:
        """The closed minutes that lack a late or future trade: ``(first open time, last open
        time, symbols)`` for the shell to re-fetch over REST, or None. Each is handed out once;
        minutes not yet closed (a future trade's) wait until they are."""
        closed = [m for m in self._suspects if m < self._closed_before_ms]
        if not closed:
            return None
        symbols: set[str] = set()
        for minute in closed:
            symbols |= self._suspects.pop(minute)
        return min(closed), max(closed), frozenset(symbols)

    def _minute_for(self, trade: Trade, st: _Symbol | None) -> _Minute | None:
        """Every case but the hot one (new symbol or minute, out of order, rejections): the
        open minute that ``trade`` is to be folded into, new if need be; None if rejected."""
        ts = trade.ts_ms
        if ts > self._future_limit_ms and not self._clock_caught_up(ts):
            self._reject(AddOutcome.FUTURE, trade)
            return None
        minute = ts - ts % MINUTE_MS
        tid = trade.trade_id
        closed_before = self._closed_before_ms
        if st is not None and st.closed_before_ms > closed_before:
            closed_before = st.closed_before_ms  # seeded ahead of the feed
        if minute < closed_before:
            if st is not None and any(tid in ids for ids in st.recent_ids):
                self._reject(AddOutcome.DUPLICATE, trade)
            else:
                self._reject(AddOutcome.LATE, trade)
            return None
        if st is None:
            st = _Symbol(trade.symbol, self._closed_before_ms)
            self._symbols[trade.symbol] = st
        for open_minute in st.open.values():
            if tid in open_minute.ids:
                self._reject(AddOutcome.DUPLICATE, trade)
                return None
        mb = st.open.get(minute)
        if mb is None:
            mb = _Minute(minute, trade)
            st.open[minute] = mb
            if st.cur is None or minute > st.cur.open_time_ms:
                st.cur = mb
        st.has_trades = True
        self._set_fast_window(st)
        return mb

    def _clock_caught_up(self, ts: int) -> bool:
        """Read the injected clock afresh: is ``ts`` within tolerance of it after all?"""
        if self._clock is None:
            return False
        now = self._clock()
        if now > self._clock_ms:
            self._clock_ms = now
            self._future_limit_ms = now + self.future_tolerance_ms
        return ts <= self._future_limit_ms

    def _set_fast_window(self, st: _Symbol) -> None:
        """Open the hot path for ``st.cur`` when it is the only open minute.

        The window ends at the future limit as it is now; a later clock reading only raises
        that limit, so a stale window is merely conservative, and the next slow-path trade of
        the symbol widens it again.
        """
        mb = st.cur
        if mb is not None and len(st.open) == 1:
            st.fast_start_ms = mb.open_time_ms
            st.fast_end_ms = min(mb.end_ms, self._future_limit_ms + 1)
        else:
            st.fast_start_ms = _POS
            st.fast_end_ms = _NEG

    def on_clock(self, now_ms: int) -> list[Bar]:
        """Advance the injected clock; returns every bar whose minute end + grace <= now_ms."""
        if now_ms > self._clock_ms:
            self._clock_ms = now_ms
            self._future_limit_ms = now_ms + self.future_tolerance_ms
        horizon = max(now_ms, self._watermark_ms)
        if horizon >= self._next_close_at_ms:
            return self._close_through(horizon)
        return []

    def mark_outage(self, start_ms: int, end_ms: int, symbols: Iterable[str] | None = None) -> None:
        """Record that ``symbols`` (default: all) may have missed trades in ``[start_ms, end_ms]``.

        Bars closed from now on whose minute overlaps the interval come out ``complete=False``
        (flat ones too: a missed trade cannot be told from a quiet minute), for backfill to
        replace. Bars already returned are not revisited. Calling again with the same
        ``start_ms`` and symbols replaces the end, so a shell can mark ``(t_disconnect, far
        future)`` at disconnect and ``(t_disconnect, t_reconnect)`` once the feed is back.
        A feed with several connections names the symbols of the one that dropped.
        """
        if end_ms < start_ms:
            raise ValueError(f"outage ends before it starts: {start_ms} > {end_ms}")
        self._outages[(start_ms, None if symbols is None else frozenset(symbols))] = end_ms

    def repaired(self, bar: Bar) -> None:
        """``bar`` replaced a stored one. If it is the symbol's newest closed minute, its close
        is the price of the flat bars to come (the replaced bar's may have missed trades)."""
        st = self._symbols.get(bar.symbol)
        if st is not None and st.closed_before_ms == bar.open_time_ms + MINUTE_MS:
            st.last_close = bar.close

    def seed(self, last_bar: Bar) -> None:
        """Restore a symbol after a restart from its newest stored bar.

        Its close is the price of the flat bars that follow, and its minute and all earlier
        ones count as closed (a trade for them is late). Must come before the symbol's first
        trade: seeding over live state would silently rewrite history.
        """
        if last_bar.exchange != self.exchange:
            raise ValueError(f"seed bar of {last_bar.exchange!r} given to {self.exchange!r}")
        if last_bar.open_time_ms % MINUTE_MS:
            raise ValueError(f"seed bar open time {last_bar.open_time_ms} is not a minute start")
        old = self._symbols.get(last_bar.symbol)
        if old is not None and old.has_trades:
            raise ValueError(f"seed for {last_bar.symbol!r} after it has received trades")
        st = _Symbol(last_bar.symbol, last_bar.open_time_ms + MINUTE_MS)
        st.last_close = last_bar.close
        self._symbols[last_bar.symbol] = st

    def flush(self) -> list[Bar]:
        """Snapshot of the open (partial) minutes at shutdown, ``complete=False``, in order.

        The state is kept, so further trades still land and the minutes later close normally.
        """
        out = [self._bar(st, mb, False) for st in self._symbols.values() for mb in st.open.values()]
        out.sort(key=_bar_order)
        return out

    def _bar(self, st: _Symbol, mb: _Minute, complete: bool) -> Bar:
        return Bar(
            self.exchange,
            st.symbol,
            mb.open_time_ms,
            mb.open,
            mb.high,
            mb.low,
            mb.close,
            snap_volume(math.fsum(mb.qtys)),
            len(mb.qtys),
            complete,
        )

    def _complete(self, symbol: str, minute_ms: int) -> bool:
        end = minute_ms + MINUTE_MS
        for (start_ms, symbols), end_ms in self._outages.items():
            if start_ms < end and end_ms >= minute_ms and (symbols is None or symbol in symbols):
                return False
        return True

    def _close_through(self, horizon_ms: int) -> list[Bar]:
        """Close every minute m with m + 60 s + grace <= horizon_ms, for every symbol."""
        new_closed_before = horizon_ms - self.grace_ms
        new_closed_before -= new_closed_before % MINUTE_MS
        if new_closed_before <= self._closed_before_ms:
            return []
        out: list[Bar] = []
        for st in self._symbols.values():
            if st.closed_before_ms < new_closed_before:
                self._close_symbol(st, new_closed_before, out)
        self._closed_before_ms = new_closed_before
        self._next_close_at_ms = new_closed_before + MINUTE_MS + self.grace_ms
        if self._outages:
            # an interval that ends before every still-open minute cannot mark anything again
            self._outages = {k: e for k, e in self._outages.items() if e >= new_closed_before}
        if len(out) > 1:
            out.sort(key=_bar_order)
        return out

    def _close_symbol(self, st: _Symbol, closed_before_ms: int, out: list[Bar]) -> None:
        last_close = st.last_close
        # last_close is set only once closed_before_ms is a real minute (seed or an earlier
        # close), so the flat-bar ranges below never start at _NEG
        next_minute = st.closed_before_ms
        check_outage = bool(self._outages)
        if st.open:
            for minute in sorted(m for m in st.open if m < closed_before_ms):
                mb = st.open.pop(minute)
                if last_close is not None:
                    self._flat_bars(st.symbol, last_close, next_minute, minute, out, check_outage)
                out.append(self._bar(st, mb, not check_outage or self._complete(st.symbol, minute)))
                self._closed_trades += len(mb.qtys)
                st.recent_ids.append(mb.ids)
                last_close = mb.close
                next_minute = minute + MINUTE_MS
            if not st.open:
                st.cur = None
            self._set_fast_window(st)
        if last_close is not None:
            self._flat_bars(st.symbol, last_close, next_minute, closed_before_ms, out, check_outage)
        st.last_close = last_close
        st.closed_before_ms = closed_before_ms

    def _flat_bars(
        self,
        symbol: str,
        price: float,
        start_ms: int,
        end_ms: int,
        out: list[Bar],
        check_outage: bool,
    ) -> None:
        """Flat bars for the trade-less minutes in ``[start_ms, end_ms)``."""
        exchange = self.exchange
        for minute in range(start_ms, end_ms, MINUTE_MS):
            complete = not check_outage or self._complete(symbol, minute)
            out.append(Bar(exchange, symbol, minute, price, price, price, price, 0.0, 0, complete))
