"""REST backfill against the replay exchange's ``/api/v3/klines`` over real loopback HTTP.

Expected bars are the recorded klines themselves (the bundled Binance BTCUSDT 1-minute CSV),
read from the source, not through the code under test.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import AsyncIterator
from typing import Self

import aiohttp
import pytest
from aiohttp import web
from conftest import free_port
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from streamer.core.exchanges.binance import BINANCE
from streamer.core.types import MINUTE_MS, Bar
from streamer.io.backfill import BackfillError, RestBackfill
from streamer.io.metrics import Metrics
from streamer.replay.data import Kline, Source, bundled_kline_paths, load_source
from streamer.replay.server import Faults, ReplayServer

pytestmark = pytest.mark.integration

SYMBOL = "BTCUSDT"


class RestLoggingServer(ReplayServer):
    """The replay exchange, noting when each REST request arrived and how it was answered."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rest_log: list[tuple[float, int]] = []  # (time.monotonic(), status)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    def _rest(self, connection: ServerConnection, path: str, query: str) -> Response:
        arrived = time.monotonic()
        response = super()._rest(connection, path, query)
        self.rest_log.append((arrived, response.status_code))
        return response


def btc_klines() -> Source:
    return load_source(next(p for p in bundled_kline_paths() if p.name.startswith(SYMBOL)))


def as_tuples(klines: list[Kline]) -> list[tuple[object, ...]]:
    return [
        (
            k.open_time_ms,
            float(k.open),
            float(k.high),
            float(k.low),
            float(k.close),
            float(k.volume),
            k.trades,
        )
        for k in klines
    ]


def bar_tuples(bars: list[Bar]) -> list[tuple[object, ...]]:
    return [(b.open_time_ms, b.open, b.high, b.low, b.close, b.volume, b.trades) for b in bars]


def counted(metrics: Metrics, outcome: str) -> float:
    return float(metrics.backfill_requests.labels("binance", outcome)._value.get())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def test_pages_over_1500_minutes_return_exactly_the_source_klines(
    session: aiohttp.ClientSession,
) -> None:
    source = btc_klines()
    first = source.first_open_ms
    # streaming would start at +3000 min; REST serves every closed minute before that
    async with RestLoggingServer([source], start_ms=first + 3000 * MINUTE_MS) as server:
        metrics = Metrics()
        backfill = RestBackfill(BINANCE, server.rest_url, session, metrics)
        start = first + 100 * MINUTE_MS + 30_000  # mid-minute: that minute is included
        end = first + 1600 * MINUTE_MS
        bars = await backfill.fetch(SYMBOL, start, end)

    wanted = [k for k in source.klines if first + 100 * MINUTE_MS <= k.open_time_ms < end]
    assert len(wanted) == 1500
    assert bar_tuples(bars) == as_tuples(wanted)
    assert all(b.complete and b.symbol == SYMBOL and b.exchange == "binance" for b in bars)
    # two pages (1000 + 500), no more requests, spaced by the exchange's request interval
    assert [status for _, status in server.rest_log] == [200, 200]
    assert server.rest_log[1][0] - server.rest_log[0][0] >= BINANCE.min_request_interval_s
    assert backfill.requests == 2
    assert counted(metrics, "ok") == 2
    assert metrics.backfill_bars.labels("binance")._value.get() == 1500


async def test_429_then_418_are_honoured_with_one_polite_retry_each() -> None:
    source = btc_klines()
    first = source.first_open_ms
    faults = Faults(rest_429=1, rest_418=1, retry_after_s=1)
    sent: list[float] = []  # when the client sent each request (aiohttp's own trace hook)

    async def on_request_start(*_: object) -> None:
        sent.append(time.monotonic())

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with (
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10), trace_configs=[trace]
        ) as session,
        RestLoggingServer([source], start_ms=first + 3000 * MINUTE_MS, faults=faults) as server,
    ):
        metrics = Metrics()
        backfill = RestBackfill(BINANCE, server.rest_url, session, metrics)
        bars = await backfill.fetch(SYMBOL, first, first + 1500 * MINUTE_MS)

    assert bar_tuples(bars) == as_tuples(list(source.klines[:1500]))
    # no storm: exactly the two throttled requests plus the two pages
    assert [status for _, status in server.rest_log] == [429, 418, 200, 200]
    assert backfill.requests == server.sent.rest_requests == 4
    times = [t for t, _ in server.rest_log]
    # each retry waited Retry-After (1 s) from the throttled request (a lower bound)
    assert times[1] - times[0] >= 1.0
    assert times[2] - times[1] >= 1.0
    # the pages are spaced from the client's sends (the server, on the same loop, may handle a
    # request late, so its arrival times can come closer together than the sends)
    assert len(sent) == 4 and sent[3] - sent[2] >= BINANCE.min_request_interval_s
    assert (counted(metrics, "rate_limited"), counted(metrics, "ok")) == (2, 2)
    assert counted(metrics, "error") == 0


async def test_a_ban_that_never_lifts_gives_up_after_max_attempts(
    session: aiohttp.ClientSession,
) -> None:
    source = dataclasses.replace(btc_klines(), klines=btc_klines().klines[:100])
    faults = Faults(rest_418=10, retry_after_s=0)
    async with RestLoggingServer(
        [source], start_ms=source.first_open_ms + 50 * MINUTE_MS, faults=faults
    ) as s:
        metrics = Metrics()
        backfill = RestBackfill(BINANCE, s.rest_url, session, metrics, max_attempts=3)
        with pytest.raises(BackfillError, match="gave up after 3 tries"):
            await backfill.fetch(SYMBOL, source.first_open_ms, source.first_open_ms + MINUTE_MS)
    assert [status for _, status in s.rest_log] == [418, 418, 418]
    assert counted(metrics, "rate_limited") == 3


async def test_error_statuses_and_unreachable_hosts_raise_backfill_error(
    session: aiohttp.ClientSession,
) -> None:
    source = dataclasses.replace(btc_klines(), klines=btc_klines().klines[:100])
    first = source.first_open_ms
    metrics = Metrics()
    async with RestLoggingServer([source], start_ms=first + 50 * MINUTE_MS) as server:
        backfill = RestBackfill(BINANCE, server.rest_url, session, metrics)
        # the exchange answers 400 (-1121 Invalid symbol): no retry, the body in the message
        with pytest.raises(BackfillError, match=r"answered 400: .*Invalid symbol"):
            await backfill.fetch("DOGEUSDT", first, first + 10 * MINUTE_MS)
        assert [status for _, status in server.rest_log] == [400]
    assert counted(metrics, "error") == 1

    # nothing listens there: a connection error, counted, and after one try (as configured) given up
    unreachable = RestBackfill(
        BINANCE, f"http://127.0.0.1:{free_port()}", session, metrics, max_attempts=1
    )
    with pytest.raises(BackfillError, match="gave up after 1 tries"):
        await unreachable.fetch(SYMBOL, first, first + 10 * MINUTE_MS)
    assert counted(metrics, "error") == 2
    assert counted(metrics, "ok") == 0


async def test_only_closed_minutes_are_served_and_an_empty_range_costs_nothing(
    session: aiohttp.ClientSession,
) -> None:
    source = btc_klines()
    first = source.first_open_ms
    async with RestLoggingServer([source], start_ms=first + 30 * MINUTE_MS) as server:
        backfill = RestBackfill(BINANCE, server.rest_url, session)
        # asking past the replay clock: only the closed minutes come back, never the future
        bars = await backfill.fetch(SYMBOL, first + 20 * MINUTE_MS, first + 40 * MINUTE_MS)
        assert bar_tuples(bars) == as_tuples(list(source.klines[20:30]))
        assert await backfill.fetch(SYMBOL, first, first) == []
    spacing = [b - a for (a, _), (b, _) in itertools.pairwise(server.rest_log)]
    assert all(s >= BINANCE.min_request_interval_s for s in spacing)
    assert len(server.rest_log) == backfill.requests


async def test_a_200_whose_body_is_unusable_is_an_error_not_a_success(
    session: aiohttp.ClientSession,
) -> None:
    # a proxy or a changed API: HTTP 200, yet rows that are not klines
    async def klines(_request: web.Request) -> web.Response:
        return web.json_response([[1682629200000, "29400.1"]])

    app = web.Application()
    app.router.add_get("/api/v3/klines", klines)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        metrics = Metrics()
        backfill = RestBackfill(BINANCE, f"http://127.0.0.1:{port}", session, metrics)
        with pytest.raises(BackfillError, match="unusable"):
            await backfill.fetch(SYMBOL, 1682629200000, 1682629200000 + MINUTE_MS)
    finally:
        await runner.cleanup()
    assert (counted(metrics, "error"), counted(metrics, "ok")) == (1, 0)
