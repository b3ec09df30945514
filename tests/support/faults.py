"""The two checks every fault test ends with: every bar the exchange side sent is in Redis
exactly once, and a forecast was made at every minute close. Plus the in-process forecast sink
they read the forecasts from, and ``FaultRun``, the set-up most of them share.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from streamer.app import Streamer
from streamer.core.types import MINUTE_MS, Forecast
from streamer.io.sinks import DiscardSink
from streamer.replay.data import Source
from streamer.replay.server import Faults, ReplayServer
from support.streamer import (
    REPLAY_GRACE_MS,
    SYMBOLS,
    KlineReplay,
    closed_bars,
    comparable,
    last_closed_minute,
    plain_client,
    replay_streamer,
    running,
    stored_bars,
)
from support.waits import wait_until

STREAM_FROM = 20  # a fault run's replay starts at minute 20: minutes 0-19 come from REST


class RecordingSink(DiscardSink):
    """The forecast sink of an in-process streamer: every forecast, in order."""

    def __init__(self) -> None:
        self.forecasts: list[Forecast] = []

    def publish_forecast(self, forecast: Forecast, closed_at: float) -> None:
        self.forecasts.append(forecast)

    def bar_times(self, symbol: str) -> list[int]:
        return [f.bar_time_ms for f in self.forecasts if f.symbol == symbol]


async def stored_exactly_once(
    redis_url: str, sources: list[Source], end_ms: int, grace_ms: int = REPLAY_GRACE_MS
) -> list[str]:
    """Problems with Redis against the exchange side: every closed minute of every source
    must be stored once (open times strictly increasing), equal to the exchange's bar and not
    marked incomplete. An empty list means all is well.

    ``redis_url``: one server (``redis://``) or a cluster (``redis+cluster://``), read in its
    key layout; the sources may be written by one streamer or by several shards."""
    client = plain_client(redis_url)
    problems: list[str] = []
    try:
        for source in sources:
            closed = closed_bars(source, end_ms, grace_ms)
            bars, marks = await stored_bars(client, "binance", source.symbol)
            times = [b.open_time_ms for b in bars]
            if times != sorted(set(times)):
                problems.append(f"{source.symbol}: open times repeat or go back")
            if comparable(bars[: len(closed)]) != comparable(closed):
                have = {b.open_time_ms: b for b in bars}
                wrong = [
                    b.open_time_ms
                    for b in closed
                    if b.open_time_ms not in have
                    or comparable([have[b.open_time_ms]]) != comparable([b])
                ]
                problems.append(
                    f"{source.symbol}: {len(wrong)} of {len(closed)} closed minutes missing or "
                    f"different, first {wrong[:3]}"
                )
            marked = sorted(marks & {b.open_time_ms for b in closed})
            if marked:
                problems.append(f"{source.symbol}: closed minutes still incomplete {marked[:3]}")
    finally:
        await client.aclose()
    return problems


async def wait_stored_exactly_once(
    redis_url: str,
    sources: list[Source],
    end_ms: int,
    grace_ms: int,
    timeout_s: float,
    what: str = "every closed minute in Redis, once",
) -> None:
    """Wait until ``stored_exactly_once`` finds nothing wrong; the failure lists what was."""
    problems: list[str] = []

    async def none_left() -> bool:
        nonlocal problems
        problems = await stored_exactly_once(redis_url, sources, end_ms, grace_ms)
        return not problems

    try:
        await wait_until(none_left, timeout_s, what)
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}: {problems}") from None


def missing_forecast_minutes(bar_times: list[int], first_ms: int, last_ms: int) -> list[int]:
    """Minutes in [first_ms, last_ms] with no forecast, and any forecast more than once."""
    wanted = list(range(first_ms, last_ms + 1, MINUTE_MS))
    seen = [t for t in bar_times if first_ms <= t <= last_ms]
    doubles = sorted({t for t in seen if seen.count(t) > 1})
    return sorted(set(wanted) - set(seen)) + doubles


async def replay_stored(
    server: ReplayServer,
    redis_url: str,
    sources: list[Source],
    what: str = "every closed minute in Redis",
    grace_ms: int = REPLAY_GRACE_MS,
    timeout_s: float = 20,
) -> int:
    """Wait for the replay to end, then for ``wait_stored_exactly_once`` at its end; the replay
    time it ended at (the replay clock stops at the end of the data)."""
    await server.wait_finished()
    end = server.clock_ms()
    await wait_stored_exactly_once(redis_url, sources, end, grace_ms, timeout_s, what)
    return end


class FaultRun(KlineReplay):
    """The first ``minutes`` of the bundled klines of every symbol of ``SYMBOLS``, replayed
    from minute ``STREAM_FROM`` on into an in-process streamer on the replay clock, real Redis,
    its forecasts recorded by ``sink``; ``check`` makes the two closing checks."""

    def __init__(self, minutes: int) -> None:
        super().__init__(minutes, STREAM_FROM)
        self.sink = RecordingSink()

    @contextlib.asynccontextmanager
    async def streaming(
        self, server: ReplayServer, redis_url: str, model_registry: Path, **overrides: Any
    ) -> AsyncIterator[Streamer]:
        """The streamer on ``server``, running (``overrides``: more settings)."""
        streamer = replay_streamer(
            server, self.sink, redis_url=redis_url, model_registry=str(model_registry), **overrides
        )
        async with running(streamer):
            yield streamer

    @contextlib.asynccontextmanager
    async def replaying(
        self,
        redis_url: str,
        model_registry: Path,
        faults: Faults | None = None,
        **overrides: Any,
    ) -> AsyncIterator[tuple[ReplayServer, Streamer]]:
        """``server(faults)`` and the streamer ``streaming`` on it."""
        async with (
            self.server(faults) as server,
            self.streaming(server, redis_url, model_registry, **overrides) as streamer,
        ):
            yield server, streamer

    async def finish(
        self, server: ReplayServer, redis_url: str, what: str = "every closed minute in Redis"
    ) -> int:
        """``replay_stored``: the replay time it ended at."""
        return await replay_stored(server, redis_url, self.sources, what)

    async def check(self, redis_url: str, end_ms: int) -> None:
        """Both checks at replay time ``end_ms``: Redis holds every closed minute once, and every
        symbol has one forecast per minute from the last one backfilled at start-up to the last
        closed one."""
        assert await stored_exactly_once(redis_url, self.sources, end_ms, REPLAY_GRACE_MS) == []
        last_closed = last_closed_minute(self.first, end_ms, REPLAY_GRACE_MS)
        for symbol in SYMBOLS:
            gaps = missing_forecast_minutes(
                self.sink.bar_times(symbol), self.start - MINUTE_MS, last_closed
            )
            assert gaps == [], (symbol, gaps)
