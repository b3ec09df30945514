"""A streamer restarted after downtime: windows back from Redis, the downtime from REST.

Two streamers run one after the other against real Redis. The first streams part of a bundled
real kline recording and shuts down in order; the second starts later in the same recording, so
the minutes between the two runs were streamed by neither. Redis must end with every closed
minute exactly once, equal to the recording.
"""

from __future__ import annotations

import dataclasses

import pytest
import redis.asyncio as aioredis
from support.faults import replay_stored
from support.servers import ServerProcess
from support.streamer import (
    REPLAY_GRACE_MS,
    closed_bars,
    comparable,
    expected_bars,
    kline_source,
    replaying,
    stored_bars,
)

from streamer.app import Streamer
from streamer.core.types import MINUTE_MS, Bar
from streamer.replay.data import Source

pytestmark = pytest.mark.integration

SYMBOL = "BTCUSDT"
KEY = ("binance", SYMBOL)


@dataclasses.dataclass
class Run:
    streamer: Streamer
    window_at_start: list[Bar]  # right after start-up: restore plus start-up backfill
    backfilled_at_start: float  # bars fetched over REST by then
    closed: list[Bar]  # the recording's bars that had closed when its data ended


async def run_streamer(source: Source, stream_from_minute: int, redis_url: str) -> Run:
    """Stream ``source`` from the given minute until the data ends, then stop in order."""
    start = source.first_open_ms + stream_from_minute * MINUTE_MS
    async with replaying(source, start, redis_url) as (server, streamer):
        at_start = streamer.windows.tail(KEY, 10_000)
        backfilled = streamer.metrics.backfill_bars.labels("binance")._value.get()
        end = await replay_stored(server, redis_url, [source], timeout_s=10)
    return Run(streamer, at_start, backfilled, closed_bars(source, end, REPLAY_GRACE_MS))


async def test_a_restarted_streamer_restores_its_windows_and_backfills_the_downtime(
    redis_server: ServerProcess,
) -> None:
    url = redis_server.url
    # run 1: minutes 0-5 from start-up backfill, 6-11 streamed
    run_1 = await run_streamer(kline_source(SYMBOL, 12), 6, url)
    client = aioredis.from_url(url)
    try:
        after_1, marks_1 = await stored_bars(client, *KEY)
        # the ordered shutdown stored the minutes still open, marked incomplete
        unfinished = sorted(marks_1)
        assert len(run_1.closed) >= 9 and unfinished
        assert [b.open_time_ms for b in after_1[len(run_1.closed) :]] == unfinished
        assert comparable(after_1[: len(run_1.closed)]) == comparable(run_1.closed)
        assert run_1.streamer.writer.dropped_total == 0

        # run 2, the same recording: streaming resumes at minute 18, so minutes up to 17 are
        # either in Redis already or must come from REST
        source = kline_source(SYMBOL, 24)
        run_2 = await run_streamer(source, 18, url)
        expected = expected_bars(source)

        # its window came back from Redis: REST was asked only for the first unfinished minute
        # of run 1 onwards, yet the window holds every minute since the start of run 1
        first_unfinished = (min(unfinished) - source.first_open_ms) // MINUTE_MS
        assert run_2.backfilled_at_start == 18 - first_unfinished
        assert comparable(run_2.window_at_start) == comparable(expected[:18])
        assert all(b.complete for b in run_2.window_at_start)

        # at the end Redis holds every closed minute once, exactly as recorded
        stored, marks = await stored_bars(client, *KEY)
        closed = run_2.closed
        assert len(closed) >= 21
        assert comparable(stored[: len(closed)]) == comparable(closed)
        assert comparable(closed) == comparable(expected[: len(closed)])
        times = [b.open_time_ms for b in stored]
        assert times == sorted(set(times))
        assert not marks & set(times[: len(closed)])
    finally:
        await client.aclose()
