"""REST backfill: fetch closed 1-minute bars for a gap, within the exchange's limits.

The exchange module builds each page request and parses each page (pure); this shell only
paginates, spaces requests, and honours 429/418 ``Retry-After`` so that a rate-limited exchange
sees one polite retry rather than a request storm.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from streamer.core.exchanges import Exchange
from streamer.core.types import MINUTE_MS, Bar, floor_minute
from streamer.io.metrics import Metrics

log = logging.getLogger(__name__)

RATE_LIMIT_STATUSES = (418, 429)
DEFAULT_RETRY_AFTER_S = 5.0
MAX_RETRY_AFTER_S = 300.0


class BackfillError(RuntimeError):
    """A gap could not be filled; the caller keeps the incomplete bars and tries later."""


def retry_after_s(value: str | None) -> float:
    """Seconds to wait from a ``Retry-After`` header (seconds form), capped and defaulted."""
    try:
        seconds = float(value) if value is not None else DEFAULT_RETRY_AFTER_S
    except ValueError:
        seconds = DEFAULT_RETRY_AFTER_S
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class RestBackfill:
    """Backfill client for one exchange; one instance is shared by all its gaps."""

    def __init__(
        self,
        exchange: Exchange,
        rest_url: str,
        session: aiohttp.ClientSession,
        metrics: Metrics | None = None,
        max_attempts: int = 5,
    ) -> None:
        self.exchange = exchange
        self.rest_url = rest_url.rstrip("/")
        self._session = session
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._lock = asyncio.Lock()  # one request at a time per exchange keeps spacing exact
        self._next_request_at = 0.0  # monotonic
        self.requests = 0

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.backfill_requests.labels(self.exchange.name, outcome).inc()

    async def fetch(self, symbol: str, start_ms: int, end_ms: int) -> list[Bar]:
        """Closed bars opening in ``[start_ms, end_ms)``, oldest first, deduplicated."""
        start_ms = floor_minute(start_ms)
        bars: dict[int, Bar] = {}
        cursor = start_ms
        while cursor < end_ms:
            page = await self._page(symbol, cursor, end_ms)
            page = [b for b in page if cursor <= b.open_time_ms < end_ms]
            if not page:
                break
            for bar in page:
                bars[bar.open_time_ms] = bar
            cursor = max(b.open_time_ms for b in page) + MINUTE_MS
        result = [bars[t] for t in sorted(bars)]
        if self._metrics is not None and result:
            self._metrics.backfill_bars.labels(self.exchange.name).inc(len(result))
        return result

    async def _page(self, symbol: str, start_ms: int, end_ms: int) -> list[Bar]:
        request = self.exchange.bars_request(symbol, start_ms, end_ms)
        url = f"{self.rest_url}{request.path}"
        for attempt in range(1, self._max_attempts + 1):
            async with self._lock:
                delay = self._next_request_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.requests += 1
                try:
                    async with self._session.get(url, params=request.params) as response:
                        body = await response.read()
                        status = response.status
                        retry_after = response.headers.get("Retry-After")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self._count("error")
                    log.warning(
                        "backfill request failed",
                        extra={"exchange": self.exchange.name, "error": type(exc).__name__},
                    )
                    self._next_request_at = time.monotonic() + min(2.0**attempt, 30.0)
                    continue
                # spaced from the end of this request: no delay in sending it (a busy loop, a GC
                # pause) can bring two requests closer than the exchange's interval
                self._next_request_at = time.monotonic() + self.exchange.min_request_interval_s
                if status in RATE_LIMIT_STATUSES:
                    wait = retry_after_s(retry_after)
                    self._count("rate_limited")
                    log.warning(
                        "backfill rate limited",
                        extra={"exchange": self.exchange.name, "status": status, "wait_s": wait},
                    )
                    # 418 means an IP ban for ignoring 429s: never come back before it ends
                    self._next_request_at = time.monotonic() + wait
                    continue
                if status != 200:
                    self._count("error")
                    raise BackfillError(
                        f"{self.exchange.name} {request.path} answered {status}: {body[:200]!r}"
                    )
            try:
                bars = self.exchange.parse_bars(symbol, body)
            except ValueError as exc:
                self._count("error")  # a 200 we cannot use is no success
                raise BackfillError(f"{self.exchange.name} bars response unusable: {exc}") from None
            self._count("ok")
            return bars
        raise BackfillError(
            f"{self.exchange.name} backfill gave up after {self._max_attempts} tries"
        )
