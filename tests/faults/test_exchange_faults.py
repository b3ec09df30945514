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
from conftest import ServerProcess
from faultkit import (
    HORIZON,
    SYMBOLS,
    WINDOW,
    RecordingSink,
    kline_sources,
    missing_forecast_minutes,
    stored_exactly_once,
    wait_for,
    wait_until,
)
from fixtures.models import build_model, publish_dir
from harness import REPLAY_GRACE_MS, REPLAY_SPEED, running, settings_for
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from streamer.app import Streamer
from streamer.core.exchanges.binance import BINANCE
from streamer.core.types import MINUTE_MS
from streamer.replay.server import Faults, ReplayServer

pytestmark = pytest.mark.integration

REFUSE_S = 2.5


class AttemptLoggingServer(ReplayServer):
    """The replay exchange, noting when each WebSocket upgrade attempt arrives."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.attempts: list[float] = []

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            self.attempts.append(time.monotonic())
        return super()._process_request(connection, request)


async def test_drop_stall_and_refusal_are_reconnected_backfilled_and_repaired(
    redis_server: ServerProcess, tmp_path: Path
) -> None:
    sources = kline_sources(62)
    first = sources[0].first_open_ms
    start = first + 20 * MINUTE_MS
    faults = Faults(
        drop_at_ms=first + 24 * MINUTE_MS + 30_000,  # mid-minute, TCP abort
        stall_at_ms=first + 32 * MINUTE_MS + 20_000,
        stall_s=2.0,
    )
    registry = tmp_path / "registry"
    publish_dir(registry, "v1", build_model(version="v1", window=WINDOW, horizon=HORIZON))
    sink = RecordingSink()
    async with AttemptLoggingServer(
        sources, speed=REPLAY_SPEED, start_ms=start, faults=faults
    ) as server:
        settings = settings_for(
            server,
            list(SYMBOLS),
            redis_url=redis_server.url,
            model_registry=str(registry),
            stale_feed_s=0.5,
        )
        streamer = Streamer(settings, clock=server.clock_ms, sink=sink)
        async with running(streamer):
            stats = streamer.metrics.feeds[0]
            feed = streamer.feeds["binance"]
            await wait_for(lambda: stats.reconnects["stale"] == 1, 20, "the stall noticed")
            await wait_for(lambda: server.clock_ms() >= first + 40 * MINUTE_MS, 20, "minute 40")
            attempts_before = len(server.attempts)
            refused_at = time.monotonic()
            await server.drop_connections(close_frame=True, refuse_s=REFUSE_S)
            await wait_for(lambda: feed.connected, 20, "reconnected after the refusals")
            reconnected_in = time.monotonic() - refused_at
            refusal_attempts = len(server.attempts) - attempts_before
            await server.wait_finished()
            end = server.clock_ms()

            async def all_repaired() -> bool:
                return not await stored_exactly_once(
                    redis_server.url, sources, end, REPLAY_GRACE_MS
                )

            await wait_until(all_repaired, 20, "every outage backfilled into Redis")
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
    assert await stored_exactly_once(redis_server.url, sources, end, REPLAY_GRACE_MS) == []
    last_closed = max(
        t for t in range(first, end, MINUTE_MS) if t + MINUTE_MS + REPLAY_GRACE_MS <= end
    )
    for symbol in SYMBOLS:
        gaps = missing_forecast_minutes(sink.bar_times(symbol), start - MINUTE_MS, last_closed)
        assert gaps == [], (symbol, gaps)
