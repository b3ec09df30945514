"""Paging through an exchange's REST bars, as a pure state machine.

Both backfills (the streamer's, over aiohttp, and the trainer's, over urllib) fetch the bars of
a range page by page; only how they send a request differs. The pager decides what to ask for
next and when the range is done: it asks from a cursor, keeps the bars of each page that lie in
the range (of equal open times the last page's wins), moves the cursor past the newest of them
(past the page's whole span when it held none: a quiet stretch, which Coinbase leaves out of its
candles), and stops at the end of the range. A venue that leaves minutes without trades out of
its bars (``omits_quiet_minutes``) gets them back as flat bars at the previous close, so that
they do not stay incomplete forever.

A venue whose bars reach only so far back (Kraken's OHLC: the 720 most recent minutes,
``bars_depth_minutes``) but that serves its trade history (``trades_request`` and
``parse_trades``) gets older ranges from its trades instead: ``TradePager`` pages through them
and makes the bars with the live path's aggregator, so a backfilled bar is the bar the
WebSocket would have made. ``choose_pager`` decides which, from the range and the clock.

Both pagers have one surface (``Pager``) for the shells: ``next_request``, ``read`` (an answer
to its page, or the failure it stands for), ``accept``, ``done``, ``pages`` and ``bars``.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, cast

from streamer.core.bars import BarAggregator
from streamer.core.exchanges import Exchange, RestRequest
from streamer.core.retry import Permanent, RetryPolicy, http_failure
from streamer.core.types import MINUTE_MS, Bar, Trade, floor_minute

MAX_RETRY_AFTER_S = 300.0
# A range that starts this close to the venue's bar depth is fetched from trades all the same:
# retries and queued requests of other symbols may take minutes before its first page goes out.
DEPTH_MARGIN_MINUTES = 10
# Each Trades page after the first starts this long before the previous one's ``last``: the
# trades of that millisecond the page had no room for are not skipped whether the venue reads
# ``since`` inclusively or not, or in ms only; the repeats are dropped by trade id.
TRADE_PAGE_OVERLAP_NS = 1_000_000

PageT = TypeVar("PageT")


class Pager(Protocol[PageT]):
    """What a backfill shell drives: ask, read the answer, accept it, until done."""

    done: bool
    pages: int

    def next_request(self) -> RestRequest | None: ...

    def read(self, status: int, body: bytes, retry_after: str | None, where: str) -> PageT: ...

    def accept(self, page: PageT) -> None: ...

    def bars(self) -> list[Bar]: ...


class TradeHistory(Protocol):
    """A venue that serves its past trades over REST."""

    name: str

    def trades_request(self, symbol: str, since_ns: int) -> RestRequest: ...

    def parse_trades(self, symbol: str, raw: bytes) -> tuple[list[Trade], int]: ...


def page_retry_policy(max_attempts: int = 5) -> RetryPolicy:
    """How one page is retried: up to ``max_attempts`` tries, backing off from 1 s to 30 s,
    waiting what a throttling answer's ``Retry-After`` asks (at most 5 minutes)."""
    return RetryPolicy(
        initial_s=1.0, max_s=30.0, max_attempts=max_attempts, max_retry_after_s=MAX_RETRY_AFTER_S
    )


class RestPager:
    """The pages of 1-minute bars opening in ``[start_ms, end_ms)`` for one symbol."""

    def __init__(self, exchange: Exchange, symbol: str, start_ms: int, end_ms: int) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.cursor = floor_minute(start_ms)
        self.end_ms = end_ms
        self.pages = 0
        self._bars: dict[int, Bar] = {}
        self._page_span_ms = exchange.max_bars_per_request * MINUTE_MS
        self._fill_quiet = exchange.rules.omits_quiet_minutes
        self.done = self.cursor >= end_ms

    def next_request(self) -> RestRequest | None:
        """The next page to fetch, or None once the range is done."""
        if self.done:
            return None
        return self.exchange.bars_request(self.symbol, self.cursor, self.end_ms)

    def accept(self, page: list[Bar]) -> None:
        """Take one parsed page; bars outside what was asked for are ignored."""
        self.pages += 1
        fresh = [b for b in page if self.cursor <= b.open_time_ms < self.end_ms]
        if fresh:
            for bar in fresh:
                self._bars[bar.open_time_ms] = bar
            self.cursor = max(b.open_time_ms for b in fresh) + MINUTE_MS
        else:
            self.cursor += self._page_span_ms  # nothing traded in that page's span
        self.done = self.cursor >= self.end_ms

    def read(self, status: int, body: bytes, retry_after: str | None, where: str) -> list[Bar]:
        """The bars of one answer, or the failure it stands for (``read_page``)."""
        return read_page(self.exchange, self.symbol, status, body, retry_after, where)

    def bars(self) -> list[Bar]:
        """Every bar received so far, oldest first, one per open time; on a venue that omits
        quiet minutes, each missing minute after the first bar is a flat bar at the close
        before it."""
        bars = [self._bars[t] for t in sorted(self._bars)]
        if not self._fill_quiet or not bars:
            return bars
        filled: list[Bar] = []
        last = bars[0]
        for bar in [*bars[1:], None]:
            filled.append(last)
            upto = self.end_ms if bar is None else bar.open_time_ms
            for minute in range(last.open_time_ms + MINUTE_MS, upto, MINUTE_MS):
                filled.append(flat_bar(last, minute))
            if bar is not None:
                last = bar
        return filled


TradePage = tuple[list[Trade], int]  # a page's trades and its ``last`` cursor (ns)


class TradePager:
    """The 1-minute bars opening in ``[start_ms, end_ms)`` for one symbol, from its trades.

    Pages follow the venue's ``last`` cursor. The trades go through a ``BarAggregator``
    closed by their own timestamps (the watermark) without grace: a Trades page is in execution
    order, so a trade at or past a minute's end means that minute has all its trades; minutes
    without trades are flat bars at the close before them, as live. Paging ends once a trade
    reaches the end of the range's last minute, or when a page brings no trade not seen before
    (the venue has none newer): the minutes up to ``now_ms`` (the clock when the pager was
    made, before any request) then close as quiet ones: every minute that had ended by then,
    as OHLC's final rows; the running one is left to the live feed. Minutes before the range's
    first trade get no bar, as live: there is no close to make them flat at.
    """

    def __init__(
        self, exchange: TradeHistory, symbol: str, start_ms: int, end_ms: int, now_ms: int
    ) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.start_ms = floor_minute(start_ms)
        self.end_ms = end_ms
        self.pages = 0
        # the end of the range's last minute: a trade at or after it closes every minute
        self._close_at = -(-end_ms // MINUTE_MS) * MINUTE_MS
        self._now_ms = now_ms
        # one ms early, for the same reason as TRADE_PAGE_OVERLAP_NS; earlier trades are dropped
        self.since_ns = self.start_ms * 1_000_000 - TRADE_PAGE_OVERLAP_NS
        self._aggregator = BarAggregator(exchange.name, grace_ms=0)
        self._bars: list[Bar] = []
        self.done = self.start_ms >= end_ms

    def next_request(self) -> RestRequest | None:
        """The next page to fetch, or None once the range is done."""
        if self.done:
            return None
        return self.exchange.trades_request(self.symbol, max(self.since_ns, 0))

    def read(self, status: int, body: bytes, retry_after: str | None, where: str) -> TradePage:
        """The trades and cursor of one answer, or the failure it stands for; a 200 whose body
        is not a Trades page is ``Permanent``."""
        if status != 200:
            raise http_failure(
                status, f"{where} answered HTTP {status}: {body[:200]!r}", retry_after
            )
        try:
            return self.exchange.parse_trades(self.symbol, body)
        except ValueError as exc:
            raise Permanent(f"{where}: trades response unusable: {exc}") from None

    def accept(self, page: TradePage) -> None:
        """Take one parsed page: its trades into the bars, its ``last`` as the next cursor."""
        trades, last_ns = page
        self.pages += 1
        aggregator = self._aggregator
        before = aggregator.accepted
        # in execution order, as the venue sends them: no trade may come after its minute closed
        for trade in sorted(trades, key=lambda t: (t.ts_ms, t.trade_id)):
            self._keep(aggregator.add(trade))
        watermark = aggregator.watermark_ms
        if watermark is not None and watermark >= self._close_at:
            self.done = True
        elif aggregator.accepted == before:
            # nothing new: no trade after the last one until the request; quiet minutes close
            self._keep(aggregator.on_clock(min(self._close_at, self._now_ms)))
            self.done = True
        else:
            self.since_ns = last_ns - TRADE_PAGE_OVERLAP_NS

    def _keep(self, bars: list[Bar]) -> None:
        self._bars.extend(b for b in bars if self.start_ms <= b.open_time_ms < self.end_ms)

    def bars(self) -> list[Bar]:
        """Every closed bar of the range so far, oldest first, one per minute from the range's
        first trade on, with the trade count."""
        return list(self._bars)


def choose_pager(
    exchange: Exchange, symbol: str, start_ms: int, end_ms: int, now_ms: int
) -> Pager[Any]:
    """``TradePager`` when ``start_ms`` lies beyond the venue's bar depth from ``now_ms`` (less
    ``DEPTH_MARGIN_MINUTES``) and the venue serves its trades; else ``RestPager``."""
    depth = exchange.rules.bars_depth_minutes
    if depth is not None and hasattr(exchange, "trades_request"):
        reach_ms = floor_minute(now_ms) - (depth - DEPTH_MARGIN_MINUTES) * MINUTE_MS
        if floor_minute(start_ms) < reach_ms:
            return TradePager(cast(TradeHistory, exchange), symbol, start_ms, end_ms, now_ms)
    return RestPager(exchange, symbol, start_ms, end_ms)


def flat_bar(before: Bar, open_time_ms: int) -> Bar:
    """A minute without trades: open, high, low and close at ``before``'s close, no volume."""
    price = before.close
    return Bar(before.exchange, before.symbol, open_time_ms, price, price, price, price, 0.0, 0)


def read_page(
    exchange: Exchange, symbol: str, status: int, body: bytes, retry_after: str | None, where: str
) -> list[Bar]:
    """The bars of one answer, or the failure it stands for (``streamer.core.retry``): a 200
    whose body is not bars is ``Permanent`` too (a changed API, a proxy's page)."""
    if status != 200:
        raise http_failure(status, f"{where} answered HTTP {status}: {body[:200]!r}", retry_after)
    try:
        return exchange.parse_bars(symbol, body)
    except ValueError as exc:
        raise Permanent(f"{where}: bars response unusable: {exc}") from None


def quiet_lead_in(
    exchange: Exchange, bars: list[Bar], start_ms: int, end_ms: int, before: Bar | None
) -> list[Bar]:
    """``bars`` of ``[start_ms, end_ms)`` with, on a venue that leaves quiet minutes out
    (``omits_quiet_minutes``), the minutes before the first of them (all of them, when REST
    had none) as flat bars at ``before``'s close: the pager can only carry on a close it has
    seen, and these minutes would otherwise stay incomplete."""
    if not exchange.rules.omits_quiet_minutes or before is None:
        return bars
    first = bars[0].open_time_ms if bars else end_ms
    minutes = range(floor_minute(start_ms), first, MINUTE_MS)
    return [flat_bar(before, minute) for minute in minutes] + bars
