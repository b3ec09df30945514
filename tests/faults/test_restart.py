"""Fault: the daemon is stopped mid-minute (SIGTERM) or killed (SIGKILL), then restarted.

Run 1 is the real daemon, ``python -m streamer run`` in a subprocess configured only by
``TICKCAST_*`` variables, against a replay exchange served from this test process, real Redis
and real Mosquitto; it gets a real signal. Run 2, the restart, is a ``Streamer`` in this
process on the replay clock. Why not a second subprocess: a process can only run on the wall
clock or the watermark clock (bars closed by trade times alone), and neither fits. The wall
clock is 2026 while the recorded data is 2023 (and at replay speed one data minute is 1 s).
On the watermark clock the daemon has no "now" at start-up, so it cannot backfill the
downtime: measured, a second watermark-clock process after a SIGKILL stored the three downtime
minutes as flat bars marked complete and the first minute after the restart with half its
trades, also marked complete (a defect of the watermark mode, reported for streamer/app.py).
Run 2 uses exactly the restore code a wall-clock restart uses (``Streamer._restore``), with the
replay clock as its wall clock.

After SIGTERM mid-minute and a restart: the partial bar stored at the stop is replaced by the
exchange's bar, no minute is lost or stored twice, and the first forecast after the restart is
the one at the next minute close, with no minute forecast twice across the two runs.
After SIGKILL and a restart: the windows come back from Redis, the downtime is backfilled over
REST, forecasts resume, and the status topic read ``offline`` (the last will) in between.

Checked afterwards: every bar the exchange side sent is in Redis exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import redis.asyncio as aioredis
from conftest import REPO, ServerProcess
from faultkit import (
    HORIZON,
    SYMBOLS,
    WINDOW,
    kline_sources,
    missing_forecast_minutes,
    stored_exactly_once,
    wait_for,
    wait_until,
)
from fixtures.models import build_model
from harness import running, settings_for, stored_bars

from streamer.app import SHUTDOWN_TIMEOUT_S, Streamer
from streamer.core.payloads import iso_seconds
from streamer.core.types import MINUTE_MS, floor_minute
from streamer.replay.data import Source
from streamer.replay.server import ReplayServer

pytestmark = pytest.mark.integration

SPEED = 40.0  # a data minute every 1.5 s: a restart fits inside the minute it stopped in
GRACE_MS = 10_000  # data time; at 40x it allows 250 ms of processing lag
STATUS = "tickcast/status/tickcast"
STREAM_FROM = 20  # minutes 0-19 are in Redis before run 1 (as a previous run left them)


class Subscriber:
    """Every message under ``tickcast/#`` across both runs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port) as client:
            await client.subscribe("tickcast/#", qos=1)
            self.subscribed.set()
            async for m in client.messages:
                assert isinstance(m.payload, bytes)
                self.messages.append((str(m.topic), m.payload))

    def forecasts(self, symbol: str) -> list[dict[str, Any]]:
        topic = f"tickcast/forecast/binance/{symbol}"
        return [json.loads(p) for t, p in self.messages if t == topic]

    def bar_times(self, symbol: str) -> list[int]:
        return [ms(f["bar_time"]) for f in self.forecasts(symbol)]

    def status(self) -> list[bytes]:
        return [p for t, p in self.messages if t == STATUS]


def ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@contextlib.asynccontextmanager
async def subscribed(port: int) -> AsyncIterator[Subscriber]:
    sub = Subscriber(port)
    task = asyncio.create_task(sub.run(), name="test-subscriber")
    try:
        await asyncio.wait_for(sub.subscribed.wait(), 10)
        yield sub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def daemon_env(server: ReplayServer, redis_url: str, mqtt_url: str, model: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TICKCAST_SYMBOLS": ",".join(f"binance:{s}" for s in SYMBOLS),
        "TICKCAST_WS_URLS": json.dumps({"binance": server.ws_url}),
        "TICKCAST_REST_URLS": json.dumps({"binance": server.rest_url}),
        "TICKCAST_CLOCK": "watermark",
        "TICKCAST_GRACE_MS": str(GRACE_MS),
        "TICKCAST_REDIS_URL": redis_url,
        "TICKCAST_MQTT_URL": mqtt_url,
        "TICKCAST_MODEL_REGISTRY": str(model),
        "TICKCAST_METRICS_PORT": "0",
        "TICKCAST_TICK_INTERVAL_S": "0.05",
        "TICKCAST_LOG_LEVEL": "INFO",
    }


@contextlib.asynccontextmanager
async def daemon(env: dict[str, str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamer", "run", env=env, cwd=REPO, stdout=out, stderr=out
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def tail_of(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def seed_redis(redis_url: str, sources: list[Source]) -> None:
    """The bars a previous run left: the exchange's bars of minutes 0..STREAM_FROM-1."""
    from harness import expected_bars

    from streamer.io.store import RedisBarStore

    store = RedisBarStore.from_url(redis_url)
    try:
        await store.write([b for s in sources for b in expected_bars(s)[:STREAM_FROM]])
    finally:
        await store.close()


def model_file(tmp_path: Path) -> Path:
    model = tmp_path / "model.onnx"
    model.write_bytes(build_model(version="v1", window=WINDOW, horizon=HORIZON))
    return model


async def test_sigterm_mid_minute_then_restart_recovers_the_partial_bar(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    sources = kline_sources(STREAM_FROM + 10)
    first = sources[0].first_open_ms
    start = first + STREAM_FROM * MINUTE_MS
    await seed_redis(redis_server.url, sources)
    model, log = model_file(tmp_path), tmp_path / "run1.log"
    async with (
        subscribed(mosquitto_server.port) as sub,
        ReplayServer(sources, speed=SPEED, start_ms=start) as server,
    ):
        env = daemon_env(server, redis_server.url, mosquitto_server.url, model)
        async with daemon(env, log) as proc:
            await wait_for(
                lambda: (
                    all(len(sub.forecasts(s)) >= 3 for s in SYMBOLS) or proc.returncode is not None
                ),
                30,
                "run 1 forecasting",
            )
            assert proc.returncode is None, tail_of(log)
            # the middle of a minute: its first two trades (+0 s, +15 s) are in, two to come
            await wait_for(
                lambda: 20_000 <= server.clock_ms() % MINUTE_MS < 25_000, 5, "mid-minute"
            )
            stopped_in = floor_minute(server.clock_ms())
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), SHUTDOWN_TIMEOUT_S + 5)
            assert code == 0, tail_of(log)
        client = aioredis.from_url(redis_server.url)
        try:
            bars, marks = await stored_bars(client, "binance", SYMBOLS[0])
        finally:
            await client.aclose()
        partial = {b.open_time_ms: b for b in bars}[stopped_in]
        assert stopped_in in marks and partial.trades == 2  # the partial bar, stored
        run1_last = {s: max(sub.bar_times(s)) for s in SYMBOLS}

        # run 2, at once
        settings = settings_for(
            server,
            list(SYMBOLS),
            grace_ms=GRACE_MS,
            redis_url=redis_server.url,
            mqtt_url=mosquitto_server.url,
            model_registry=str(model),
        )
        streamer = Streamer(settings, clock=server.clock_ms)
        async with running(streamer):
            restarted_at = server.clock_ms()
            await server.wait_finished()
            end = server.clock_ms()

            async def all_stored() -> bool:
                return not await stored_exactly_once(redis_server.url, sources, end, GRACE_MS)

            await wait_until(all_stored, 20, "every closed minute in Redis")
            last_closed = floor_minute(end - GRACE_MS) - MINUTE_MS
            await wait_for(
                lambda: all(max(sub.bar_times(s)) == last_closed for s in SYMBOLS),
                10,
                "the last minute's forecasts",
            )

    assert await stored_exactly_once(redis_server.url, sources, end, GRACE_MS) == []
    # the minute of the stop: recovered, no longer the partial bar
    client = aioredis.from_url(redis_server.url)
    try:
        bars, marks = await stored_bars(client, "binance", SYMBOLS[0])
    finally:
        await client.aclose()
    assert stopped_in not in marks and {b.open_time_ms: b for b in bars}[stopped_in].trades == 4
    assert sub.status() == [b"online", b"offline", b"online", b"offline"]
    for symbol in SYMBOLS:
        times = sub.bar_times(symbol)
        # run 1 (watermark clock: no start-up backfill) forecast every minute from its first
        # minute close to the stop; run 2 goes on at the next minute close (the stopped one,
        # or if the restart took longer, the last one closed by then): no minute twice
        assert run1_last[symbol] == stopped_in - MINUTE_MS
        run2 = times[times.index(run1_last[symbol]) + 1 :]
        assert run2[0] == max(stopped_in, floor_minute(restarted_at) - MINUTE_MS), symbol
        if floor_minute(restarted_at) == stopped_in:
            assert run2[0] == stopped_in  # the next minute close
        assert missing_forecast_minutes(times, start, run1_last[symbol]) == []
        assert missing_forecast_minutes(run2, run2[0], last_closed) == []
        assert len(times) == len(set(times))
        assert iso_seconds(run2[0]) == sub.forecasts(symbol)[len(times) - len(run2)]["bar_time"]


async def test_sigkill_then_restart_restores_the_windows_and_fills_the_gap(
    redis_server: ServerProcess, mosquitto_server: ServerProcess, tmp_path: Path
) -> None:
    sources = kline_sources(STREAM_FROM + 12)
    first = sources[0].first_open_ms
    start = first + STREAM_FROM * MINUTE_MS
    await seed_redis(redis_server.url, sources)
    model, log = model_file(tmp_path), tmp_path / "run1.log"
    async with (
        subscribed(mosquitto_server.port) as sub,
        ReplayServer(sources, speed=SPEED, start_ms=start) as server,
    ):
        env = daemon_env(server, redis_server.url, mosquitto_server.url, model)
        async with daemon(env, log) as proc:
            await wait_for(
                lambda: (
                    all(len(sub.forecasts(s)) >= 3 for s in SYMBOLS) or proc.returncode is not None
                ),
                30,
                "run 1 forecasting",
            )
            assert proc.returncode is None, tail_of(log)
            await wait_for(
                lambda: 20_000 <= server.clock_ms() % MINUTE_MS < 25_000, 5, "mid-minute"
            )
            killed_in = floor_minute(server.clock_ms())
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        await wait_for(lambda: sub.status()[-1:] == [b"offline"], 5, "the last will")
        # down for three data minutes
        await wait_for(lambda: server.clock_ms() >= killed_in + 3 * MINUTE_MS, 10, "downtime")
        client = aioredis.from_url(redis_server.url)
        try:
            in_redis, _ = await stored_bars(client, "binance", SYMBOLS[0])
        finally:
            await client.aclose()
        # nothing of the killed minute was stored: no ordered stop
        assert in_redis[-1].open_time_ms < killed_in

        settings = settings_for(
            server,
            list(SYMBOLS),
            grace_ms=GRACE_MS,
            redis_url=redis_server.url,
            mqtt_url=mosquitto_server.url,
            model_registry=str(model),
        )
        streamer = Streamer(settings, clock=server.clock_ms)
        async with running(streamer):
            restarted_at = server.clock_ms()
            window = streamer.windows.tail(("binance", SYMBOLS[0]), 10_000)
            backfilled = streamer.metrics.backfill_bars.labels("binance")._value.get()
            await server.wait_finished()
            end = server.clock_ms()

            async def all_stored() -> bool:
                return not await stored_exactly_once(redis_server.url, sources, end, GRACE_MS)

            await wait_until(all_stored, 20, "every closed minute in Redis")
            last_closed = floor_minute(end - GRACE_MS) - MINUTE_MS
            await wait_for(
                lambda: all(max(sub.bar_times(s)) == last_closed for s in SYMBOLS),
                10,
                "the last minute's forecasts",
            )

    # run 2's window: what Redis held, then the downtime from REST, every minute once
    restored = [b.open_time_ms for b in window]
    now_minute = floor_minute(restarted_at)
    assert restored == list(range(first, now_minute, MINUTE_MS))
    assert backfilled == len(SYMBOLS) * (now_minute - in_redis[-1].close_time_ms) // MINUTE_MS
    assert await stored_exactly_once(redis_server.url, sources, end, GRACE_MS) == []
    assert sub.status() == [b"online", b"offline", b"online", b"offline"]
    for symbol in SYMBOLS:
        times = sub.bar_times(symbol)
        assert len(times) == len(set(times))
        # forecasts resume with the last backfilled minute, then every minute close
        run2 = [t for t in times if t >= now_minute - MINUTE_MS]
        assert run2[0] == now_minute - MINUTE_MS
        assert missing_forecast_minutes(run2, run2[0], last_closed) == []
