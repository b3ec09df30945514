"""REST backfill: fetch closed 1-minute bars for a gap, within the exchange's limits.

The pager (``streamer.core.paging``) decides which page comes next and reads each answer; the
retry policy (``streamer.core.retry``) decides what a failure means. This shell only sends the
requests: one at a time per exchange, spaced by the exchange's request interval from the end
of the previous one, and no sooner than a throttling answer's ``Retry-After`` says, so that a
rate-limited exchange sees one polite retry rather than a request storm. ``HostLimits``
(``streamer.core.rest_limits``) keeps every task of the process off a host that banned it
(418) until the ban ends, and within its share of the host's request weight per minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from streamer.core.clock import wall_clock_ms
from streamer.core.exchanges import Exchange, RestRequest
from streamer.core.paging import Pager, choose_pager, page_retry_policy
from streamer.core.rest_limits import HostLimits
from streamer.core.retry import Banned, Permanent, Throttled, Transient
from streamer.core.types import Bar
from streamer.io.metrics import Metrics

log = logging.getLogger(__name__)


class BackfillError(RuntimeError):
    """A range could not be fetched; ``permanent``: asking again will not help (a 400 for a
    delisted symbol), else a later try may (the exchange kept failing or throttling), not
    before ``retry_after_s`` when set (the host's ban lasts that long)."""

    def __init__(
        self, message: str, *, permanent: bool, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after_s = retry_after_s


class RestBackfill:
    """Backfill client for one exchange; one instance is shared by all its gaps."""

    def __init__(
        self,
        exchange: Exchange,
        rest_url: str,
        session: aiohttp.ClientSession,
        metrics: Metrics | None = None,
        max_attempts: int = 5,
        clock: Callable[[], int] = wall_clock_ms,
        wall_s: Callable[[], float] = time.time,
    ) -> None:
        """``clock``: epoch ms, the daemon's now (the replay's clock in tests), which decides
        whether a range is older than the venue's REST bars reach (``choose_pager``).
        ``wall_s``: epoch seconds, which decide the venue's weight minute."""
        self.exchange = exchange
        self._clock = clock
        self._wall_s = wall_s
        self.rest_url = rest_url.rstrip("/")
        self._session = session
        self._metrics = metrics
        self._policy = page_retry_policy(max_attempts)
        self._lock = asyncio.Lock()  # one request at a time per exchange keeps spacing exact
        self._next_request_at = 0.0  # monotonic
        self.limits = HostLimits(exchange.rules.rest_weight)
        self.requests = 0

    def _gauge_weight(self) -> None:
        if self._metrics is not None:
            self._metrics.rest_used_weight.labels(self.exchange.name).set(self.limits.used_weight)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.backfill_requests.labels(self.exchange.name, outcome).inc()

    async def fetch(self, symbol: str, start_ms: int, end_ms: int) -> list[Bar]:
        """Closed bars opening in ``[start_ms, end_ms)``, oldest first, deduplicated; raises
        ``BackfillError``."""
        pager = choose_pager(self.exchange, symbol, start_ms, end_ms, self._clock())
        while (request := pager.next_request()) is not None:
            pager.accept(await self._page(pager, request))
        bars = pager.bars()
        if self._metrics is not None and bars:
            self._metrics.backfill_bars.labels(self.exchange.name).inc(len(bars))
        return bars

    async def _page(self, pager: Pager[Any], request: RestRequest) -> Any:
        backoff = self._policy.backoff()
        while True:
            try:
                return await self._request(pager, request)
            except Banned as banned:
                # retrying within this fetch would hold the task for the whole ban: the caller
                # (the repair queue) comes back when it ends
                raise BackfillError(
                    f"{self.exchange.name} REST host banned us: {banned}",
                    permanent=False,
                    retry_after_s=banned.retry_after_s,
                ) from None
            except (Transient, Permanent) as failure:
                decision = self._policy.decide(failure, backoff)
                if not decision.retry:
                    raise BackfillError(
                        f"{self.exchange.name} backfill {decision.reason}: {failure}"
                        if isinstance(failure, Transient)
                        else str(failure),
                        permanent=isinstance(failure, Permanent),
                    ) from None
                # a ban (418) is never cut short: no request before it ends
                self._next_request_at = max(
                    self._next_request_at, time.monotonic() + decision.delay_s
                )

    async def _request(self, pager: Pager[Any], request: RestRequest) -> Any:
        """One request, spaced from the previous one: the pager's page; raises Transient or
        Permanent."""
        name = self.exchange.name
        where = f"{name} {request.path}"
        async with self._lock:
            ban_left = self.limits.banned_for(time.monotonic())
            if ban_left > 0:
                raise Banned(f"{where}: no request until the ban ends", retry_after_s=ban_left)
            delay = max(
                self._next_request_at - time.monotonic(), self.limits.weight_wait_s(self._wall_s())
            )
            if delay > 0:
                await asyncio.sleep(delay)
            self.requests += 1
            try:
                async with self._session.get(
                    f"{self.rest_url}{request.path}", params=request.params
                ) as response:
                    body = await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    weight = self.limits.weight
                    if weight is not None:
                        self.limits.observe(
                            response.headers.get(weight.used_header), self._wall_s()
                        )
                        self._gauge_weight()
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._count("error")
                log.warning("backfill request failed", extra={"exchange": name, "error": repr(exc)})
                raise Transient(f"{where}: {type(exc).__name__}") from None
            finally:
                # spaced from the end of this request: no delay in sending it (a busy loop, a GC
                # pause) can bring two requests closer than the exchange's interval
                self._next_request_at = time.monotonic() + self.exchange.min_request_interval_s
        try:
            page = pager.read(status, body, retry_after, where)
        except Banned as exc:
            self._count("rate_limited")
            length = self.limits.ban(exc.retry_after_s, time.monotonic())
            if self._metrics is not None:
                ends = time.time() + self.limits.banned_for(time.monotonic())
                self._metrics.rest_banned_until.labels(name).set(ends)
            log.error(
                "REST host banned this IP: no backfill until the ban ends",
                extra={"exchange": name, "status": status, "ban_s": length},
            )
            raise Banned(str(exc), retry_after_s=length) from None
        except Throttled as exc:
            self._count("rate_limited")
            log.warning(
                "backfill rate limited",
                extra={"exchange": name, "status": status, "wait_s": exc.retry_after_s},
            )
            raise
        except (Transient, Permanent):
            self._count("error")
            raise
        self._count("ok")
        return page
