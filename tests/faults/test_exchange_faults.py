"""Fault: the exchange WebSocket drops mid-minute, then stalls without closing, then refuses
connections for a while, all in one streamer run.

1. At 24:30 of the data the replay exchange aborts the TCP connection (no close frame).
2. At 32:20 it stops sending while keeping the socket open; the stale-feed watchdog notices.
3. At 40:00 it closes with a close frame and answers every upgrade with 503 for 2.5 s.

Expected: the daemon reconnects each time (causes ``closed``, ``stale``, ``connect_failed``),
spaced by the exchange's connection-rate limit and the backoff (no storm of attempts), marks
the minutes each outage overlapped incomplete, backfills them over REST once they have
closed, and replaces the incomplete bars. Forecasts go on at every minute close throughout.

Checked afterwards: every bar the exchange side sent is in Redis exactly once, equal to the
exchange's bar, none left incomplete; one forecast per symbol per minute. (Each fault alone, at
the feed level: tests/integration/test_feed.py; a single drop end to end: test_ingest_e2e.py.)
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from support.faults import (
    FaultRun,
    missing_forecast_minutes,
    stored_exactly_once,
    wait_stored_exactly_once,
)
from support.servers import ServerProcess
from support.streamer import (
    REPLAY_GRACE_MS,
    SYMBOLS,
    expected_bars,
    last_closed_minute,
    model_registry,
    running,
    seed_bars,
    settings_for,
)
from support.waits import wait_until

from streamer.app import Streamer
from streamer.core.exchanges.binance import BINANCE
from streamer.core.types import MINUTE_MS, floor_minute
from streamer.replay.server import Faults

pytestmark = pytest.mark.integration

REFUSE_S = 2.5


async def test_drop_stall_and_refusal_are_reconnected_backfilled_and_repaired(
    redis_server: ServerProcess, tmp_path: Path
) -> None:
    run = FaultRun(62)
    faults = Faults(
        drop_at_ms=run.at(24, 30_000),  # mid-minute, TCP abort
        stall_at_ms=run.at(32, 20_000),
        stall_s=2.0,
    )
    replaying = run.replaying(redis_server.url, model_registry(tmp_path), faults, stale_feed_s=0.5)
    async with replaying as (server, streamer):
        stats = streamer.metrics.feeds[0]
        feed = streamer.feeds["binance"]
        await wait_until(lambda: stats.reconnects["stale"] == 1, 20, "the stall noticed")
        await wait_until(lambda: server.clock_ms() >= run.at(40), 20, "minute 40")
        attempts_before = len(server.connection_attempts)
        refused_at = time.monotonic()
        await server.drop_connections(close_frame=True, refuse_s=REFUSE_S)
        await wait_until(lambda: feed.connected, 20, "reconnected after the refusals")
        reconnected_in = time.monotonic() - refused_at
        refusal_attempts = len(server.connection_attempts) - attempts_before
        end = await run.finish(server, redis_server.url, "every outage backfilled into Redis")
        gaps_repaired = streamer.gaps_repaired

    # the three faults happened, and each was seen for what it was
    assert server.sent.drops == 2 and server.sent.skipped_stalled > 0
    assert server.sent.refused == refusal_attempts - 1 >= 1
    assert stats.reconnects["closed"] == 2  # the abort and the close frame
    assert stats.reconnects["stale"] == 1
    assert stats.reconnects["connect_failed"] == refusal_attempts - 1
    # no storm: attempts spaced by Binance's connection-rate limit (one per 2 s)
    assert refusal_attempts <= math.ceil(REFUSE_S * BINANCE.connect_attempts_per_s) + 1
    assert REFUSE_S <= reconnected_in < REFUSE_S + 2 / BINANCE.connect_attempts_per_s + 1
    # the outages' minutes came out incomplete and were all repaired over REST
    assert stats.bars_incomplete >= 3 * len(SYMBOLS)
    assert gaps_repaired >= 3
    await run.check(redis_server.url, end)


async def test_a_drop_on_the_watermark_clock_is_dated_by_trades_and_repaired(
    redis_server: ServerProcess, tmp_path: Path
) -> None:
    """The same fault on the watermark clock (``TICKCAST_CLOCK=watermark``: no clock, bars
    close by trade times alone). The outage is dated by trades: from the newest trade before
    the drop (less the grace) to the first trade after the reconnect, and its gap is reported
    once the trades have closed its last minute, so the REST bars of all its minutes exist."""
    run = FaultRun(40)
    sources, sink = run.sources, run.sink
    # a previous run's bars: full windows
    await seed_bars(redis_server.url, [b for s in sources for b in expected_bars(s)[:20]])
    drop_at = run.at(24, 30_000)
    faults = Faults(drop_at_ms=drop_at, refuse_after_drop_s=0.5)
    registry = model_registry(tmp_path)
    async with run.server(faults) as server:
        settings = settings_for(
            server,
            SYMBOLS,
            redis_url=redis_server.url,
            model_registry=str(registry),
            clock="watermark",
        )
        streamer = Streamer(settings, sink=sink)
        assert streamer.clock.now() is None
        async with running(streamer):
            stats = streamer.metrics.feeds[0]
            await server.wait_finished()
            # bars close by trade time alone: the last trade (at 45 s) is "now" at the end
            end = sources[0].klines[-1].open_time_ms + 45_000
            aggregator = streamer.aggregators["binance"]
            await wait_until(lambda: aggregator.watermark_ms == end, 10, "the last trade")

            await wait_stored_exactly_once(
                redis_server.url,
                sources,
                end,
                REPLAY_GRACE_MS,
                20,
                "the drop's minutes backfilled into Redis",
            )

    assert server.sent.drops == 1 and stats.reconnects["closed"] == 1
    # two gaps: the resume from the stored bars (a restart on the watermark clock) and the drop
    assert stats.bars_incomplete >= len(SYMBOLS) and streamer.gaps_repaired == 2
    assert await stored_exactly_once(redis_server.url, sources, end, REPLAY_GRACE_MS) == []
    last_closed = last_closed_minute(run.first, end, REPLAY_GRACE_MS)
    # forecasts resume: the minutes the first trade after the reconnect closed together get
    # one forecast, the newest (as at any minute close); every minute after it gets its own
    outage = range(floor_minute(drop_at - REPLAY_GRACE_MS), floor_minute(drop_at) + 3 * MINUTE_MS)
    for symbol in SYMBOLS:
        gaps = missing_forecast_minutes(sink.bar_times(symbol), run.start, last_closed)
        assert all(t in outage for t in gaps), (symbol, gaps)
