"""Fault: one symbol's REST backfill fails for good (the exchange answers 400, as for a
delisted symbol), while another symbol on the same connection needs its gaps repaired.

Expected: the failing symbol's repairs are counted, logged once and set aside; they never hold
up the queue, so every later gap of the healthy symbol is repaired as if nothing had failed.
(Before the repair queue, the failing item was retried every 5 s at the head of the queue and no
later gap was repaired.)
"""

from __future__ import annotations

import pytest
from support.streamer import (
    REPLAY_GRACE_MS,
    REPLAY_SPEED,
    expected_bars,
    kline_sources,
    running,
    settings_for,
)
from support.waits import wait_until

from streamer.app import Streamer
from streamer.core.types import MINUTE_MS
from streamer.replay.server import Faults, ReplayServer

pytestmark = pytest.mark.integration


async def test_a_permanently_failing_symbol_does_not_block_later_repairs() -> None:
    [source] = kline_sources(40, ("BTCUSDT",))
    first = source.first_open_ms
    start = first + 20 * MINUTE_MS
    drop_at = first + 26 * MINUTE_MS + 30_000
    faults = Faults(drop_at_ms=drop_at)
    async with ReplayServer([source], speed=REPLAY_SPEED, start_ms=start, faults=faults) as server:
        # NOPEUSDT is listed but unknown to the exchange: its REST bars answer 400
        settings = settings_for(server, ["BTCUSDT", "NOPEUSDT"])
        streamer = Streamer(settings, clock=server.clock_ms)
        async with running(streamer):
            await wait_until(lambda: server.sent.drops == 1, 30, "the drop")
            await server.wait_finished()
            end = server.clock_ms()
            want = [b for b in expected_bars(source) if b.close_time_ms + REPLAY_GRACE_MS <= end]

            def repaired() -> bool:
                have = {
                    b.open_time_ms: b for b in streamer.windows.tail(("binance", "BTCUSDT"), 100)
                }
                return all(
                    b.open_time_ms in have
                    and have[b.open_time_ms].complete
                    and have[b.open_time_ms].close == b.close
                    for b in want
                )

            await wait_until(repaired, 20, "every BTCUSDT minute, the drop's included, repaired")
    assert any(b.open_time_ms > drop_at for b in want)
