"""REST backfill against the replay exchange's ``/api/v3/klines`` over real loopback HTTP.

Expected bars are the recorded klines themselves (the bundled Binance BTCUSDT 1-minute CSV),
read from the source, not through the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.servers import free_port
from support.streamer import comparable, kline_source, kline_values

from streamer.core.exchanges.binance import BINANCE
from streamer.core.types import MINUTE_MS
from streamer.io.backfill import BackfillError, RestBackfill
from streamer.io.metrics import Metrics
from streamer.replay.data import Source
from streamer.replay.server import Faults, ReplayServer

pytestmark = pytest.mark.integration

SYMBOL = "BTCUSDT"


def counted(metrics: Metrics, outcome: str) -> float:
    return float(metrics.backfill_requests.labels("binance", outcome)._value.get())


@dataclasses.dataclass(frozen=True)
class RestReplay:
    """The bundled klines of ``SYMBOL`` on a replay exchange, and a backfill client of its REST
    API counting into ``metrics``."""

    source: Source
    server: ReplayServer
    backfill: RestBackfill
    metrics: Metrics

    def at(self, minute: int) -> int:
        """The open time of ``minute`` of the data."""
        return self.source.first_open_ms + minute * MINUTE_MS


@contextlib.asynccontextmanager
async def rest_replay(
    session: aiohttp.ClientSession,
    live_from: int,
    minutes: int | None = None,
    faults: Faults | None = None,
    **options: Any,
) -> AsyncIterator[RestReplay]:
    """The first ``minutes`` (or all) of the klines, the replay clock at minute ``live_from``:
    REST serves every minute closed before it (``options``: of ``RestBackfill``)."""
    source = kline_source(SYMBOL, minutes)
    metrics = Metrics()
    start = source.first_open_ms + live_from * MINUTE_MS
    async with ReplayServer([source], start_ms=start, faults=faults) as server:
        backfill = RestBackfill(BINANCE, server.rest_url, session, metrics, **options)
        yield RestReplay(source, server, backfill, metrics)


async def test_pages_over_1500_minutes_return_exactly_the_source_klines(
    session: aiohttp.ClientSession,
) -> None:
    # streaming would start at +3000 min; REST serves every closed minute before that
    async with rest_replay(session, live_from=3000) as rest:
        start = rest.at(100) + 30_000  # mid-minute: that minute is included
        end = rest.at(1600)
        bars = await rest.backfill.fetch(SYMBOL, start, end)

    wanted = kline_values(rest.source, rest.at(100), end)
    assert len(wanted) == 1500
    assert comparable(bars) == wanted
    assert all(b.complete and b.symbol == SYMBOL and b.exchange == "binance" for b in bars)
    # two pages (1000 + 500), no more requests, spaced by the exchange's request interval
    log = rest.server.rest_log
    assert [e.status for e in log] == [200, 200]
    assert log[1].arrived - log[0].arrived >= BINANCE.min_request_interval_s
    assert rest.backfill.requests == 2
    assert counted(rest.metrics, "ok") == 2
    assert rest.metrics.backfill_bars.labels("binance")._value.get() == 1500


def banned_until(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "tickcast_rest_banned_until_seconds", {"exchange": "binance"}
    )
    assert value is not None
    return value


async def test_a_429_is_retried_politely_and_a_418_ban_stops_every_call_until_it_ends() -> None:
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
        rest_replay(session, live_from=3000, faults=faults) as rest,
    ):
        backfill, first = rest.backfill, rest.at(0)
        # the 429 is retried once after its Retry-After; the 418 ends the fetch at once, saying
        # how long the ban lasts, so that the caller (the repair queue) comes back after it
        with pytest.raises(BackfillError, match="banned") as caught:
            await backfill.fetch(SYMBOL, first, rest.at(1500))
        assert not caught.value.permanent and caught.value.retry_after_s == 1.0
        assert banned_until(rest.metrics) > time.time()
        # during the ban, no task of the process calls the host
        with pytest.raises(BackfillError, match="banned"):
            await backfill.fetch(SYMBOL, first, rest.at(10))
        assert [e.status for e in rest.server.rest_log] == [429, 418]
        await asyncio.sleep(backfill.limits.banned_for(time.monotonic()))
        bars = await backfill.fetch(SYMBOL, first, rest.at(1500))

    assert comparable(bars) == kline_values(rest.source, first, rest.at(1500))
    assert [e.status for e in rest.server.rest_log] == [429, 418, 200, 200]
    assert backfill.requests == rest.server.sent.rest_requests == 4
    times = [e.arrived for e in rest.server.rest_log]
    # each call after a throttling answer waited its Retry-After (1 s), a lower bound
    assert times[1] - times[0] >= 1.0
    assert times[2] - times[1] >= 1.0
    # the pages are spaced from the client's sends (the server, on the same loop, may handle a
    # request late, so its arrival times can come closer together than the sends)
    assert len(sent) == 4 and sent[3] - sent[2] >= BINANCE.min_request_interval_s
    assert (counted(rest.metrics, "rate_limited"), counted(rest.metrics, "ok")) == (2, 2)
    assert counted(rest.metrics, "error") == 0


async def test_a_long_ban_is_never_cut_short(session: aiohttp.ClientSession) -> None:
    three_days = 3 * 86400
    faults = Faults(rest_418=1, retry_after_s=three_days)
    async with rest_replay(
        session, live_from=50, minutes=100, faults=faults, max_attempts=3
    ) as rest:
        for _ in range(3):
            with pytest.raises(BackfillError, match="banned") as caught:
                await rest.backfill.fetch(SYMBOL, rest.at(0), rest.at(1))
            assert caught.value.retry_after_s is not None
            assert caught.value.retry_after_s > three_days - 60
    # asked once; never again during the ban
    assert [e.status for e in rest.server.rest_log] == [418]
    ends = banned_until(rest.metrics)
    assert abs(ends - (time.time() + three_days)) < 60


async def test_error_statuses_and_unreachable_hosts_raise_backfill_error(
    session: aiohttp.ClientSession,
) -> None:
    async with rest_replay(session, live_from=50, minutes=100) as rest:
        first, metrics = rest.at(0), rest.metrics
        # the exchange answers 400 (-1121 Invalid symbol): no retry, the body in the message
        with pytest.raises(BackfillError, match=r"answered HTTP 400: .*Invalid symbol"):
            await rest.backfill.fetch("DOGEUSDT", first, rest.at(10))
        assert [e.status for e in rest.server.rest_log] == [400]
    assert counted(metrics, "error") == 1

    # nothing listens there: a connection error, counted, and after one try (as configured) given up
    unreachable = RestBackfill(
        BINANCE, f"http://127.0.0.1:{free_port()}", session, metrics, max_attempts=1
    )
    with pytest.raises(BackfillError, match="gave up after 1 attempts"):
        await unreachable.fetch(SYMBOL, first, rest.at(10))
    assert counted(metrics, "error") == 2
    assert counted(metrics, "ok") == 0


async def test_only_closed_minutes_are_served_and_an_empty_range_costs_nothing(
    session: aiohttp.ClientSession,
) -> None:
    async with rest_replay(session, live_from=30) as rest:
        # asking past the replay clock: only the closed minutes come back, never the future
        bars = await rest.backfill.fetch(SYMBOL, rest.at(20), rest.at(40))
        assert comparable(bars) == kline_values(rest.source, rest.at(20), rest.at(30))
        assert await rest.backfill.fetch(SYMBOL, rest.at(0), rest.at(0)) == []
    spacing = [b.arrived - a.arrived for a, b in itertools.pairwise(rest.server.rest_log)]
    assert all(s >= BINANCE.min_request_interval_s for s in spacing)
    assert len(rest.server.rest_log) == rest.backfill.requests


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
    async with rest_replay(session, live_from=50, minutes=100) as rest:
        backfill, server = rest.backfill, rest.server
        await backfill.fetch(SYMBOL, rest.at(0), rest.at(10))
        assert backfill.limits.used_weight == 2  # what X-MBX-USED-WEIGHT-1M said
        labels = {"exchange": "binance"}
        assert rest.metrics.registry.get_sample_value("tickcast_rest_used_weight", labels) == 2
        assert backfill.limits.weight_wait_s(time.time()) == 0.0
        # others on this IP used the rest of this process's half of the minute's 6,000
        assert server.weight is not None
        server.weight.used = {int(time.time() // 60): 2997}
        await backfill.fetch(SYMBOL, rest.at(10), rest.at(20))
        assert backfill.limits.used_weight == 2999
        # the next request would pass 3,000: every task of the process waits for the next minute
        wait = backfill.limits.weight_wait_s(time.time())
        assert 0 < wait <= 60


async def test_a_spent_weight_minute_is_waited_out_and_the_backfill_goes_on(
    session: aiohttp.ClientSession,
) -> None:
    # both sides see a wall clock shifted to 1.5 s before a minute ends, so the wait is short
    offset = 58.5 - time.time() % 60

    def wall_s() -> float:
        return time.time() + offset

    async with rest_replay(session, live_from=50, minutes=100, wall_s=wall_s) as rest:
        backfill, server = rest.backfill, rest.server
        assert server.weight is not None
        server.weight.wall_s = wall_s
        spent = int(wall_s() // 60)
        server.weight.used = {spent: 2997}  # others on this IP spent this process's half
        await backfill.fetch(SYMBOL, rest.at(0), rest.at(10))
        assert backfill.limits.used_weight == 2999
        bars = await backfill.fetch(SYMBOL, rest.at(10), rest.at(20))
        # the request waited for the next minute: the venue counted it there, from nothing
        assert int(wall_s() // 60) > spent
        assert backfill.limits.used_weight == 2
        assert server.weight.used == {spent + 1: 2}
        assert server.sent.rest_throttled == 0
    assert comparable(bars) == kline_values(rest.source, rest.at(10), rest.at(20))
