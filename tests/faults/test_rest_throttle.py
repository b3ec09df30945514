"""Fault: while the daemon repairs a feed outage over REST, the exchange answers 429 twice,
then 418 (an IP ban), each with ``Retry-After: 1``, then serves again.

Expected: each throttled request is followed by exactly one retry, no earlier than Retry-After
(418 too: coming back early during a ban extends it); the other symbols' repairs queue behind
the same per-exchange spacing instead of firing their own requests, so the exchange sees
exactly three throttled requests and no storm; the gap is filled once the ban lifts.

Checked afterwards: every bar the exchange side sent is in Redis exactly once, and a forecast
was made for every symbol at every minute close. (The backfill client alone against 429/418:
tests/integration/test_backfill.py.)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Self

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
from websockets.http11 import Response

from streamer.app import Streamer
from streamer.core.exchanges.binance import BINANCE
from streamer.core.types import MINUTE_MS
from streamer.replay.server import Faults, ReplayServer

pytestmark = pytest.mark.integration

RETRY_AFTER_S = 1


class RestLoggingServer(ReplayServer):
    """The replay exchange, noting each REST request's arrival and answer."""

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


async def test_429_then_418_during_gap_repair_are_honoured_without_a_storm(
    redis_server: ServerProcess, tmp_path: Path
) -> None:
    sources = kline_sources(45)
    first = sources[0].first_open_ms
    start = first + 20 * MINUTE_MS
    faults = Faults(drop_at_ms=first + 24 * MINUTE_MS + 30_000, retry_after_s=RETRY_AFTER_S)
    registry = tmp_path / "registry"
    publish_dir(registry, "v1", build_model(version="v1", window=WINDOW, horizon=HORIZON))
    sink = RecordingSink()
    async with RestLoggingServer(
        sources, speed=REPLAY_SPEED, start_ms=start, faults=faults
    ) as server:
        settings = settings_for(
            server, list(SYMBOLS), redis_url=redis_server.url, model_registry=str(registry)
        )
        streamer = Streamer(settings, clock=server.clock_ms, sink=sink)
        async with running(streamer):
            assert len(server.rest_log) == len(SYMBOLS)  # one start-up page per symbol
            # the minute running at start-up is a gap too, repaired once it has closed
            await wait_for(lambda: streamer.gaps_repaired == 1, 20, "the start-up gap repaired")
            await wait_for(lambda: server.sent.drops == 1, 20, "the drop")
            before_repair = len(server.rest_log)
            faults.rest_429, faults.rest_418 = 2, 1  # the repair's first requests are throttled
            await wait_for(lambda: streamer.gaps_repaired == 2, 20, "the drop's gap repaired")
            await server.wait_finished()
            end = server.clock_ms()

            async def all_stored() -> bool:
                return not await stored_exactly_once(
                    redis_server.url, sources, end, REPLAY_GRACE_MS
                )

            await wait_until(all_stored, 20, "every closed minute in Redis")
            metrics = streamer.metrics

    repair = server.rest_log[before_repair:]
    statuses = [status for _, status in repair]
    # exactly three throttled answers, then only successes: one page per symbol and gap
    assert statuses[:3] == [429, 429, 418]
    assert set(statuses[3:]) == {200}
    assert server.sent.rest_throttled == 3
    assert len(statuses) - 3 == len(SYMBOLS) * (streamer.gaps_repaired - 1)
    times = [t for t, _ in repair]
    for i in range(3):  # the retry after each throttled answer waited Retry-After
        assert times[i + 1] - times[i] >= RETRY_AFTER_S, (i, times[i + 1] - times[i])
    for i in range(3, len(times) - 1):  # the rest are spaced by the exchange's interval
        assert times[i + 1] - times[i] >= BINANCE.min_request_interval_s * 0.99
    outcome = metrics.backfill_requests.labels
    assert outcome("binance", "rate_limited")._value.get() == 3
    assert outcome("binance", "error")._value.get() == 0

    assert await stored_exactly_once(redis_server.url, sources, end, REPLAY_GRACE_MS) == []
    last_closed = max(
        t for t in range(first, end, MINUTE_MS) if t + MINUTE_MS + REPLAY_GRACE_MS <= end
    )
    for symbol in SYMBOLS:
        gaps = missing_forecast_minutes(sink.bar_times(symbol), start - MINUTE_MS, last_closed)
        assert gaps == [], (symbol, gaps)
