"""REST backfill against the replay exchange: pagination, rate-limit answers, idempotent store."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import numpy as np
import pytest

from streamer.replay.server import ReplayServer
from trainer.backfill import BackfillError, backfill, fetch_bars
from trainer.data import HistoryStore, read_csv_bars

REPO = Path(__file__).resolve().parents[2]
REPLAY_BTC = REPO / "streamer" / "replay" / "data" / "BTCUSDT_1m_20230427_20230501.csv.gz"
MIN = 60_000

pytestmark = pytest.mark.integration


async def test_backfill_pages_through_klines_and_honours_retry_after(tmp_path: Path) -> None:
    expected = read_csv_bars(REPLAY_BTC).bars
    first = int(expected.open_time_ms[0])
    start, end = first + 10 * MIN, first + 2510 * MIN  # 2,500 bars: three pages of <= 1,000
    sleeps: list[float] = []
    store = HistoryStore(tmp_path)
    async with ReplayServer([REPLAY_BTC], start_ms=first + 3000 * MIN) as server:
        server.faults.rest_429 = 1
        server.faults.rest_418 = 1
        server.faults.retry_after_s = 7
        run = functools.partial(
            backfill,
            store,
            server.rest_url,
            "binance",
            "BTCUSDT",
            start,
            end,
            sleep=sleeps.append,
            log=lambda _: None,
        )
        result = await asyncio.to_thread(run)
        again = await asyncio.to_thread(run)  # the same range again: nothing new to store
        requests = server.sent.rest_requests
    assert (result.pages, result.bars, result.throttled) == (3, 2500, 2)
    assert sleeps.count(7.0) == 2  # one Retry-After wait for the 429, one for the 418
    assert requests == 3 + 2 + 3
    assert result.append is not None and result.append.added == 2500
    assert again.append is not None and (again.append.added, again.append.unchanged) == (0, 2500)
    stored = store.load("binance", "BTCUSDT")
    want = expected.between(start, end)
    assert np.array_equal(stored.open_time_ms, want.open_time_ms)
    assert np.array_equal(stored.ohlcv, want.ohlcv)


async def test_backfill_stops_at_the_last_closed_minute() -> None:
    expected = read_csv_bars(REPLAY_BTC).bars
    first = int(expected.open_time_ms[0])
    async with ReplayServer([REPLAY_BTC], start_ms=first + 100 * MIN) as server:
        table, result = await asyncio.to_thread(
            fetch_bars,
            server.rest_url,
            "binance",
            "BTCUSDT",
            first,
            first + 500 * MIN,
            sleep=lambda _: None,
            log=lambda _: None,
        )
    # the replay clock holds at its start: only the 100 minutes before it have closed, and the
    # second (empty) page ends the backfill
    assert (len(table), result.pages) == (100, 2)
    assert int(table.open_time_ms[-1]) == first + 99 * MIN


async def test_backfill_reports_an_unknown_symbol() -> None:
    async with ReplayServer([REPLAY_BTC]) as server:
        with pytest.raises(BackfillError, match="HTTP 400"):
            await asyncio.to_thread(
                fetch_bars,
                server.rest_url,
                "binance",
                "NOPEUSDT",
                0,
                MIN * 10,
                sleep=lambda _: None,
                log=lambda _: None,
            )


async def test_a_long_ip_ban_ends_the_run_at_once_without_calling_again(tmp_path: Path) -> None:
    expected = read_csv_bars(REPLAY_BTC).bars
    first = int(expected.open_time_ms[0])
    sleeps: list[float] = []
    async with ReplayServer([REPLAY_BTC], start_ms=first + 3000 * MIN) as server:
        server.faults.rest_418 = 1
        server.faults.retry_after_s = 3 * 86400  # Binance's longest ban: three days
        with pytest.raises(BackfillError, match="banned this IP for 259200 s"):
            await asyncio.to_thread(
                backfill,
                HistoryStore(tmp_path),
                server.rest_url,
                "binance",
                "BTCUSDT",
                first,
                first + 100 * MIN,
                sleep=sleeps.append,
                log=lambda _: None,
            )
        assert [e.status for e in server.rest_log] == [418]
    assert sleeps == []
