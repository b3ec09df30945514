"""End to end: replay exchange -> WebSocket -> streamer -> real Redis, bar for bar.

The expected bars are what the pure aggregator computes from the very same recorded trades;
Redis must hold exactly those, whether a minute arrived over the WebSocket or was backfilled.
"""

from __future__ import annotations

import pytest
from support.faults import replay_stored
from support.servers import ServerProcess
from support.streamer import (
    REPLAY_GRACE_MS,
    closed_bars,
    comparable,
    expected_bars,
    kline_source,
    read_bars,
    replaying,
    tardis_source,
)

from streamer.app import Streamer
from streamer.core.types import MINUTE_MS, Bar
from streamer.replay.data import Source
from streamer.replay.server import Faults, ReplayServer

pytestmark = pytest.mark.integration


async def replay_into_redis(
    source: Source, start_ms: int, redis_url: str, faults: Faults | None = None
) -> tuple[Streamer, ReplayServer, list[Bar], list[Bar], set[int]]:
    """Replay ``source`` into a streamer; returns it, the server, the closed expected bars,
    and what Redis holds after an ordered shutdown."""
    async with replaying(source, start_ms, redis_url, faults) as (server, streamer):
        # the replay clock stops at the last trade
        end = await replay_stored(server, redis_url, [source], timeout_s=30)
    bars, marks = await read_bars(redis_url, "binance", source.symbol)
    return streamer, server, closed_bars(source, end, REPLAY_GRACE_MS), bars, marks


async def test_recorded_trades_become_exactly_the_pure_aggregators_bars(
    redis_server: ServerProcess,
) -> None:
    # 40 minutes of real Binance BTCUSDT trades (tardis.dev recording), 3,100+ trades. Streaming
    # starts mid-minute 20: earlier minutes come from REST (start-up backfill); the partly
    # missed minute 20 is marked incomplete and repaired from REST once it closes.
    source = tardis_source(40)
    start = source.first_open_ms + 20 * MINUTE_MS + 20_000
    streamer, server, closed, bars, marks = await replay_into_redis(source, start, redis_server.url)
    expected = expected_bars(source)

    # every closed minute: exactly the pure aggregator's bars, all complete
    assert len(closed) >= 37
    assert comparable(bars[: len(closed)]) == comparable(closed)
    # minutes still open when the data ended: stored at shutdown, marked incomplete, holding
    # every trade that was sent
    tail = bars[len(closed) :]
    assert tail and comparable(tail) == comparable(expected[len(closed) :])
    assert marks == {b.open_time_ms for b in tail}
    # nothing streamed was lost, late or double counted
    stats = streamer.metrics.feeds[0]
    sent = sum(n for n, _ in server.sent.minutes("BTCUSDT").values())
    assert stats.trades == sent > 1000
    assert stats.dropped["late"] == 0 and stats.dropped["duplicate"] == 0
    assert streamer.gaps_repaired >= 1
    assert streamer.writer.dropped_total == 0


async def test_connection_dropped_mid_minute_is_backfilled_over_rest(
    redis_server: ServerProcess,
) -> None:
    source = kline_source("BTCUSDT", 40)
    start = source.first_open_ms + 20 * MINUTE_MS
    drop_at = source.first_open_ms + 27 * MINUTE_MS + 30_000  # mid-minute 27
    faults = Faults(drop_at_ms=drop_at, refuse_after_drop_s=0.5)
    streamer, server, closed, bars, _ = await replay_into_redis(
        source, start, redis_server.url, faults
    )

    assert server.sent.drops == 1
    assert server.sent.refused >= 1
    assert sum(streamer.metrics.feeds[0].reconnects.values()) >= 1
    # the drop lost trades: the stream alone could not have produced these bars
    sent = sum(n for n, _ in server.sent.minutes("BTCUSDT").values())
    streamed_minutes = [b for b in expected_bars(source) if b.open_time_ms >= start]
    assert sent < sum(b.trades for b in streamed_minutes)
    # yet Redis holds every closed minute exactly as the exchange's own bars
    assert comparable(bars[: len(closed)]) == comparable(closed)
    ok = streamer.metrics.backfill_requests.labels("binance", "ok")._value.get()
    assert ok >= 2  # start-up backfill plus the gap after the drop
