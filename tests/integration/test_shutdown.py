"""``tickcast-streamer run`` as a real process: SIGTERM stops it in order, a second signal at once.

The process is configured only through ``TICKCAST_*`` variables (its environment holds nothing
else but PATH) and talks to a replay exchange served from this test process, real Redis and
real Mosquitto. It runs on the watermark clock (exchange time from the trades themselves), so
the replay's data time needs no relation to the wall clock. Redis is seeded with the real bars
before the replay's start, as a restart would find them, so the windows are full and forecasts
flow from the first minute close.

After SIGTERM: exit code 0 within the shutdown timeout, the retained status reads ``offline``,
and the partial bar of the current minute is in Redis, marked incomplete, with exactly the
OHLCV of the trades the replay sent for it so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis
from support.mqtt import STATUS, Subscriber, retained_messages, subscribed
from support.servers import ServerProcess
from support.streamer import (
    SYMBOLS,
    daemon,
    daemon_env,
    kline_sources,
    log_tail,
    model_file,
    seed_bars,
    stored_bars,
)
from support.waits import wait_until

from streamer.app import SHUTDOWN_TIMEOUT_S
from streamer.cli import EXIT_SECOND_SIGNAL
from streamer.core.bars import BarAggregator
from streamer.core.types import MINUTE_MS, Bar, Side, Trade
from streamer.replay.data import Source
from streamer.replay.server import ReplayServer

pytestmark = pytest.mark.integration

STORED_MINUTES = 20  # real bars in Redis before the replay starts: more than the model window
STREAM_MINUTES = 120
SPEED = 60.0  # a data minute per second


def sources() -> list[Source]:
    return kline_sources(STORED_MINUTES + STREAM_MINUTES)


def kline_bar(source: Source, index: int) -> Bar:
    """The bar the REST backfill stores for a kline of the bundled real data."""
    k = source.klines[index]
    return Bar(
        "binance", source.symbol, k.open_time_ms, float(k.open), float(k.high), float(k.low),
        float(k.close), float(k.volume), k.trades,
    )  # fmt: skip


def partial_bar(source: Source, open_time_ms: int, n_trades: int) -> Bar:
    """What the aggregator makes of the first ``n_trades`` trades the replay sends in a minute."""
    index = source.index_at(open_time_ms)
    assert source.klines[index].open_time_ms == open_time_ms
    agg = BarAggregator("binance", grace_ms=0)
    for t in source.minute_trades(index)[:n_trades]:
        side: Side = "sell" if t.buyer_is_maker else "buy"
        agg.add(
            Trade("binance", source.symbol, t.trade_id, t.ts_ms, float(t.price), float(t.qty), side)
        )
    (bar,) = agg.flush()
    return bar


@dataclass
class Running:
    """The daemon as a process, and what it runs against."""

    data: list[Source]
    server: ReplayServer
    sub: Subscriber
    proc: asyncio.subprocess.Process
    log: Path


@contextlib.asynccontextmanager
async def running_daemon(
    redis: ServerProcess, mosquitto: ServerProcess, tmp_path: Path
) -> AsyncIterator[Running]:
    """``tickcast-streamer run`` on the replay of ``sources()``, Redis seeded with the minutes
    before it, a subscriber listening; killed on exit unless it has exited."""
    data = sources()
    await seed_bars(redis.url, [kline_bar(s, i) for s in data for i in range(STORED_MINUTES)])
    log = tmp_path / "streamer.log"
    start = data[0].klines[STORED_MINUTES].open_time_ms
    async with (
        ReplayServer(data, speed=SPEED, start_ms=start) as server,
        subscribed(mosquitto.port) as sub,
    ):
        env = daemon_env(
            server,
            SYMBOLS,
            redis_url=redis.url,
            mqtt_url=mosquitto.url,
            model_registry=str(model_file(tmp_path)),
        )
        async with daemon(env, log) as proc:
            yield Running(data, server, sub, proc, log)


async def test_sigterm_stores_partial_bars_says_offline_and_exits_zero(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    async with running_daemon(redis_server, mosquitto_server, tmp_path) as run:
        sub, proc, log = run.sub, run.proc, run.log
        await wait_until(
            lambda: sub.forecast_symbols() == set(SYMBOLS) or proc.returncode is not None,
            30,
            "forecasts of every symbol",
        )
        assert proc.returncode is None, log_tail(log)
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S + 5):
                code = await proc.wait()
        except TimeoutError:
            raise AssertionError("no exit within the shutdown timeout\n" + log_tail(log)) from None
        assert code == 0, log_tail(log)
        await wait_until(lambda: sub.on(STATUS)[-1:] == [b"offline"], 5, "offline status")
        sent = {s: run.server.sent.minutes(s) for s in SYMBOLS}
    assert sub.on(STATUS) == [b"online", b"offline"]
    assert (await retained_messages(mosquitto_server.port, STATUS)).get(STATUS) == b"offline"

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        for source in run.data:
            symbol = source.symbol
            bars, incomplete = await stored_bars(client, "binance", symbol)
            newest = bars[-1]
            assert newest.open_time_ms in incomplete, (symbol, incomplete)
            # only the open minutes at the stop are incomplete: the current one and at most
            # the one before it (a minute closes 2 s of exchange time after its end)
            assert incomplete <= {b.open_time_ms for b in bars[-2:]}
            # bars are contiguous minutes and every complete one is the exchange's kline
            times = [b.open_time_ms for b in bars]
            assert times == list(range(times[0], times[-1] + 1, MINUTE_MS))
            for bar in bars:
                if bar.open_time_ms not in incomplete:
                    index = source.index_at(bar.open_time_ms)
                    expected = kline_bar(source, index)
                    assert (bar.open, bar.high, bar.low, bar.close) == (
                        expected.open, expected.high, expected.low, expected.close,
                    )  # fmt: skip
                    assert bar.volume == expected.volume
            # the partial bar holds exactly the trades the replay sent for that minute
            count, _ = sent[symbol][newest.open_time_ms]
            assert 1 <= newest.trades <= count
            # (stored_bars decodes every bar complete; the marks say which are not)
            partial = msgspec.structs.replace(newest, complete=False)
            assert partial == partial_bar(source, newest.open_time_ms, newest.trades)
    finally:
        await client.aclose()


async def test_a_second_signal_exits_at_once_with_130(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    async with running_daemon(redis_server, mosquitto_server, tmp_path) as run:
        proc = run.proc
        # online means the signal handlers are installed (they come before the first connect)
        await wait_until(
            lambda: bool(run.sub.on(STATUS)) or proc.returncode is not None, 30, "online status"
        )
        assert proc.returncode is None, log_tail(run.log)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(3):
            code = await proc.wait()
    assert code == EXIT_SECOND_SIGNAL == 130, log_tail(run.log)
    assert "second signal, exiting now" in run.log.read_text()
