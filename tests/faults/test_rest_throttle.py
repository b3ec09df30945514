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

from pathlib import Path

import pytest
from support.faults import FaultRun
from support.servers import ServerProcess
from support.streamer import SYMBOLS, model_registry
from support.waits import wait_until

from streamer.core.exchanges.binance import BINANCE
from streamer.replay.server import Faults

pytestmark = pytest.mark.integration


async def test_429_then_418_during_gap_repair_are_honoured_without_a_storm(
    redis_server: ServerProcess, tmp_path: Path
) -> None:
    run = FaultRun(45)
    faults = Faults(drop_at_ms=run.at(24, 30_000), retry_after_s=1)
    registry = model_registry(tmp_path)
    async with run.replaying(redis_server.url, registry, faults) as (server, streamer):
        assert len(server.rest_log) == len(SYMBOLS)  # one start-up page per symbol
        # the minute running at start-up is a gap too, repaired once it has closed
        await wait_until(lambda: streamer.gaps_repaired == 1, 20, "the start-up gap repaired")
        await wait_until(lambda: server.sent.drops == 1, 20, "the drop")
        before_repair = len(server.rest_log)
        faults.rest_429, faults.rest_418 = 2, 1  # the repair's first requests are throttled
        await wait_until(lambda: streamer.gaps_repaired == 2, 20, "the drop's gap repaired")
        end = await run.finish(server, redis_server.url)
        metrics = streamer.metrics

    repair = server.rest_log[before_repair:]
    statuses = [e.status for e in repair]
    # exactly three throttled answers, then only successes: one page per symbol and gap
    assert statuses[:3] == [429, 429, 418]
    assert set(statuses[3:]) == {200}
    assert server.sent.rest_throttled == 3
    assert len(statuses) - 3 == len(SYMBOLS) * (streamer.gaps_repaired - 1)
    times = [e.arrived for e in repair]
    for i in range(3):  # the retry after each throttled answer waited Retry-After
        assert times[i + 1] - times[i] >= faults.retry_after_s, (i, times[i + 1] - times[i])
    for i in range(3, len(times) - 1):  # the rest are spaced by the exchange's interval
        assert times[i + 1] - times[i] >= BINANCE.min_request_interval_s * 0.99
    outcome = metrics.backfill_requests.labels
    assert outcome("binance", "rate_limited")._value.get() == 3
    assert outcome("binance", "error")._value.get() == 0

    await run.check(redis_server.url, end)
