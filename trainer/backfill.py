"""REST backfill into the history store: paginated, spaced, and polite when throttled.

The same pager (``streamer.core.paging``) and retry policy as the
streamer's backfill, over urllib: one request at a time, at least the exchange's
``min_request_interval_s`` apart, waiting ``Retry-After`` on throttling answers, backing off
on 5xx and connection errors, and giving up after the policy's attempts.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.core.clock import wall_clock_ms
from streamer.core.exchanges import RestRequest, get_exchange
from streamer.core.paging import MAX_RETRY_AFTER_S, Pager, choose_pager, page_retry_policy
from streamer.core.rest_limits import DEFAULT_BAN_S
from streamer.core.retry import Banned, Permanent, Throttled, Transient
from streamer.core.types import MINUTE_MS
from trainer.data import AppendResult, BarTable, HistoryStore

Sleep = Callable[[float], None]


class BackfillError(RuntimeError):
    """The exchange refused or failed for good; the message says how."""


@dataclass(frozen=True, slots=True)
class BackfillResult:
    pages: int
    bars: int
    throttled: int  # throttling answers (429/418/403) honoured
    retries: int  # 5xx / connection errors retried
    append: AppendResult | None


def _get(url: str, timeout_s: float) -> tuple[int, bytes, str | None]:
    """(status, body, Retry-After) of one GET; raises Transient when nothing came back."""
    request = urllib.request.Request(url, headers={"User-Agent": "tickcast-trainer"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), response.read(), None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Retry-After") if exc.headers else None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise Transient(f"{url}: {exc}") from None


class _Client:
    """Sends one exchange's page requests, spaced, retried by the shared policy."""

    def __init__(
        self,
        rest_url: str,
        max_retries: int,
        timeout_s: float,
        sleep: Sleep,
        log: Callable[[str], None],
    ) -> None:
        self.base = rest_url.rstrip("/")
        self.policy = page_retry_policy(max_retries + 1)
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.log = log
        self.last_request = -1e9
        self.throttled = self.retries = 0

    def page(self, pager: Pager[Any], request: RestRequest, interval_s: float) -> None:
        url = f"{self.base}{request.path}?{urllib.parse.urlencode(request.params)}"
        backoff = self.policy.backoff()
        while True:
            wait = interval_s - (time.monotonic() - self.last_request)
            if wait > 0:
                self.sleep(wait)
            self.last_request = time.monotonic()
            try:
                status, body, retry_after = _get(url, self.timeout_s)
                pager.accept(pager.read(status, body, retry_after, url))
                return
            except (Transient, Permanent) as failure:
                ban_s = failure.retry_after_s if isinstance(failure, Banned) else None
                if ban_s is None and isinstance(failure, Banned):
                    ban_s = DEFAULT_BAN_S
                if ban_s is not None and ban_s > MAX_RETRY_AFTER_S:
                    # calling during an IP ban lengthens it: a long one ends this run
                    raise BackfillError(
                        f"{failure}: the exchange banned this IP for {ban_s:.0f} s;"
                        " run the backfill again after that"
                    ) from None
                decision = self.policy.decide(failure, backoff)
                if not decision.retry:
                    raise BackfillError(str(failure)) from None
                if isinstance(failure, Throttled):
                    self.throttled += 1
                    self.log(f"{url} throttled; waiting {decision.delay_s:.0f}s: {failure}")
                else:
                    self.retries += 1
                self.sleep(decision.delay_s)


def fetch_bars(
    rest_url: str,
    exchange: str,
    symbol: str,
    start_ms: int,
    end_ms: int,
    max_retries: int = 5,
    timeout_s: float = 10.0,
    sleep: Sleep = time.sleep,
    log: Callable[[str], None] = print,
    now_ms: int | None = None,
) -> tuple[BarTable, BackfillResult]:
    """All 1-minute bars opening in ``[start_ms, end_ms)``, page by page; from the venue's
    trades where the range starts before its REST bars reach from ``now_ms`` (default: the
    wall clock)."""
    venue = get_exchange(exchange)
    now = wall_clock_ms() if now_ms is None else now_ms
    pager = choose_pager(venue, symbol, start_ms, end_ms, now)
    client = _Client(rest_url, max_retries, timeout_s, sleep, log)
    while (request := pager.next_request()) is not None:
        client.page(pager, request, venue.min_request_interval_s)
    bars = pager.bars()
    table = BarTable(
        np.array([b.open_time_ms for b in bars], dtype=np.int64),
        np.array([(b.open, b.high, b.low, b.close, b.volume) for b in bars], np.float64).reshape(
            -1, 5
        ),
        np.arange(1, len(bars) + 1, dtype=np.int64),
    )
    result = BackfillResult(pager.pages, len(table), client.throttled, client.retries, None)
    return table, result


def backfill(
    store: HistoryStore,
    rest_url: str,
    exchange: str,
    symbol: str,
    start_ms: int,
    end_ms: int,
    sleep: Sleep = time.sleep,
    log: Callable[[str], None] = print,
) -> BackfillResult:
    table, result = fetch_bars(rest_url, exchange, symbol, start_ms, end_ms, sleep=sleep, log=log)
    appended = store.append(exchange, symbol, MINUTE_MS, table, f"rest:{rest_url}")
    return BackfillResult(result.pages, result.bars, result.throttled, result.retries, appended)
