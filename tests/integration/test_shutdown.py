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
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import msgspec
import pytest
import redis.asyncio as aioredis
from conftest import REPO, ServerProcess
from fixtures.models import build_model
from harness import stored_bars

from streamer.app import SHUTDOWN_TIMEOUT_S
from streamer.cli import EXIT_SECOND_SIGNAL
from streamer.core.bars import BarAggregator
from streamer.core.types import MINUTE_MS, Bar, Side, Trade
from streamer.io.store import RedisBarStore
from streamer.replay.data import Source, bundled_kline_paths, load_source
from streamer.replay.server import ReplayServer

pytestmark = pytest.mark.integration

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
STORED_MINUTES = 20  # real bars in Redis before the replay starts: more than the model window
STREAM_MINUTES = 120
SPEED = 60.0  # a data minute per second
WINDOW, HORIZON = 10, 3
STATUS_TOPIC = "tickcast/status/tickcast"


def sources() -> list[Source]:
    out = []
    for symbol in SYMBOLS:
        full = load_source(next(p for p in bundled_kline_paths() if symbol in p.name))
        out.append(dataclasses.replace(full, klines=full.klines[: STORED_MINUTES + STREAM_MINUTES]))
    return out


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


class Subscriber:
    """Every message under ``tickcast/#``, received by a task of this test's loop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port) as client:
            await client.subscribe("tickcast/#", qos=1)
            self.subscribed.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                self.messages.append((str(message.topic), message.payload))

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p in self.messages if t == topic]

    def forecast_symbols(self) -> set[str]:
        return {t.rsplit("/", 1)[1] for t, _ in self.messages if t.startswith("tickcast/forecast/")}


@contextlib.asynccontextmanager
async def subscribed(port: int) -> AsyncIterator[Subscriber]:
    subscriber = Subscriber(port)
    task = asyncio.create_task(subscriber.run())
    try:
        await asyncio.wait_for(subscriber.subscribed.wait(), 10)
        yield subscriber
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def retained_status(port: int) -> bytes | None:
    """The retained status a new subscriber gets, or None when there is none."""
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(STATUS_TOPIC, qos=1)
        try:
            async with asyncio.timeout(2):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    return message.payload
        except TimeoutError:
            return None
    return None


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def streamer_process(
    server: ReplayServer, redis_url: str, mqtt_url: str, model: Path, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TICKCAST_SYMBOLS": ",".join(f"binance:{s}" for s in SYMBOLS),
        "TICKCAST_WS_URLS": json.dumps({"binance": server.ws_url}),
        "TICKCAST_REST_URLS": json.dumps({"binance": server.rest_url}),
        "TICKCAST_CLOCK": "watermark",
        "TICKCAST_REDIS_URL": redis_url,
        "TICKCAST_MQTT_URL": mqtt_url,
        "TICKCAST_MODEL_REGISTRY": str(model),
        "TICKCAST_METRICS_PORT": "0",
        "TICKCAST_TICK_INTERVAL_S": "0.05",
        "TICKCAST_LOG_LEVEL": "INFO",
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamer", "run", env=env, cwd=REPO, stdout=out, stderr=out
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def seed_redis(redis_url: str, data: list[Source]) -> None:
    store = RedisBarStore.from_url(redis_url)
    try:
        await store.write([kline_bar(s, i) for s in data for i in range(STORED_MINUTES)])
    finally:
        await store.close()


def tail_of(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def test_sigterm_stores_partial_bars_says_offline_and_exits_zero(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    data = sources()
    await seed_redis(redis_server.url, data)
    model = tmp_path / "model.onnx"
    model.write_bytes(build_model(version="v1", window=WINDOW, horizon=HORIZON))
    log = tmp_path / "streamer.log"
    start = data[0].klines[STORED_MINUTES].open_time_ms
    async with (
        ReplayServer(data, speed=SPEED, start_ms=start) as server,
        subscribed(mosquitto_server.port) as sub,
        streamer_process(server, redis_server.url, mosquitto_server.url, model, log) as proc,
    ):
        await wait_for(
            lambda: sub.forecast_symbols() == set(SYMBOLS) or proc.returncode is not None,
            30,
            "forecasts of every symbol",
        )
        assert proc.returncode is None, tail_of(log)
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), SHUTDOWN_TIMEOUT_S + 5)
        except TimeoutError:
            raise AssertionError("no exit within the shutdown timeout\n" + tail_of(log)) from None
        assert code == 0, tail_of(log)
        await wait_for(lambda: sub.on(STATUS_TOPIC)[-1:] == [b"offline"], 5, "offline status")
        sent = {s: server.sent.minutes(s) for s in SYMBOLS}
    assert sub.on(STATUS_TOPIC) == [b"online", b"offline"]
    assert await retained_status(mosquitto_server.port) == b"offline"

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        for source in data:
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
    data = sources()
    await seed_redis(redis_server.url, data)
    model = tmp_path / "model.onnx"
    model.write_bytes(build_model(version="v1", window=WINDOW, horizon=HORIZON))
    log = tmp_path / "streamer.log"
    start = data[0].klines[STORED_MINUTES].open_time_ms
    async with (
        ReplayServer(data, speed=SPEED, start_ms=start) as server,
        subscribed(mosquitto_server.port) as sub,
        streamer_process(server, redis_server.url, mosquitto_server.url, model, log) as proc,
    ):
        # online means the signal handlers are installed (they come before the first connect)
        await wait_for(
            lambda: bool(sub.on(STATUS_TOPIC)) or proc.returncode is not None, 30, "online status"
        )
        assert proc.returncode is None, tail_of(log)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 3)
    assert code == EXIT_SECOND_SIGNAL == 130, tail_of(log)
    assert "second signal, exiting now" in log.read_text()
