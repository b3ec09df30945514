"""REST backfill into the history store: paginated, spaced, and polite when throttled.

The exchange module (``streamer.core.exchanges``) knows the wire format: ``bars_request`` builds
one page's request and ``parse_bars`` reads it. This shell only fetches: one request at a time,
at least ``min_request_interval_s`` apart, sleeping ``Retry-After`` on HTTP 429 (rate limit) and
418 (IP ban), backing off on 5xx and connection errors, and giving up after ``max_retries``.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streamer.core.exchanges import FrameError, get_exchange
from streamer.core.types import MINUTE_MS
from trainer.data import AppendResult, BarTable, HistoryStore

MAX_RETRY_AFTER_S = 300.0
Sleep = Callable[[float], None]


class BackfillError(RuntimeError):
    """The exchange refused or failed for good; the message says how."""


@dataclass(frozen=True, slots=True)
class BackfillResult:
    pages: int
    bars: int
    throttled: int  # 429/418 answers honoured
    retries: int  # 5xx / connection errors retried
    append: AppendResult | None


def _fetch(url: str, timeout_s: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "tickcast-trainer"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body: bytes = response.read()
        return body


def _retry_after(error: urllib.error.HTTPError, default_s: float) -> float:
    raw = error.headers.get("Retry-After") if error.headers else None
    try:
        return min(max(float(raw), 0.0), MAX_RETRY_AFTER_S) if raw is not None else default_s
    except ValueError:
        return default_s


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
) -> tuple[BarTable, BackfillResult]:
    """All 1-minute bars opening in ``[start_ms, end_ms)``, page by page."""
    venue = get_exchange(exchange)
    base = rest_url.rstrip("/")
    times: list[int] = []
    rows: list[tuple[float, float, float, float, float]] = []
    pages = throttled = retries = 0
    cursor = start_ms - start_ms % MINUTE_MS
    last_request = -1e9
    while cursor < end_ms:
        request = venue.bars_request(symbol, cursor, end_ms)
        url = f"{base}{request.path}?{urllib.parse.urlencode(request.params)}"
        attempt = 0
        while True:
            wait = venue.min_request_interval_s - (time.monotonic() - last_request)
            if wait > 0:
                sleep(wait)
            last_request = time.monotonic()
            try:
                raw = _fetch(url, timeout_s)
                break
            except urllib.error.HTTPError as exc:
                if exc.code in (418, 429):
                    throttled += 1
                    pause = _retry_after(exc, 60.0)
                    log(f"{exchange} answered {exc.code}; waiting {pause:.0f}s (Retry-After)")
                    if throttled > max_retries * 4:
                        raise BackfillError(
                            f"{url}: still throttled after {throttled} waits"
                        ) from None
                    sleep(pause)
                    continue
                if exc.code >= 500 and attempt < max_retries:
                    attempt += 1
                    retries += 1
                    sleep(min(30.0, 0.5 * 2**attempt))
                    continue
                body = exc.read()[:200].decode(errors="replace")
                raise BackfillError(f"{url}: HTTP {exc.code}: {body}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt >= max_retries:
                    raise BackfillError(f"{url}: {exc}") from None
                attempt += 1
                retries += 1
                sleep(min(30.0, 0.5 * 2**attempt))
        pages += 1
        try:
            bars = venue.parse_bars(symbol, raw)
        except FrameError as exc:
            raise BackfillError(f"{url}: unusable response: {exc}") from None
        fresh = [b for b in bars if cursor <= b.open_time_ms < end_ms]
        if not fresh:
            break
        for bar in fresh:
            times.append(bar.open_time_ms)
            rows.append((bar.open, bar.high, bar.low, bar.close, bar.volume))
        cursor = fresh[-1].open_time_ms + MINUTE_MS
    order = np.argsort(np.array(times, dtype=np.int64), kind="stable")
    t = np.array(times, dtype=np.int64)[order]
    keep = np.ones(t.shape[0], dtype=bool)
    keep[1:] = np.diff(t) != 0
    table = BarTable(
        t[keep],
        np.array(rows, dtype=np.float64).reshape(-1, 5)[order][keep],
        np.arange(1, t.shape[0] + 1, dtype=np.int64)[keep],
    )
    return table, BackfillResult(pages, len(table), throttled, retries, None)


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
