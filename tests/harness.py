"""Helpers to run a real Streamer against the replay exchange and read what it stored."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis

from streamer.app import Streamer
from streamer.core.bars import BarAggregator
from streamer.core.codec import bars_key, decode_bar, incomplete_key
from streamer.core.types import Bar, Trade
from streamer.replay.data import Source
from streamer.replay.server import ReplayServer
from streamer.settings import Settings, load_settings

# The streamer's clock is the replay clock, i.e. data time of what the server has *sent*; the
# streamer processes a little behind it. Real time lag x speed must stay within the grace, so
# tests replay at a finite speed with a grace scaled to it: 200x with 60 s of data-time grace
# allows 300 ms of real processing lag. (Live, the wall clock and 2 s grace play these roles.)
REPLAY_SPEED = 200.0
REPLAY_GRACE_MS = 60_000


def settings_for(server: ReplayServer, symbols: list[str], **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "grace_ms": REPLAY_GRACE_MS,
        "symbols": [f"binance:{s}" for s in symbols],
        "ws_urls": {"binance": server.ws_url},
        "rest_urls": {"binance": server.rest_url},
        "metrics_port": 0,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.5,
        "tick_interval_s": 0.05,
        "stale_feed_s": 5.0,
    }
    base.update(overrides)
    return load_settings(**base)


def expected_bars(source: Source, exchange: str = "binance") -> list[Bar]:
    """What the pure aggregator makes of every trade of the source, every minute closed."""
    agg = BarAggregator(exchange, grace_ms=0)
    bars: list[Bar] = []
    for _, trades in source.minutes():
        for t in trades:
            bars += agg.add(
                Trade(
                    exchange,
                    source.symbol,
                    t.trade_id,
                    t.ts_ms,
                    float(t.price),
                    float(t.qty),
                    "sell" if t.buyer_is_maker else "buy",
                )
            )
    return bars + agg.on_clock(source.end_ms)


async def stored_bars(
    client: aioredis.Redis, exchange: str, symbol: str
) -> tuple[list[Bar], set[int]]:
    raw = await client.lrange(bars_key(exchange, symbol), 0, -1)
    marks = {int(m) for m in await client.zrange(incomplete_key(exchange, symbol), 0, -1)}
    return [decode_bar(exchange, symbol, r) for r in raw], marks


def comparable(bars: Iterable[Bar]) -> list[tuple[object, ...]]:
    return [(b.open_time_ms, b.open, b.high, b.low, b.close, b.volume, b.trades) for b in bars]


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(streamer: Streamer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(streamer.run(), name="streamer-under-test")
    try:
        await asyncio.wait_for(streamer.started.wait(), 30)
        yield task
    finally:
        streamer.request_stop()
        await asyncio.wait_for(task, 30)
