"""When a feed may have missed trades: the outage and gap bookkeeping of its connections.

Sans-I/O, like websockets' protocol objects: the feed shell reports what happened to each
connection plan (a connection lost, a connection's first frame, a clock tick, late or future
trades the aggregator set aside) and carries out what comes back: ``take_outages()``, intervals
to mark on the ``BarAggregator`` so that the minutes they overlap close incomplete, and
``take_gaps()``, stretches whose bars REST must refill.

A plan's gap opens when its connection is lost, ``grace_ms`` before the clock reading at its
last frame: trades still in flight then (exchange time behind the clock by up to the grace) are
lost too. The outage stays open-ended until a new connection of the plan delivers, so that
minutes closing meanwhile come out incomplete; it ends at the clock reading of that first frame.
A start-up gap (``gap_start_ms``) is open the same way from the start.

On the watermark clock there is no reading, only the newest trade seen: a gap opens at the
watermark minus the grace (no trade yet: nothing to date it by, no gap), it ends at the first
trade after the reconnect, and it is handed out only once the aggregator has closed its last
minute, so that REST has every bar of it (nothing else waits on a clock).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from streamer.core.clock import ClockMode
from streamer.core.types import MINUTE_MS, floor_minute

# the end of an outage that is still going on: every minute from its start is suspect
OPEN_OUTAGE_END_MS = 2**62


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch of exchange time when a connection received nothing; its bars need backfill."""

    exchange: str
    symbols: tuple[str, ...]
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Outage:
    """``symbols`` may have missed trades in ``[start_ms, end_ms]``, for
    ``BarAggregator.mark_outage``; a later one with the same start replaces the end."""

    start_ms: int
    end_ms: int
    symbols: tuple[str, ...]


class OutageTracker:
    """Outages and gaps of one feed's connection plans (indexed as the feed lists them)."""

    def __init__(
        self,
        exchange: str,
        plan_symbols: Sequence[tuple[str, ...]],
        mode: ClockMode,
        grace_ms: int,
        gap_start_ms: int | None = None,
    ) -> None:
        """``gap_start_ms``: every plan is in a gap from there until it delivers (start-up)."""
        self.exchange = exchange
        self.mode = mode
        self.grace_ms = grace_ms
        self._symbols = [tuple(s) for s in plan_symbols]
        # per plan: exchange time since which it has received nothing (None: not in a gap)
        self._gap_start: list[int | None] = [gap_start_ms] * len(self._symbols)
        # watermark clock: plans delivering again, with the watermark then; the first trade
        # newer than that dates the end of their outage (kept in the order they reconnected)
        self._reconnected: dict[int, int] = {}
        # watermark clock: ended gaps waiting for the aggregator to close their last minute
        self._held: list[Gap] = []
        self._outages: list[Outage] = []
        self._gaps: list[Gap] = []
        if gap_start_ms is not None:
            for symbols in self._symbols:
                self._outages.append(Outage(gap_start_ms, OPEN_OUTAGE_END_MS, symbols))

    def in_gap(self, plan: int) -> bool:
        return self._gap_start[plan] is not None

    # ---- events in ----------------------------------------------------------------------------

    def connection_lost(
        self, plan: int, last_frame_clock_ms: int | None, watermark_ms: int | None
    ) -> None:
        """A connection of ``plan`` ended. ``last_frame_clock_ms``: the clock reading at its
        last frame (at its opening, if none came); None on the watermark clock, where
        ``watermark_ms`` (the newest trade seen, None before the first) stands in for it."""
        self._reconnected.pop(plan, None)  # down again before a trade dated the reconnect
        if self._gap_start[plan] is not None:
            return  # already in a gap: nothing arrived since
        last = last_frame_clock_ms if self.mode is ClockMode.WALL else watermark_ms
        if last is None:
            return  # no trade yet, nothing to date it by
        start = max(last - self.grace_ms, 0)
        self._gap_start[plan] = start
        self._outages.append(Outage(start, OPEN_OUTAGE_END_MS, self._symbols[plan]))

    def first_frame(self, plan: int, clock_ms: int | None, watermark_ms: int | None) -> None:
        """A new connection of ``plan`` delivered its first frame: the exchange has taken the
        subscription, so trades flow from here on. ``clock_ms``: the clock reading now (None
        on the watermark clock); ``watermark_ms``: the newest trade seen."""
        start = self._gap_start[plan]
        if start is None:
            return
        if self.mode is ClockMode.WATERMARK:
            # "now" is the time of the first trade after this reconnect: ``tick`` finds it
            self._reconnected[plan] = watermark_ms or 0
            return
        assert clock_ms is not None, "a wall clock has a reading"
        self._gap_start[plan] = None
        self._end_gap(plan, start, clock_ms)

    def tick(self, watermark_ms: int | None, closed_before_ms: int | None) -> None:
        """The bar clock ticked. On the watermark clock, end the outages of reconnected plans
        once a newer trade has come. On either clock, hand out the gaps whose last minute the
        aggregator has closed (every minute opening before ``closed_before_ms`` has): a repair
        that came before the live bar of its last minute would be overwritten by it."""
        if self.mode is ClockMode.WATERMARK and watermark_ms is not None:
            for plan, seen in list(self._reconnected.items()):
                start = self._gap_start[plan]
                if watermark_ms > seen and start is not None:
                    del self._reconnected[plan]
                    self._gap_start[plan] = None
                    self._end_gap(plan, start, watermark_ms)
        if closed_before_ms is None or not self._held:
            return
        due = [g for g in self._held if floor_minute(g.end_ms) + MINUTE_MS <= closed_before_ms]
        if due:
            self._held = [g for g in self._held if g not in due]
            self._gaps.extend(due)

    def missed(self, symbol: str, start_ms: int, end_ms: int) -> None:
        """A connection delivered but skipped trades of ``symbol`` between ``start_ms`` and
        ``end_ms`` (a trade-id jump, ``TradeIdContinuity``): those minutes come out incomplete
        and REST refills them, like an outage's."""
        symbols = (symbol,)
        self._outages.append(Outage(start_ms, end_ms, symbols))
        self._hand_out(Gap(self.exchange, symbols, start_ms, end_ms))

    def suspects(self, first_ms: int, last_ms: int, symbols: Iterable[str]) -> None:
        """Closed minutes whose bars lack a late or future trade (``take_suspects``): re-fetch
        them over REST, whose bars hold every trade, like the minutes of an outage."""
        self._gaps.append(Gap(self.exchange, tuple(sorted(symbols)), first_ms, last_ms))

    # ---- decisions out ------------------------------------------------------------------------

    def take_outages(self) -> list[Outage]:
        """Outages to mark on the aggregator now, oldest decision first."""
        outages, self._outages = self._outages, []
        return outages

    def take_gaps(self) -> list[Gap]:
        """Gaps ready for REST repair, oldest first."""
        gaps, self._gaps = self._gaps, []
        return gaps

    def _end_gap(self, plan: int, start: int, end: int) -> None:
        end = max(end, start)
        symbols = self._symbols[plan]
        self._outages.append(Outage(start, end, symbols))
        self._hand_out(Gap(self.exchange, symbols, start, end))

    def _hand_out(self, gap: Gap) -> None:
        self._held.append(gap)  # until the aggregator has closed its last minute (``tick``)


class TradeIdContinuity:
    """Missed trades, told by each symbol's trade ids: on venues whose ids count up by one per
    symbol (Coinbase, Kraken), a jump means the trades between never arrived, though the
    connection stayed up. A heartbeat naming a newer id than the newest seen (Coinbase's
    ``last_trade_id``) says the same of a quiet product. Ids at or below the newest seen are
    duplicates or stragglers, for the aggregator to drop."""

    def __init__(self) -> None:
        self._newest: dict[str, tuple[int, int]] = {}  # symbol -> (trade id, its time)

    def trade(self, symbol: str, trade_id: int | str, ts_ms: int) -> tuple[int, int] | None:
        """The stretch ``(start_ms, end_ms)`` whose trades were missed, if this one shows any
        (string ids, which do not count, show none)."""
        if type(trade_id) is not int:
            return None
        newest = self._newest.get(symbol)
        if newest is not None and trade_id <= newest[0]:
            return None
        self._newest[symbol] = (trade_id, ts_ms)
        if newest is not None and trade_id > newest[0] + 1:
            return newest[1], ts_ms
        return None

    def mark(self, symbol: str, last_trade_id: int, ts_ms: int) -> tuple[int, int] | None:
        """The venue says ``last_trade_id`` is the newest at ``ts_ms``: a missed stretch if we
        have seen only older ones (with nothing seen yet, it is where counting starts)."""
        newest = self._newest.get(symbol)
        if newest is not None and last_trade_id <= newest[0]:
            return None
        self._newest[symbol] = (last_trade_id, ts_ms)
        return None if newest is None else (newest[1], ts_ms)

    def forget(self, symbols: Iterable[str]) -> None:
        """A connection was lost: its outage covers what it missed, so counting starts afresh
        (else the first trade after the reconnect would report the same stretch again)."""
        for symbol in symbols:
            self._newest.pop(symbol, None)
