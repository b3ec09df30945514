"""Shared pieces of the fault tests: real data, a durable Redis, scraping, and the two checks
every fault test ends with (every bar the exchange side sent is in Redis exactly once, and
forecasts resumed).

The expected bars are ``harness.expected_bars``: the pure aggregator over the very trades the
replay exchange serves, which for the bundled klines equal the recorded klines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from conftest import ServerProcess, _require, free_port
from harness import comparable, expected_bars, stored_bars
from prometheus_client.parser import text_string_to_metric_families

from streamer.core.types import MINUTE_MS, Bar, Forecast
from streamer.replay.data import Source, bundled_kline_paths, load_source

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
WINDOW, HORIZON = 10, 3  # the fixture model's window: forecasts start once 10 bars are stored


def kline_sources(minutes: int, symbols: tuple[str, ...] = SYMBOLS) -> list[Source]:
    """The first ``minutes`` of the bundled real Binance klines (2023-04-27..) per symbol."""
    out = []
    for symbol in symbols:
        full = load_source(next(p for p in bundled_kline_paths() if p.name.startswith(symbol)))
        out.append(dataclasses.replace(full, klines=full.klines[:minutes]))
    return out


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[ServerProcess]:
    """redis-server with an fsync-always append-only file: a SIGKILL loses no acknowledged write,
    as in a production set-up, so after a restart Redis holds what it had acknowledged."""
    port = free_port()
    data = tmp_path / f"redis-{port}"
    data.mkdir()
    argv = [
        _require("redis-server"),
        "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "yes", "--appendfsync", "always", "--dir", str(data),
    ]  # fmt: skip
    server = ServerProcess("redis", port, argv)
    server.start()
    yield server
    server.stop()


class RecordingSink:
    """The forecast sink of an in-process streamer: every forecast, in order."""

    def __init__(self) -> None:
        self.forecasts: list[Forecast] = []

    def publish_forecast(self, forecast: Forecast, closed_at: float) -> None:
        self.forecasts.append(forecast)

    def publish_skill(
        self, exchange: str, symbol: str, figures: dict[int, dict[str, float]]
    ) -> None:
        return None

    async def wait_sent(self) -> None:
        return None

    def bar_times(self, symbol: str) -> list[int]:
        return [f.bar_time_ms for f in self.forecasts if f.symbol == symbol]


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def http_get(port: int | None, path: str) -> tuple[int, Any]:
    assert port is not None
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


async def scrape(port: int | None) -> Samples:
    """/metrics as {sample name: {sorted labels: value}}."""
    status, text = await http_get(port, "/metrics")
    assert status == 200
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def closed_bars(source: Source, end_ms: int, grace_ms: int) -> list[Bar]:
    """The source's bars whose minute had closed (end + grace) by replay time ``end_ms``."""
    return [b for b in expected_bars(source) if b.close_time_ms + grace_ms <= end_ms]


async def stored_exactly_once(
    redis_url: str, sources: list[Source], end_ms: int, grace_ms: int
) -> list[str]:
    """Problems with Redis against the exchange side: every closed minute of every source
    must be stored once (open times strictly increasing), equal to the exchange's bar and not
    marked incomplete. An empty list means all is well."""
    client = aioredis.from_url(redis_url)
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


def missing_forecast_minutes(sink_times: list[int], first_ms: int, last_ms: int) -> list[int]:
    """Minutes in [first_ms, last_ms] with no forecast, and any forecast more than once."""
    wanted = list(range(first_ms, last_ms + 1, MINUTE_MS))
    seen = [t for t in sink_times if first_ms <= t <= last_ms]
    doubles = sorted({t for t in seen if seen.count(t) > 1})
    return sorted(set(wanted) - set(seen)) + doubles
