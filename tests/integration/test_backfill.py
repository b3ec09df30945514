"""REST backfill against the replay exchange's ``/api/v3/klines`` over real loopback HTTP.

Expected bars are the recorded klines themselves (the bundled Binance BTCUSDT 1-minute CSV),
read from the source, not through the code under test.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import pytest
from aiohttp import web
from support.servers import free_port
from support.streamer import comparable, kline_source, kline_values

from streamer.core.exchanges.binance import BINANCE
from streamer.core.types import MINUTE_MS
from streamer.io.backfill import BackfillError, RestBackfill
from streamer.io.metrics import Metrics
from streamer.replay.server import Faults, ReplayServer

pytestmark = pytest.mark.integration

SYMBOL = "BTCUSDT"


def counted(metrics: Metrics, outcome: str) -> float:
    return float(metrics.backfill_requests.labels("binance", outcome)._value.get())


async def test_pages_over_1500_minutes_return_exactly_the_source_klines(
    session: aiohttp.ClientSession,
) -> None:
    source = kline_source(SYMBOL)
    first = source.first_open_ms
    # streaming would start at +3000 min; REST serves every closed minute before that
    async with ReplayServer([source], start_ms=first + 3000 * MINUTE_MS) as server:
        metrics = Metrics()
        backfill = RestBackfill(BINANCE, server.rest_url, session, metrics)
        start = first + 100 * MINUTE_MS + 30_000  # mid-minute: that minute is included
        end = first + 1600 * MINUTE_MS
        bars = await backfill.fetch(SYMBOL, start, end)

    wanted = kline_values(source, first + 100 * MINUTE_MS, end)
    assert len(wanted) == 1500
    assert comparable(bars) == wanted
    assert all(b.complete and b.symbol == SYMBOL and b.exchange == "binance" for b in bars)
    # two pages (1000 + 500), no more requests, spaced by the exchange's request interval
    assert [e.status for e in server.rest_log] == [200, 200]
    assert server.rest_log[1].arrived - server.rest_log[0].arrived >= BINANCE.min_request_interval_s
    assert backfill.requests == 2
    assert counted(metrics, "ok") == 2
    assert metrics.backfill_bars.labels("binance")._value.get() == 1500


def banned_until(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "tickcast_rest_banned_until_seconds", {"exchange": "binance"}
    )
    assert value is not None
    return value


async def test_a_429_is_retried_politely_and_a_418_ban_stops_every_call_until_it_ends() -> None:
    source = kline_source(SYMBOL)
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
        ReplayServer([source], start_ms=first + 3000 * MINUTE_MS, faults=faults) as server,
    ):
        metrics = Metrics()
        backfill = RestBackfill(BINANCE, server.rest_url, session, metrics)
        # the 429 is retried once after its Retry-After; the 418 ends the fetch at once, saying
        # how long the ban lasts, so that the caller (the repair queue) comes back after it
        with pytest.raises(BackfillError, match="banned") as caught:
            await backfill.fetch(SYMBOL, first, first + 1500 * MINUTE_MS)
        assert not caught.value.permanent and caught.value.retry_after_s == 1.0
        assert banned_until(metrics) > time.time()
        # during the ban, no task of the process calls the host
        with pytest.raises(BackfillError, match="banned"):
            await backfill.fetch(SYMBOL, first, first + 10 * MINUTE_MS)
        assert [e.status for e in server.rest_log] == [429, 418]
        await asyncio.sleep(backfill.limits.banned_for(time.monotonic()))
        bars = await backfill.fetch(SYMBOL, first, first + 1500 * MINUTE_MS)

    assert comparable(bars) == kline_values(source, first, first + 1500 * MINUTE_MS)
    assert [e.status for e in server.rest_log] == [429, 418, 200, 200]
    assert backfill.requests == server.sent.rest_requests == 4
    times = [e.arrived for e in server.rest_log]
    # each call after a throttling answer waited its Retry-After (1 s), a lower bound
    assert times[1] - times[0] >= 1.0
    assert times[2] - times[1] >= 1.0
    # the pages are spaced from the client's sends (the server, on the same loop, may handle a
    # request late, so its arrival times can come closer together than the sends)
    assert len(sent) == 4 and sent[3] - sent[2] >= BINANCE.min_request_interval_s
    assert (counted(metrics, "rate_limited"), counted(metrics, "ok")) == (2, 2)
    assert counted(metrics, "error") == 0


async def test_a_long_ban_is_never_cut_short(session: aiohttp.ClientSession) -> None:
    source = kline_source(SYMBOL, 100)
    three_days = 3 * 86400
    faults = Faults(rest_418=1, retry_after_s=three_days)
    async with ReplayServer(
        [source], start_ms=source.first_open_ms + 50 * MINUTE_MS, faults=faults
    ) as s:
        metrics = Metrics()
        backfill = RestBackfill(BINANCE, s.rest_url, session, metrics, max_attempts=3)
        for _ in range(3):
            with pytest.raises(BackfillError, match="banned") as caught:
                await backfill.fetch(SYMBOL, source.first_open_ms, source.first_open_ms + MINUTE_MS)
            assert caught.value.retry_after_s is not None
            assert caught.value.retry_after_s > three_days - 60
    assert [e.status for e in s.rest_log] == [418]  # asked once; never again during the ban
    ends = banned_until(metrics)
    assert abs(ends - (time.time() + three_days)) < 60


async def test_error_statuses_and_unreachable_hosts_raise_backfill_error(
    session: aiohttp.ClientSession,
) -> None:
    source = kline_source(SYMBOL, 100)
    first = source.first_open_ms
    metrics = Metrics()
    async with ReplayServer([source], start_ms=first + 50 * MINUTE_MS) as server:
        backfill = RestBackfill(BINANCE, server.rest_url, session, metrics)
        # the exchange answers 400 (-1121 Invalid symbol): no retry, the body in the message
        with pytest.raises(BackfillError, match=r"answered HTTP 400: .*Invalid symbol"):
            await backfill.fetch("DOGEUSDT", first, first + 10 * MINUTE_MS)
        assert [e.status for e in server.rest_log] == [400]
    assert counted(metrics, "error") == 1

    # nothing listens there: a connection error, counted, and after one try (as configured) given up
    unreachable = RestBackfill(
        BINANCE, f"http://127.0.0.1:{free_port()}", session, metrics, max_attempts=1
    )
    with pytest.raises(BackfillError, match="gave up after 1 attempts"):
        await unreachable.fetch(SYMBOL, first, first + 10 * MINUTE_MS)
    assert counted(metrics, "error") == 2
    assert counted(metrics, "ok") == 0


async def test_only_closed_minutes_are_served_and_an_empty_range_costs_nothing(
    session: aiohttp.ClientSession,
) -> None:
    source = kline_source(SYMBOL)
    first = source.first_open_ms
    async with ReplayServer([source], start_ms=first + 30 * MINUTE_MS) as server:
        backfill = RestBackfill(BINANCE, server.rest_url, session)
        # asking past the replay clock: only the closed minutes come back, never the future
        bars = await backfill.fetch(SYMBOL, first + 20 * MINUTE_MS, first + 40 * MINUTE_MS)
        assert comparable(bars) == kline_values(
            source, first + 20 * MINUTE_MS, first + 30 * MINUTE_MS
        )
        assert await backfill.fetch(SYMBOL, first, first) == []
    spacing = [b.arrived - a.arrived for a, b in itertools.pairwise(server.rest_log)]
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


async def test_the_weight_the_host_reports_is_shared_by_every_task_and_holds_requests_back(
    session: aiohttp.ClientSession,
) -> None:
    if time.time() % 60 > 50:  # the weight is counted per wall-clock minute: start in one
        await asyncio.sleep(61 - time.time() % 60)
    source = kline_source(SYMBOL, 100)
    first = source.first_open_ms
    async with ReplayServer([source], start_ms=first + 50 * MINUTE_MS) as server:
        metrics = Metrics()
        backfill = RestBackfill(BINANCE, server.rest_url, session, metrics)
        await backfill.fetch(SYMBOL, first, first + 10 * MINUTE_MS)
        assert backfill.limits.used_weight == 2  # what X-MBX-USED-WEIGHT-1M said
        assert (
            metrics.registry.get_sample_value("tickcast_rest_used_weight", {"exchange": "binance"})
            == 2
        )
        assert backfill.limits.weight_wait_s(time.time()) == 0.0
        # others on this IP used the rest of this process's half of the minute's 6,000
        assert server.weight is not None
        server.weight.used = {int(time.time() // 60): 2997}
        await backfill.fetch(SYMBOL, first + 10 * MINUTE_MS, first + 20 * MINUTE_MS)
        assert backfill.limits.used_weight == 2999
        # the next request would pass 3,000: every task of the process waits for the next minute
        wait = backfill.limits.weight_wait_s(time.time())
        assert 0 < wait <= 60
